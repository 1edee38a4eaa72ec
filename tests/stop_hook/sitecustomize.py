"""Tests only: stop a losslab process at a chosen point of its training loop.

commands.stop_env puts this directory first on a child process's PYTHONPATH, with $LOSSLAB_TEST_STOP_AT (both
reach Slurm's tasks, which inherit the environment); Python imports this module as the child starts, and it
subscribes `stop_at` to the loop's hooks (losslab.training.hooks). Any other sitecustomize on the path still runs
after it.

$LOSSLAB_TEST_STOP_AT holds "<action> <point> <step|any> [job=<n>]", several separated by `;`. `SIGKILL eval 8`
sends the process SIGKILL when step 8's evaluation has been written (`SIGINT@group eval 8` sends SIGINT to its
process group, as Ctrl-C in a terminal does); `sleep=0.5 step any` sleeps half a second
after every step (a run that takes long on any machine); `hold_mb=800 eval 7` allocates and writes 800 MB there and
keeps it (a process over its memory limit); `until=/tmp/cue step 1` naps there until the file /tmp/cue exists
(another process's cue); `wait eval 8` naps there until a stop signal has been caught (a cancel's SIGTERM, a
preemption's USR2: unlike SIGSTOP then SIGCONT, whose order of handling against the other signal depends on which
thread takes it, the run stops at this very step); `job=1` restricts a spec to job 1
of a sweep, or to the stack that holds job 1 (the whole stack, and so every member, stops there). The points are
losslab.training.hooks's: `step`, `eval`, `epoch` (its number is the epochs done), `finish`.
"""

import os
import re
import signal
import time

VARIABLE = "LOSSLAB_TEST_STOP_AT"
HELD = []  # what hold_mb= allocated
SYNTAX = "<action> <point> <step|any> [job=<n>]"


def parse(text: str) -> list[tuple[str, str, str, int | None]]:
    """The specs in `text` as (action, point, step or `any`, job number or None)."""
    from losslab.training.hooks import POINTS

    specs = []
    for spec in filter(str.strip, text.split(";")):
        words = spec.split()
        action, point, when, job = (*words, None)[:4] if len(words) in (3, 4) else ("", "", "", None)
        if not (action == "wait" or re.fullmatch(r"(sleep|hold_mb)=\d+(\.\d*)?", action) or action.startswith("until=")
                or re.fullmatch(r"SIG[A-Z0-9]+(@group)?", action) and hasattr(signal, action.removesuffix("@group"))) \
                or point not in POINTS or not (when == "any" or when.isdigit()) \
                or (job is not None and not re.fullmatch(r"job=\d+", job)):
            raise ValueError(f"{VARIABLE}: {spec.strip()!r} is not {SYNTAX!r} with an action SIG<NAME>, sleep=<s>, "
                             f"hold_mb=<MB>, until=<path> or wait, and a point among {', '.join(POINTS)}.")
        specs.append((action, point, when, None if job is None else int(job.removeprefix("job="))))
    return specs


def stop_at_hook(specs: list[tuple[str, str, str, int | None]]):
    """A hook for losslab.training.hooks that does what `specs` say where they say it."""

    def stop_at(point: str, at: int, jobs) -> None:
        for action, where, when, job in specs:
            if where != point or when not in (str(at), "any") or (job is not None and job not in jobs):
                continue
            if action.startswith("sleep="):
                time.sleep(float(action.removeprefix("sleep=")))
            elif action.startswith("hold_mb="):  # memory the process uses from here on (every page written)
                HELD.append(bytearray(b"\1" * int(float(action.removeprefix("hold_mb=")) * 2**20)))
            elif action.startswith("until="):
                while not os.path.exists(action.removeprefix("until=")):
                    time.sleep(0.05)
            elif action == "wait":
                from losslab.training.runtime import stop_requested

                while not stop_requested():  # the main thread runs the handler between naps, whichever thread took it
                    time.sleep(0.01)
            elif action.endswith("@group"):
                os.killpg(os.getpgid(0), getattr(signal, action.removesuffix("@group")))
            else:
                os.kill(os.getpid(), getattr(signal, action))

    return stop_at


def run_next_sitecustomize() -> None:
    """The sitecustomize this one shadows, if there is one further on sys.path."""
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get(VARIABLE, "").strip():
    from losslab.training.hooks import subscribe

    subscribe(stop_at_hook(parse(os.environ[VARIABLE])))
run_next_sitecustomize()
