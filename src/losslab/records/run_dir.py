"""What a run dir holds and the state it is in.

A run dir holds a run once Hydra has written its `.hydra/config.yaml`. Its state is the status in its
summary.json (losslab.records.summary: completed, early_stopped, diverged, interrupted, failed), `unfinished`
without one (killed, or a config that failed before training), or `running` while a process holds its lock
(losslab.records.lock).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from losslab.records.lock import locked_by
from losslab.records.summary import read_summary

CALIBRATION = Path("eval", "calibration.json")  # `losslab-eval --calibrate`'s temperature and metrics, in a run dir


def final_checkpoint(run_dir: Path, cfg) -> Path:
    """The checkpoint of a run's final weights: best.pt when its config has early stopping on (trainer.patience)
    and best.pt exists, else last.pt (either may be absent, with trainer.checkpoints=false)."""
    best = run_dir / "checkpoints" / "best.pt"
    if cfg.trainer.get("patience") is not None and best.exists():
        return best
    return run_dir / "checkpoints" / "last.pt"


def holds_run(run_dir: Path) -> bool:
    return (run_dir / ".hydra" / "config.yaml").exists() or (run_dir / "summary.json").exists()


def run_state(run_dir: Path) -> str:
    """`running`, the summary's status, or `unfinished`."""
    if locked_by(run_dir) is not None:
        return "running"
    return (read_summary(run_dir) or {}).get("status", "unfinished")


def remove_unstarted_run(run_dir: Path) -> None:
    """Undo what Hydra wrote for a run that did not train (refused by a check, or a sweep's job that came after a
    stop signal): `.hydra/` and the job's log files, their handlers closed first, so that the corrected command or
    the sweep's relaunch can use the same dir; a dir holding anything else is left as it is."""
    run_dir = run_dir.resolve()
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.FileHandler)
                and Path(h.baseFilename).parent == run_dir]
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    log_files = [Path(h.baseFilename) for h in handlers]
    if not run_dir.is_dir() or not set(run_dir.iterdir()) <= {run_dir / ".hydra", *log_files}:
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    for log_file in log_files:
        log_file.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # not empty after all: another process wrote there meanwhile
        pass
