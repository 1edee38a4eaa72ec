"""What a run dir holds, and one process at a time training in it.

A run dir holds a run once Hydra has written its `.hydra/config.yaml`. Its state is the status in its
summary.json (completed, early_stopped, diverged, interrupted, failed), `unfinished` without one (killed, or
a config that failed before training), or `running` while a process holds its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from losslab.errors import RunDirBusy

FINISHED = ("completed", "early_stopped", "diverged")  # a result: a relaunched sweep skips these jobs
LOCK = ".lock"


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def holds_run(run_dir: Path) -> bool:
    return (run_dir / ".hydra" / "config.yaml").exists() or (run_dir / "summary.json").exists()


def run_state(run_dir: Path) -> str:
    """`running`, the summary's status, or `unfinished`."""
    if locked_by(run_dir) is not None:
        return "running"
    return (read_summary(run_dir) or {}).get("status", "unfinished")


def locked_by(run_dir: Path) -> int | None:
    """The pid of the process training in `run_dir`, or None when none is."""
    path = run_dir / LOCK
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(f.read().strip() or 0)
            return None
    except (OSError, ValueError):
        return None


def busy(run_dir: Path, pid) -> RunDirBusy:
    return RunDirBusy(f"{run_dir} is being trained by another process (pid {pid}); wait for it to end, or stop it "
                      f"first.")


@contextlib.contextmanager
def exclusive(run_dir: Path):
    """Hold `run_dir`'s lock while training in it (released when the process ends, however it ends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise busy(run_dir, f.read().strip() or "?") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wait_for_lock(run_dir: Path, poll_s: float = 2.0) -> None:
    """Until no live process trains in `run_dir`."""
    import time

    while locked_by(run_dir) is not None:
        time.sleep(poll_s)
