"""summary.json, a run dir's one record of how its run ended: what every relaunch, report and study page reads.

Its writers are here, and only here: `write_summary` (a run that trained: finished, diverged or interrupted, the
dict built by losslab.training.finish.summary_of), `record_failure` (a job whose config or training raised) and
`record_slurm_end` (a Slurm task that ended without writing its own). Every summary holds `format`
(FORMAT_VERSION), `status`, `run_dir`, `overrides`, `best` and `final`; an interrupted run's also `resume` (the
command that resumes it) and `signal` (the stop signal's number).

A status and what a relaunch of the sweep does with the job:

    completed, early_stopped, diverged   a result (HAS_RESULT): skipped, its summary reused
    interrupted, failed                  continued (LEFT): resumed from checkpoints/last.pt, else trained again
    no summary.json ("unfinished")       continued (LEFT): resumed from last.pt where one exists
    a held lock ("running")              another process trains it: waited for
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from pathlib import Path

from losslab.fileio import write_json

FILE = "summary.json"
FORMAT_VERSION = 1
HAS_RESULT = ("completed", "early_stopped", "diverged")  # a relaunched sweep skips these jobs
STATUSES = ("completed", "early_stopped", "diverged", "failed", "interrupted", "unfinished", "running")
LEFT = ("failed", "interrupted", "unfinished", "running")  # what a relaunch of the sweep continues
CAUSES = {  # a Slurm task's `cause`, when it ended without a result: what the tally and the report say
    "out_of_memory": "out of memory", "cancelled": "cancelled", "cancelled_before_start": "cancelled before it started",
    "node_failure": "node failure", "time_limit": "time limit", "preempted": "preempted",
}

log = logging.getLogger("losslab")


def read_summary(run_dir: Path) -> dict | None:
    """The run dir's summary, or None where there is none or it cannot be read."""
    try:
        return json.loads((run_dir / FILE).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write (atomically) a summary with the current format version."""
    write_json(run_dir / FILE, {"format": FORMAT_VERSION, **summary})


def previous_result(run_dir: Path, overrides: list[str]) -> dict | None:
    """The finished summary a relaunched job can reuse: same overrides, a finished status."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") in HAS_RESULT and summary.get("overrides") == overrides:
        return summary
    return None


def can_resume(run_dir: Path, overrides: list[str]) -> bool:
    """A job that stopped part-way: it has a last.pt, whatever status it was left with (interrupted, failed
    after a time-out, killed), or it was killed after training started and before any checkpoint."""
    if (run_dir / "checkpoints" / "last.pt").exists():
        return True
    if not (run_dir / "metrics.csv").exists():  # never started training
        return False
    summary = read_summary(run_dir)
    return summary is None or (summary.get("status") == "interrupted" and summary.get("overrides") == overrides)


def record_failure(run_dir: Path, cfg, overrides: list[str], error: BaseException, provenance: dict) -> None:
    """A job that raised: status `failed`, its error, and the traceback in error.txt; the sweep goes on. Where the
    run dir cannot be written, the traceback goes to the log (a Slurm task's stderr) and the OSError is raised."""
    trace = "".join(traceback.format_exception(error))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(trace)
        write_summary(run_dir, {
            "status": "failed", "name": cfg.get("name"), "seed": cfg.get("seed"), "run_dir": os.path.abspath(run_dir),
            "overrides": overrides, "error": f"{type(error).__name__}: {error}", "best": {}, "final": {},
            **provenance,
        })
    except OSError as unwritten:
        log.error("job failed, and its failure cannot be recorded in %s (%s): the job's error was\n%s", run_dir,
                  unwritten, trace)
        raise
    log.error("job failed (%s: %s); the sweep goes on. Traceback in %s", type(error).__name__, error,
              run_dir / "error.txt")


def record_slurm_end(run_dir: Path, overrides: list[str], task: str, state: str, error: str | None,
                     cause: str | None = None) -> str | None:
    """A Slurm task that ended without a result (cancelled, killed, out of memory, timed out too often): its run
    dir's summary says so, with Slurm's task id and state and the `cause` (a key of CAUSES). A summary the job
    wrote itself is kept, with these added; a finished one, or a dir another process trains, is left as it is.
    Returns None, or, where the run dir cannot be written, one sentence naming it and the OS's error."""
    from losslab.records.lock import locked_by

    summary = read_summary(run_dir) or {}
    status = summary.get("status") if summary.get("status") in ("interrupted", "failed") else "interrupted"
    ended = (f"Slurm task {task} ended {state}" + (f" ({CAUSES[cause]})" if cause else "")
             + " before the run finished" + (f": {error}" if error else ""))
    try:
        if summary.get("status") in HAS_RESULT or locked_by(run_dir) is not None:
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        write_summary(run_dir, {"best": {}, "final": {}, **summary, "status": status, "overrides": overrides,
                                "run_dir": os.path.abspath(run_dir), "slurm": {"task": task, "state": state},
                                "cause": cause, "ended": ended})
    except OSError as e:
        unrecorded = f"{ended}, and its end cannot be recorded in {run_dir} ({e.strerror or e})"
        log.error("job in %s: %s", run_dir, unrecorded)
        return unrecorded
    log.warning("job in %s: %s; relaunching the sweep continues it", run_dir, ended)
    return None


def objective(summary: dict) -> float:
    """What a job returns to Hydra's sweepers, which minimise it: the final value of the metric the run monitored
    (summary.json's `monitor`: trainer.monitor), negated when its mode is max; the final val/loss for a summary
    without a monitor; inf when the run has no final value of that metric."""
    monitor = summary.get("monitor") or {"metric": "val/loss", "mode": "min"}
    value = summary["final"].get(monitor["metric"])
    if value is None:
        return math.inf
    return -value if monitor["mode"] == "max" else value
