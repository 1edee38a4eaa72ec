"""Events a second through losslab's RunLogger, side by side in one run: TensorBoard's public path (SummaryWriter
as it is) vs the shortcuts of losslab.training.tensorboard_adapter (the event file held open, C checksums).

    python scripts/bench_events.py [--runs 16] [--steps 1290] [--eval-every 430] [--repeat 5]
                                   [--sweep softmax softmax64]

The events are written as a stacked sweep writes them: `--runs` run loggers (one per job, a run dir each); at
every evaluation each run in turn logs its train/loss and train/acc of every step since the last one (one event
a step), then its validation values (one event), then flushes. The defaults are bench_sweep.py's 16-job softmax
grid (3 epochs of 430 steps); `--runs 64` its 64-job grid. A third variant logs every value as its own event
through SummaryWriter.add_scalar (the documented call) on the public path. The variants take turns, `--repeat`
times, so a change in the machine's speed hits all alike; each line is the median round: wall and CPU seconds
(all threads) of the whole workload, µs per event, events per second, and the ratio to the adapter.

`--sweep GRID...` then times whole commands: bench_sweep.py's grid with `hydra/launcher=stacked`, on the CPU,
in a fresh process with the adapter on and one with it off, taking turns `--repeat` times: the median wall and
CPU seconds of the command, and the seconds its training loop spent in RunLogger's calls that write events
(making the loggers, scalars, text, flush, close), with what the adapter saves of the command.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import warn_if_busy  # beside this script
from omegaconf import OmegaConf

from losslab.training import tensorboard_adapter
from losslab.training.run_logger import RunLogger

VALIDATION = ["lr", "weights/sq_norm", "pred/entropy",
              *(f"val/{m}" for m in ("loss", "acc", "nll", "brier", "ece", "entropy"))]


def workload(root: Path, runs: int, steps: int, eval_every: int, per_value: bool) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and the number of events of one sweep's logging, from the first logger made
    to the last one closed."""
    cfg = OmegaConf.create({"seed": 0})
    started, cpu = time.perf_counter(), time.process_time()
    loggers = [RunLogger(root / str(k), cfg, {"seed": k}) for k in range(runs)]
    events = 0
    for first in range(1, steps + 1, eval_every):
        last = min(first + eval_every, steps + 1)
        for k, logger in enumerate(loggers):
            batches = [{"train/loss": 1 / step + k, "train/acc": step / steps} for step in range(first, last)]
            validation = {tag: k + i / (last - 1) for i, tag in enumerate(VALIDATION)}
            for step, values in enumerate([*batches, validation], start=first):
                step = min(step, last - 1)  # the validation values at the evaluation's step
                if per_value:
                    for tag, value in values.items():
                        logger.writer.add_scalar(tag, value, step)
                    events += len(values)
                else:
                    logger.scalars(values, step)
                    events += 1
            logger.flush()
    for logger in loggers:
        logger.close()
    return time.perf_counter() - started, time.process_time() - cpu, events


VARIANTS = {  # name: (adapter on, one event per value)
    "adapter (event file held open, C checksums)": (True, False),
    "public (SummaryWriter as it is)": (False, False),
    "public, add_scalar per value": (False, True),
}


SWEEP = """import sys, time
from losslab.training import tensorboard_adapter
from losslab.training.run_logger import RunLogger
tensorboard_adapter.use({adapter})
spent = [0.0]
def timed(method):
    def call(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started
    return call
for name in ("__init__", "scalars", "text", "flush", "close"):
    setattr(RunLogger, name, timed(getattr(RunLogger, name)))
from losslab.commands.cli import train
sys.argv = ["losslab-train", *{argv!r}]
try:
    train()
finally:
    print("logging", spent[0])
"""


