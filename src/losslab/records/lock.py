"""One process at a time training in a run dir: its lock.

A run dir holds a run once Hydra has written its `.hydra/config.yaml`. Its state is the status in its
summary.json (completed, early_stopped, diverged, interrupted, failed), `unfinished` without one (killed, or
a config that failed before training), or `running` while a process holds its lock.

The lock is the file `<run dir>/.lock`, which works where run dirs are shared between hosts over NFS (the jobs of
one Slurm sweep run on several nodes), where `flock` does not:

- It is taken by creating the file with `O_CREAT | O_EXCL` (atomic on NFSv3 and later) and names its holder in
  JSON: host, pid, Slurm job (`SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID` for an array task, else `SLURM_JOB_ID`,
  null outside Slurm), when it was taken and a token of its own.
- While it is held, a daemon thread refreshes the file's mtime (the heartbeat) every `stale_after_s / 4` seconds.
  It is removed when the holder's `with exclusive(...)` block ends, however it ends, if it is still the holder's.
- A lock is stale when its holder ran on this host and its pid is gone, or when its heartbeat is older than
  `stale_after_s` (a holder on any host, killed, or on a node that went down). A stale lock is taken over and
  the takeover logged. Of the processes taking over one stale lock, one goes on: each creates a claim file named
  after the lock's token with `O_EXCL`; the one that creates it checks that `.lock` still holds that token, moves
  it aside and deletes it, and removes its claim. Then `.lock` is created with `O_EXCL` again (by whichever
  process is first).
- `stale_after_s` comes from the environment variable LOSSLAB_LOCK_STALE_S (seconds, default 60), not from the
  config: the lock is read before Hydra composes one (a resume is checked before Hydra starts) and the holder and
  its takers must agree on it. Clocks of the hosts sharing the run dirs must agree to well within it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from losslab.errors import RunDirBusy, UserError

LOCK = ".lock"
STALE_ENV = "LOSSLAB_LOCK_STALE_S"
DEFAULT_STALE_S = 60.0

log = logging.getLogger("losslab")


def stale_after_s() -> float:
    """Seconds without a heartbeat after which a lock is stale: LOSSLAB_LOCK_STALE_S, default 60."""
    value = os.environ.get(STALE_ENV, "").strip()
    if not value:
        return DEFAULT_STALE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise UserError(f"{STALE_ENV}={value!r} is not a number of seconds above 0; set it to how long a run dir's "
                        f"lock may go without a heartbeat (default {DEFAULT_STALE_S:g}), or unset it.")
    return seconds


def slurm_job() -> str | None:
    """This process's Slurm job: `<array job>_<task>` for an array task, the job id otherwise, None outside Slurm."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


@dataclass(frozen=True)
class LockHolder:
    """The process that holds a run dir's lock, and how old its last heartbeat is."""

    host: str | None
    pid: int | None
    slurm_job: str | None
    age_s: float
    taken: str | None = None  # when it took the lock (ISO 8601, UTC)

    def __str__(self) -> str:
        if self.pid is None:
            return f"a process on {self.host or 'an unknown host'}"
        text = f"pid {self.pid} on {self.host or 'an unknown host'}"
        return text + (f", Slurm job {self.slurm_job}" if self.slurm_job else "")


@dataclass(frozen=True)
class _Found:
    """A lock file as read: its holder, what tells it from any other lock file, and whether it is stale."""

    holder: LockHolder
    key: str  # its token (or, unreadable, its inode and mtime)
    stale: bool
    reason: str


def _read(path: Path, stale_s: float = math.inf) -> _Found | None:
    """The lock at `path`, or None when there is none. Opening the file before its fstat makes an NFS client
    fetch its attributes afresh (close-to-open), so the heartbeat is not judged from a cached mtime."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            raw = f.read()
    except FileNotFoundError:
        return None
    age = max(0.0, time.time() - stat.st_mtime)
    try:
        data = json.loads(raw)
        host, pid, job, taken, token = (data.get(k) for k in ("host", "pid", "slurm_job", "taken", "token"))
        pid = int(pid) if pid is not None else None
    except (ValueError, TypeError, AttributeError):  # being written by its taker, or not a lock of this format
        host = pid = job = taken = token = None
    holder = LockHolder(host, pid, job, age, taken)
    key = str(token) if token else f"inode {stat.st_ino} of {stat.st_mtime_ns}"
    if age > stale_s:
        return _Found(holder, key, True, f"its heartbeat is {age:.0f} s old (stale after {stale_s:g} s)")
    if host == socket.gethostname() and pid is not None and not _alive(pid):
        return _Found(holder, key, True, "its process has ended")
    return _Found(holder, key, False, "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no valid pid: not ours to judge
        return True
    return True


def locked_by(run_dir: Path, stale_s: float | None = None) -> LockHolder | None:
    """The live holder of `run_dir`'s lock, or None when it is not held (or its lock is stale)."""
    found = _read(Path(run_dir) / LOCK, stale_after_s() if stale_s is None else stale_s)
    return None if found is None or found.stale else found.holder


def busy(run_dir: Path, holder: LockHolder | None) -> RunDirBusy:
    return RunDirBusy(f"{run_dir} is being trained by another process ({holder or 'which has just taken it'}); wait "
                      f"for it to end, or stop it first.")


