"""One process at a time trains in a run dir, on a shared filesystem too: the `.lock` file names its holder (host,
pid, Slurm job), a heartbeat keeps it fresh, and a stale one (its process gone, or no heartbeat) is taken over."""

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from losslab.errors import RunDirBusy, UserError
from losslab.records.lock import (
    LOCK,
    LockHolder,
    _claim,
    _read,
    _remove_stale,
    exclusive,
    locked_by,
    stale_after_s,
    wait_for_lock,
)
from losslab.records.run_dir import run_state

HOST = socket.gethostname()


def write_lock(run_dir: Path, host: str, pid: int, age_s: float = 0.0, slurm_job: str | None = None) -> Path:
    """A lock as another process would have left it, its heartbeat `age_s` seconds old."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    path.write_text(json.dumps({"host": host, "pid": pid, "slurm_job": slurm_job, "taken": "2024-01-01T00:00:00+00:00",
                                "token": f"{host}-{pid}-{age_s}"}))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def dead_pid(forks) -> int:
    child = forks.Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    return child.pid


def try_to_take(run_dir: Path, results) -> None:
    try:
        with exclusive(run_dir):
            results.put("taken")
    except RunDirBusy as e:
        results.put(str(e))


def hold_until(run_dir: Path, ready, release) -> None:
    with exclusive(run_dir):
        ready.set()
        release.wait(60)


def hold_and_get_killed(run_dir: Path) -> None:
    with exclusive(run_dir):
        os.kill(os.getpid(), signal.SIGKILL)


def race(run_dir: Path, start, tried, results) -> None:
    start.wait(30)
    try:
        with exclusive(run_dir):
            results.put("won")
            tried.wait(30)  # hold it until the other taker has tried
    except RunDirBusy:
        results.put("busy")
        tried.wait(30)


def test_a_lock_names_its_holder_and_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "46")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "45")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    run_dir = tmp_path / "run"
    with exclusive(run_dir) as me:
        record = json.loads((run_dir / LOCK).read_text())
        assert {k: record[k] for k in ("host", "pid", "slurm_job")} == {"host": HOST, "pid": os.getpid(),
                                                                        "slurm_job": "45_1"}
        holder = locked_by(run_dir)
        assert (holder.host, holder.pid, holder.slurm_job) == (me.host, me.pid, me.slurm_job) == (HOST, os.getpid(),
                                                                                                   "45_1")
        assert str(holder) == f"pid {os.getpid()} on {HOST}, Slurm job 45_1"
        assert run_state(run_dir) == "running"
    assert not (run_dir / LOCK).exists() and locked_by(run_dir) is None and run_state(run_dir) == "unfinished"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    with exclusive(run_dir):
        assert locked_by(run_dir).slurm_job == "46"
    monkeypatch.delenv("SLURM_JOB_ID")
    with exclusive(run_dir):
        assert locked_by(run_dir).slurm_job is None and str(locked_by(run_dir)) == f"pid {os.getpid()} on {HOST}"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_a_lock_is_released_however_its_block_ends(tmp_path, error):
    with pytest.raises(error):
        with exclusive(tmp_path):
            raise error()
    assert not (tmp_path / LOCK).exists()
    assert [t for t in threading.enumerate() if t.name.startswith("lock heartbeat")] == []


def test_a_second_taker_is_refused_with_the_holder_named(tmp_path, forks):
    results = forks.Queue()
    with exclusive(tmp_path):
        child = forks.Process(target=try_to_take, args=(tmp_path, results))
        child.start()
        message = results.get(timeout=30)
        child.join()
        assert f"pid {os.getpid()} on {HOST}" in message and "being trained by another process" in message
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()  # left as it was
    with pytest.raises(RunDirBusy, match="pid 1 on elsewhere, Slurm job 7"):
        write_lock(tmp_path, "elsewhere", 1, slurm_job="7")
        with exclusive(tmp_path):
            pass


def test_a_lock_whose_process_died_on_this_host_is_taken_over_at_once(tmp_path, caplog, forks):
    caplog.set_level(logging.WARNING, logger="losslab")
    child = forks.Process(target=hold_and_get_killed, args=(tmp_path,))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL and (tmp_path / LOCK).exists()  # left behind, fresh
    assert locked_by(tmp_path) is None and run_state(tmp_path) == "unfinished"
    with exclusive(tmp_path):
        assert locked_by(tmp_path).pid == os.getpid()
    (warning,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert f"pid {child.pid} on {HOST}" in warning and "its process has ended" in warning

    write_lock(tmp_path, HOST, dead_pid(forks), slurm_job="99")
    with exclusive(tmp_path):
        pass
    assert "Slurm job 99" in caplog.records[-1].getMessage()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left: no lock, no moved-aside one


def test_a_lock_from_another_host_is_respected_until_its_heartbeat_is_old(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="losslab")
    write_lock(tmp_path, "node7", 1234, slurm_job="45_1")  # pid 1234 is not looked up: it is on another host
    assert str(locked_by(tmp_path)) == "pid 1234 on node7, Slurm job 45_1"
    with pytest.raises(RunDirBusy, match="pid 1234 on node7, Slurm job 45_1"):
        with exclusive(tmp_path):
            pass
    assert json.loads((tmp_path / LOCK).read_text())["host"] == "node7"

    write_lock(tmp_path, "node7", 1234, age_s=120, slurm_job="45_1")
    assert locked_by(tmp_path) is None
    with exclusive(tmp_path):
        assert locked_by(tmp_path).host == HOST
    (warning,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert "pid 1234 on node7, Slurm job 45_1" in warning and "heartbeat is 120 s old" in warning

    monkeypatch.setenv("LOSSLAB_LOCK_STALE_S", "600")  # a longer stale_after_s respects the same lock
    write_lock(tmp_path, "node7", 1234, age_s=120)
    assert stale_after_s() == 600 and locked_by(tmp_path) is not None
    monkeypatch.setenv("LOSSLAB_LOCK_STALE_S", "soon")
    with pytest.raises(UserError, match="LOSSLAB_LOCK_STALE_S='soon' is not a number of seconds"):
        locked_by(tmp_path)


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLAB_LOCK_STALE_S", "0.2")  # a beat every 0.05 s
    with exclusive(tmp_path):
        path = tmp_path / LOCK
        for _ in range(3):
            then = time.time() - 100
            os.utime(path, (then, then))
            deadline = time.monotonic() + 30
            while path.stat().st_mtime < then + 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert path.stat().st_mtime > then + 50


def test_two_takers_of_one_stale_lock_never_both_win(tmp_path, forks):
    for attempt in range(6):
        run_dir = tmp_path / str(attempt)
        if attempt % 2:
            write_lock(run_dir, "node7", 1234, age_s=120)
        else:
            write_lock(run_dir, HOST, dead_pid(forks))
        start, tried, results = forks.Barrier(2), forks.Barrier(2), forks.Queue()
        takers = [forks.Process(target=race, args=(run_dir, start, tried, results)) for _ in range(2)]
        for taker in takers:
            taker.start()
        outcomes = sorted(results.get(timeout=30) for _ in takers)
        for taker in takers:
            taker.join(30)
        assert outcomes == ["busy", "won"], attempt
        assert sorted(p.name for p in run_dir.iterdir()) == []


def test_a_fresh_lock_moved_aside_by_a_late_taker_is_put_back(tmp_path):
    """A taker that judged a lock stale, while a faster one took it over, moves the fresh lock and puts it back."""
    stale = _read(write_lock(tmp_path, "node7", 1234, age_s=120), stale_s=60)
    fresh = write_lock(tmp_path, HOST, os.getpid()).read_bytes()  # the faster taker's
    assert stale.stale and not _remove_stale(tmp_path / LOCK, stale)
    assert (tmp_path / LOCK).read_bytes() == fresh and [p.name for p in tmp_path.iterdir()] == [LOCK]


def test_a_taker_that_died_while_taking_over_leaves_the_dir_to_the_next(tmp_path, caplog, forks):
    caplog.set_level(logging.WARNING, logger="losslab")
    path = write_lock(tmp_path, "node7", 1234, age_s=120)
    claim = _claim(path, _read(path))
    write_lock(tmp_path, "node8", 77, slurm_job="8").rename(claim)  # a taker on another host, still going
    write_lock(tmp_path, "node7", 1234, age_s=120)
    with pytest.raises(RunDirBusy, match="pid 77 on node8, Slurm job 8"):
        with exclusive(tmp_path):
            pass
    write_lock(tmp_path, HOST, dead_pid(forks)).rename(claim)  # one on this host that died
    write_lock(tmp_path, "node7", 1234, age_s=120)
    with exclusive(tmp_path):
        assert locked_by(tmp_path).pid == os.getpid()
    assert "pid 1234 on node7" in caplog.records[-1].getMessage() and list(tmp_path.iterdir()) == []


def test_waiting_for_a_run_dir_ends_with_its_holder(tmp_path, caplog, forks):
    caplog.set_level(logging.INFO, logger="losslab")
    for how in ("released", "killed"):
        ready, release = forks.Event(), forks.Event()
        holder = forks.Process(target=hold_until, args=(tmp_path, ready, release))
        holder.start()
        assert ready.wait(30)
        waited = threading.Thread(target=wait_for_lock, args=(tmp_path,), kwargs={"poll_s": 0.02})
        waited.start()
        waited.join(0.2)
        assert waited.is_alive()  # the holder still holds it
        if how == "released":
            release.set()
        else:
            holder.kill()
        holder.join(30)
        waited.join(30)
        assert not waited.is_alive() and locked_by(tmp_path) is None
    waiting = [r.getMessage() for r in caplog.records if "waiting for it to end" in r.getMessage()]
    assert len(waiting) == 2 and f"{tmp_path} is being trained by pid {holder.pid} on {HOST}; waiting" in waiting[1]


def test_exclusive_can_wait_for_the_holder(tmp_path, forks):
    ready, release = forks.Event(), forks.Event()
    holder = forks.Process(target=hold_until, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    threading.Timer(0.1, release.set).start()
    with exclusive(tmp_path, wait=True, poll_s=0.02):
        now = locked_by(tmp_path)
        assert isinstance(now, LockHolder) and (now.host, now.pid) == (HOST, os.getpid())
    holder.join(30)
    assert holder.exitcode == 0 and not (tmp_path / LOCK).exists()
