"""What every benchmark under scripts/ shares: a default run of a few minutes with the full sizes behind `--full`,
and a warning line where other processes kept the machine busy while it measured, as its figures then say little
(with two cores, one other busy process slows torch's threads several times over).

    args = parse_sized(parser, quick={"repeat": 3}, full={"repeat": 5})  # options declared with default=None
    with warn_if_busy():
        ...  # the benchmark

The 1-minute load average is read at the start and at the end; at the end it holds the benchmark's own processes
too, so what they used on average (CPU seconds of this process and its finished children per wall second) is
taken off it. What is left above the usable cores less half a core is a busy machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from losslab.training.runtime import usable_cores

SPARE = 0.5  # cores: a load within this of the machine's cores leaves none to spare


def parse_sized(parser: argparse.ArgumentParser, quick: dict, full: dict) -> argparse.Namespace:
    """The command line, with `--full`: each option of `quick` and `full` (declared with default=None) that the
    command line leaves out takes its value from `full` with --full, else from `quick`."""
    sizes = ", ".join(f"--{key.replace('_', '-')} {show(value)}" for key, value in full.items())
    parser.add_argument("--full", action="store_true", help=f"the full sizes ({sizes}) instead of the quick defaults")
    args = parser.parse_args()
    for key, value in (full if args.full else quick).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def show(value) -> str:
    """An option's value as it is typed."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended."""
    return sum(usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage,
                                                                 (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def busy_warning(when: str, load: float, own: float = 0.0) -> str | None:
    """The warning line where the load of other processes, `load` less this benchmark's `own` cores, leaves the
    benchmark less than all but half a core; None otherwise."""
    cores = usable_cores()
    if load - own <= cores - SPARE:
        return None
    mine = f", of which this benchmark {own:.1f}" if own else ""
    return (f"warning: load average {load:.1f} {when}{mine}, on {cores} cores: other processes were running, so "
            "these figures were taken on a busy machine; rerun on a quiet one")


@contextmanager
def warn_if_busy(at_end: bool = True) -> Iterator[None]:
    """Prints `busy_warning` at the start and (with `at_end`) at the end of the benchmark inside."""
    started, cpu = time.perf_counter(), cpu_seconds()
    print_warning(busy_warning("at the start", os.getloadavg()[0]))
    yield
    if at_end:
        own = (cpu_seconds() - cpu) / (time.perf_counter() - started)
        print_warning(busy_warning("at the end", os.getloadavg()[0], own))


# the fixed competing load: a torch process of its own threads multiplying 512 x 512 matrices without end, as a
# training run beside the benchmark would keep the cores busy
COMPETITOR = """
import torch
torch.set_num_threads({threads})
x = torch.randn(512, 512)
print("ready", flush=True)
while True:
    x = (x @ x).tanh_()
"""


@contextmanager
def competing_load(threads: int) -> Iterator[subprocess.Popen | None]:
    """With `threads` > 0, one other process keeps `threads` cores busy (COMPETITOR) from before the body starts
    (it has imported torch and is multiplying) until the body ends; with 0, nothing."""
    if threads <= 0:
        yield None
        return
    with subprocess.Popen([sys.executable, "-c", COMPETITOR.format(threads=threads)], stdout=subprocess.PIPE,
                          text=True) as competitor:
        try:
            if competitor.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the competing load ended before it started (exit code {competitor.wait()})")
            yield competitor
        finally:
            competitor.kill()


def print_warning(line: str | None) -> None:
    if line:
        print(line, flush=True)