class _Held:
    """A lock this process holds, with its heartbeat thread."""

    def __init__(self, path: Path, token: str, stale_s: float):
        self.path, self.token = path, token
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(stale_s / 4,), name=f"lock heartbeat {path.parent}",
                                       daemon=True)
        self.thread.start()

    def ours(self) -> bool:
        found = _read(self.path)
        return found is not None and found.key == self.token

    def _beat(self, every_s: float) -> None:
        warned = False
        while not self.stopping.wait(every_s):
            try:
                if self.ours():
                    os.utime(self.path)
                    continue
                problem = "it was removed, or taken over by a process that judged it stale"
            except OSError as e:
                problem = f"its heartbeat could not be written ({e})"
            if not warned:
                log.warning("the lock of %s is not this process's any more: %s", self.path.parent, problem)
                warned = True

    def release(self) -> None:
        self.stopping.set()
        self.thread.join()
        try:
            _remove_if_ours(self.path, self.token)
        except OSError as e:  # the run is done: a lock left behind is stale once this process has ended
            log.warning("the lock of %s could not be removed (%s)", self.path.parent, e)


def _record() -> bytes:
    return (json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job(),
        "taken": datetime.now(UTC).isoformat(timespec="seconds"), "token": uuid.uuid4().hex,
    }) + "\n").encode()


def _create(path: Path) -> str | None:
    """Create the lock file with O_EXCL and write this process's record; its token, or None when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    record = _record()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return json.loads(record)["token"]


def _remove_stale(path: Path, found: _Found) -> bool:
    """Move the lock file `found` away from `path` and delete it; True when this process did. Another file found
    there instead (the lock was released and taken meanwhile) is put back."""
    grave = path.with_name(f"{LOCK}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    moved = _read(grave)
    if moved is not None and moved.key != found.key:
        try:
            os.link(grave, path)
        except FileExistsError:
            log.error("%s: a lock file moved aside while removing a stale one could not be put back", path.parent)
        grave.unlink(missing_ok=True)
        return False
    grave.unlink(missing_ok=True)
    return True


def _remove_if_ours(path: Path, token: str) -> None:
    found = _read(path)
    if found is not None and found.key == token:
        path.unlink(missing_ok=True)


def _claim(path: Path, found: _Found) -> Path:
    return path.with_name(f"{path.name}.{hashlib.sha1(found.key.encode()).hexdigest()[:16]}.takeover")


def _take_over(path: Path, found: _Found, stale_s: float) -> bool | LockHolder:
    """Remove the stale lock `found`, as the one taker that claims it: True when this process removed it, False when
    it is gone or has changed (look again), or the live holder of the claim (another taker, which wins).

    The claim is a file named after the stale lock's key, created with O_EXCL, so that of the takers of one stale
    lock one goes on; it holds the lock while it checks that the lock is still the stale one and removes it. A later
    taker, claiming that key again, finds the lock gone or another one. A claim left by a taker that died is stale
    by the lock's rules and removed."""
    claim = _claim(path, found)
    token = _create(claim)
    if token is None:
        other = _read(claim, stale_s)
        if other is None:
            return False
        if not other.stale:
            return other.holder
        _remove_stale(claim, other)
        return False
    try:
        now = _read(path, stale_s)
        return now is not None and now.key == found.key and now.stale and _remove_stale(path, now)
    finally:
        _remove_if_ours(claim, token)


def _take(run_dir: Path, stale_s: float) -> _Held | LockHolder:
    """Take `run_dir`'s lock, over a stale one if need be; the held lock, or the live holder."""
    path = run_dir / LOCK
    while True:
        token = _create(path)
        if token is not None:
            return _Held(path, token, stale_s)
        found = _read(path, stale_s)
        if found is None:  # released meanwhile
            continue
        if not found.stale:
            return found.holder
        taken_over = _take_over(path, found, stale_s)
        if isinstance(taken_over, LockHolder):
            return taken_over
        if taken_over:
            log.warning("%s: taking over the stale lock of %s (last heartbeat %.0f s ago): %s", run_dir,
                        found.holder, found.holder.age_s, found.reason)


def _say_waiting(run_dir: Path, holder: LockHolder) -> None:
    log.info("%s is being trained by %s; waiting for it to end", run_dir, holder)


@contextlib.contextmanager
def exclusive(run_dir: Path, wait: bool = False, poll_s: float = 5.0, stale_s: float | None = None):
    """Hold `run_dir`'s lock while training in it; yields this process's LockHolder. A live holder raises
    RunDirBusy, or with `wait=True` is waited for (checked every `poll_s` seconds)."""
    run_dir = Path(run_dir)
    stale_s = stale_after_s() if stale_s is None else stale_s
    run_dir.mkdir(parents=True, exist_ok=True)
    said = False
    while isinstance(held := _take(run_dir, stale_s), LockHolder):
        if not wait:
            raise busy(run_dir, held)
        if not said:
            _say_waiting(run_dir, held)
            said = True
        time.sleep(poll_s)
    try:
        yield LockHolder(socket.gethostname(), os.getpid(), slurm_job(), 0.0)
    finally:
        held.release()


def wait_for_lock(run_dir: Path, poll_s: float = 5.0, stale_s: float | None = None) -> None:
    """Block until `run_dir` is not held by a live process (checked every `poll_s` seconds). The dir may be taken
    again right after; `exclusive(run_dir, wait=True)` waits and takes it in one."""
    said = False
    while (holder := locked_by(run_dir, stale_s)) is not None:
        if not said:
            _say_waiting(run_dir, holder)
            said = True
        time.sleep(poll_s)