def sweep_command(argv: list[str], adapter: bool) -> tuple[float, float, float]:
    """Wall and CPU seconds of the command, and the seconds spent in RunLogger's event calls."""
    with tempfile.TemporaryDirectory() as tmp:
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", SWEEP.format(adapter=adapter, argv=argv)], cwd=tmp,
                              capture_output=True, text=True)
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench_events: {' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    logging = float(proc.stdout.split("logging")[-1])
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, logging


def compare_sweeps(grids: list[str], repeat: int) -> None:
    from bench_sweep import GRIDS  # beside this script

    argvs = {name: ["-m", *GRIDS[name][1], "hydra/launcher=stacked", "trainer.device=cpu", "trainer.progress=log",
                    "hydra.sweep.dir=sweep"] for name in grids}
    sweep_command(["trainer=debug", "trainer.device=cpu", "trainer.progress=log"], True)  # warm the MNIST cache
    runs = {(name, adapter): [] for name in grids for adapter in (True, False)}
    for _ in range(repeat):  # the grids and arms in turn
        for name in grids:
            for adapter in (True, False):
                runs[name, adapter].append(sweep_command(argvs[name], adapter))
    print(f"{'stacked command, median s':46} {'wall':>7} {'CPU':>7} {'logging':>8}")
    for name in grids:
        on, off = ([statistics.median(r[i] for r in runs[name, adapter]) for i in range(3)]
                   for adapter in (True, False))
        print(f"{name}: {GRIDS[name][0]}")
        for arm, (wall, cpu, logging) in (("adapter", on), ("public", off)):
            print(f"{'  ' + arm:46} {wall:7.1f} {cpu:7.1f} {logging:8.2f}")
        print(f"{'  public - adapter':46} {off[0] - on[0]:+7.1f} {off[1] - on[1]:+7.1f} {off[2] - on[2]:+8.2f}  "
              f"logging saved {(off[2] - on[2]) / off[0]:.1%} of the public command's wall; walls: adapter "
              + " ".join(f"{r[0]:.1f}" for r in runs[name, True]) + ", public "
              + " ".join(f"{r[0]:.1f}" for r in runs[name, False]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16, help="run loggers, as jobs of a stacked sweep")
    parser.add_argument("--steps", type=int, default=1290, help="train steps of every run")
    parser.add_argument("--eval-every", type=int, default=430, help="steps between evaluations")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median round is reported")
    parser.add_argument("--sweep", nargs="+", default=[], choices=["softmax", "softmax64"],
                        help="also time these stacked grid commands with and without the adapter")
    args = parser.parse_args()
    if min(args.runs, args.steps, args.eval_every, args.repeat) < 1:
        parser.error("--runs, --steps, --eval-every and --repeat must each be at least 1")
    with warn_if_busy():
        measure(args)


def measure(args) -> None:
    import tensorboard

    print(f"tensorboard {tensorboard.__version__}, python {sys.version.split()[0]}; {args.runs} runs x "
          f"{args.steps} steps, an evaluation every {args.eval_every}, median of {args.repeat} rounds")
    with tempfile.TemporaryDirectory() as tmp:  # imports and first calls, timed in no variant
        workload(Path(tmp), 2, 20, 10, per_value=False)
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):
        for name, (adapter, per_value) in VARIANTS.items():
            tensorboard_adapter.use(adapter)
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(workload(Path(tmp), args.runs, args.steps, args.eval_every, per_value))
    tensorboard_adapter.use(True)
    print(f"{'variant':46} {'wall s':>7} {'CPU s':>7} {'events':>7} {'µs/event':>9} {'events/s':>9} "
          f"{'wall/adapter':>12} {'CPU/adapter':>11}")
    base_wall, base_cpu = (statistics.median(r[i] for r in results[next(iter(VARIANTS))]) for i in (0, 1))
    for name, rounds in results.items():
        wall, cpu = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        events = rounds[0][2]
        print(f"{name:46} {wall:7.2f} {cpu:7.2f} {events:7d} {wall / events * 1e6:9.1f} {events / wall:9.0f} "
              f"{wall / base_wall:11.2f}x {cpu / base_cpu:10.2f}x", flush=True)
    if args.sweep:
        compare_sweeps(args.sweep, args.repeat)


if __name__ == "__main__":
    main()
