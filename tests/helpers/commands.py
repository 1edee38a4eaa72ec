"""losslab's commands run as a user runs them, in a fresh process, and what they leave in run and sweep dirs.

A test reaches the commands through conftest's `losslab` fixture (a `Commands`), which marks it slow; the readers
at the end (summary.json, report.csv, metrics.csv) start nothing. The data files tests train on are written by
fixtures.py; TensorBoard's view of a run is read by tb_events.py.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

from losslab.records.job_dirs import job_dirs, job_number

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600  # s per command
STOP_HOOK = Path(__file__).resolve().parents[1] / "stop_hook"  # its sitecustomize.py: LOSSLAB_TEST_STOP_AT's hook


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


def start(*args: str, cwd: Path, stop_at: str | None = None, own_group: bool = False) -> subprocess.Popen:
    """`losslab-train *args` started in `cwd` with `user_env(stop_at)`; stdout and stderr together in one text pipe.
    With `own_group`, in a process group (a session) of its own, as a terminal starts a command: a signal to the
    group reaches it and every process it starts, and no test process."""
    return subprocess.Popen(["losslab-train", *args], cwd=cwd, env=user_env(stop_at), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=own_group)


def sweep(*args: str, cwd: Path, wait: bool = True) -> subprocess.Popen:
    """`losslab-train -m *args` started in `cwd`; with `wait`, run to its end, its output in `.output`."""
    proc = start("-m", *args, cwd=cwd)
    if wait:
        proc.output = proc.communicate(timeout=TIMEOUT)[0]
    return proc


def on_a_terminal(*args: str, cwd: Path) -> str:
    """`losslab-train *args` with stdout and stderr on a 100-column pseudo-terminal; what it wrote there."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's size, then the real command
        try:
            os.chdir(cwd)
            fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            os.execvpe("losslab-train", ["losslab-train", *args], user_env())
        finally:
            os._exit(127)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode()
    return output.decode()


class Commands:
    """What conftest's `losslab` fixture gives a test: each way above of starting a process, by a short name."""

    run = staticmethod(run)
    train = staticmethod(losslab_train)
    start = staticmethod(start)
    sweep = staticmethod(sweep)
    on_a_terminal = staticmethod(on_a_terminal)


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
