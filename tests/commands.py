"""losslab's commands run as a user runs them, in a fresh process, and what they leave in run and sweep dirs.

The data files tests train on are written by fixtures.py; TensorBoard's view of a run is read by tb_events.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from losslab.records.job_dirs import job_dirs, job_number

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # s per command
STOP_HOOK = Path(__file__).resolve().parent / "stop_hook"  # its sitecustomize.py: LOSSLAB_TEST_STOP_AT's hook


def stop_env(env: dict[str, str], stop_at: str | None) -> dict[str, str]:
    """`env` for a process stopped where `stop_at` says (the syntax is in stop_hook/sitecustomize.py): STOP_HOOK
    first on its PYTHONPATH (the rest kept after it), and LOSSLAB_TEST_STOP_AT; without `stop_at`, `env` without
    LOSSLAB_TEST_STOP_AT."""
    env = {k: v for k, v in env.items() if k != "LOSSLAB_TEST_STOP_AT"}
    if stop_at:
        env["LOSSLAB_TEST_STOP_AT"] = stop_at
        env["PYTHONPATH"] = os.pathsep.join([str(STOP_HOOK), *filter(None, [env.get("PYTHONPATH")])])
    return env


def user_env(stop_at: str | None = None) -> dict[str, str]:
    """This process's environment as a user's shell has it: without HYDRA_FULL_ERROR (errors read as the one
    sentence a user gets) and $LOSSLAB_DATA_DIR (data comes from dataset.root or the repo's data/); a run stopped
    where `stop_at` says (stop_env)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LOSSLAB_DATA_DIR")}
    return stop_env(env, stop_at)


def run(*command: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`command` run to its end in `cwd` with `env` (default: `user_env()`); its stdout and stderr as text."""
    return subprocess.run(list(command), cwd=cwd, env=user_env() if env is None else env, capture_output=True,
                          text=True, timeout=timeout)


def losslab_train(*args: str, cwd: Path, stop_at: str | None = None,
                  timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`losslab-train *args` run to its end in `cwd`; `stop_at` as in `user_env`."""
    return run("losslab-train", *args, cwd=cwd, env=user_env(stop_at), timeout=timeout)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """`losslab-train *args` started in `cwd` with `user_env()`; stdout and stderr together in one text pipe."""
    return subprocess.Popen(["losslab-train", *args], cwd=cwd, env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def sweep(*args: str, cwd: Path, wait: bool = True) -> subprocess.Popen:
    """`losslab-train -m *args` started in `cwd`; with `wait`, run to its end, its output in `.output`."""
    proc = start("-m", *args, cwd=cwd)
    if wait:
        proc.output = proc.communicate(timeout=TIMEOUT)[0]
    return proc


def summary(run_dir: Path) -> dict:
    """A run's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


def summaries(sweep_dir: Path) -> dict[int, dict]:
    """Every job's summary.json, by job number."""
    return {job_number(d): summary(d) for d in job_dirs(sweep_dir)}


def report_rows(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep's report.csv."""
    with open(sweep_dir / "report.csv") as f:
        return list(csv.DictReader(f))


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))
