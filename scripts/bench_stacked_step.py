"""Milliseconds per training step of a stack of M members against the matrix products that step needs, and
against the same M runs stepped one after another, measured side by side in one run.

    python scripts/bench_stacked_step.py [--members 16] [--steps 50] [--repeat 3] [--seconds 0.5] [--device cpu]
                                         [--models linear lenet] [--precision fp32] [--load 0] [--full]

Each member is built from its own composed config, as `hydra/launcher=stacked` builds it (MNIST shapes, batch
128, SGD, a 4 lr x 4 trainer.l2 grid for 16 members). Two cases per model: the members share their batches
(one seed: the same data order), and every member draws its own (one seed each). Columns:

- `stacked`: one `StackedStepper.step` (forward, loss, backward, L2, the members' SGD updates, hits);
- `products`: for linear models, the stack's matrix products alone, timed in isolation: the forward product
  and the weight gradient's, as one (128 x 784) by (784 x 16·10) product each for shared batches, as batched
  products (M of 128 x 784 by 784 x 10) for the members' own;
- `separate`: M `SingleStepper.step`s, the runs as the basic launcher would step them one after another;
- `speed-up`: separate / stacked; `samples/s`: the stack's training samples per second, per member and in all.

`--precision` sets trainer.precision of every member (bf16: autocast on the device). `--load N` measures beside
a fixed competing load, another process of N threads multiplying matrices without end (bench_common.COMPETITOR),
started before the first row and ended after the last, as a second training run on a shared machine would be.

Times are medians over `--repeat` timings of `--steps` steps each (`separate`: a quarter of them), after a
warm-up of a tenth of them (at least 3); where the warm-up says that they would take over `--seconds`, of fewer
steps (one at least). `--full` times 5 x 200 steps, however long they take, instead of 3 x 50 or 0.5 s.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import competing_load, parse_sized, warn_if_busy  # beside this script

from losslab.commands.cli import compose
from losslab.stacking.steppers import SingleStepper, StackedStepper
from losslab.training.runs import Job, build_run

LRS, L2S = (0.3, 0.1, 0.03, 0.01), (0.0, 0.001, 0.01, 0.1)
BATCH = 128


def build_runs(model: str, members: int, own_batches: bool, device: torch.device, run_dir: Path,
               precision: str = "fp32"):
    runs, data = [], None
    for m in range(members):
        overrides = [f"model={model}", f"trainer.device={device}", f"trainer.precision={precision}",
                     f"optimizer.lr={LRS[m % 4]}", f"trainer.l2={L2S[(m // 4) % 4]}", f"seed={m if own_batches else 0}"]
        run, data = build_run(Job(compose(overrides), run_dir / str(m)), device, data)
        runs.append(run)
    return runs, data


def batch(data, members: int, own_batches: bool, device: torch.device, size: int = BATCH):
    generator = torch.Generator(device=device).manual_seed(0)
    index = torch.randint(0, len(data.train_y), (members if own_batches else 1, size), device=device,
                          generator=generator)
    x, y = data.train_x[index], data.train_y[index]
    return (x, y) if own_batches else (x[0], y[0].expand(members, -1))


def median_ms(step, steps: int, args, device: torch.device) -> float:
    """The median over `args.repeat` timings of `steps` calls of `step`, fewer where the warm-up says that they
    would take over `args.seconds`: milliseconds per call."""
    warm_up = max(3, steps // 10)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(warm_up):
        step()
    synchronize(device)
    steps = max(1, int(min(steps, args.seconds * warm_up / (time.perf_counter() - started))))
    timings = []
    for _ in range(args.repeat):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        timings.append((time.perf_counter() - started) / steps * 1e3)
    return statistics.median(timings)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def products(x: torch.Tensor, classes: int, members: int, own_batches: bool):
    """The linear stack's matrix products, forward and weight gradient, on random weights of its shapes."""
    features = x.flatten(-x.ndim + (2 if own_batches else 1)).shape[-1]
    inputs = x.reshape(*x.shape[:2 if own_batches else 1], features)
    if own_batches:
        weight = torch.randn(members, classes, features, device=x.device)
        grad_out = torch.randn(members, classes, inputs.shape[1], device=x.device)
        return lambda: (torch.bmm(weight, inputs.transpose(1, 2)), torch.bmm(grad_out, inputs))
    weight = torch.randn(members * classes, features, device=x.device)
    grad_out = torch.randn(inputs.shape[0], members * classes, device=x.device)
    return lambda: (inputs @ weight.t(), grad_out.t() @ inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, help="steps per timing (default 50, --full 200)")
    parser.add_argument("--repeat", type=int, help="timings, the median is shown (default 3, --full 5)")
    parser.add_argument("--seconds", type=float, help="at most about this long a timing, in fewer steps (default "
                                                      "0.5, --full inf)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["linear", "lenet"])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"), help="trainer.precision")
    parser.add_argument("--load", type=int, default=0, metavar="THREADS",
                        help="measure beside another process of this many threads multiplying matrices")
    args = parse_sized(parser, quick={"steps": 50, "repeat": 3, "seconds": 0.5},
                       full={"steps": 200, "repeat": 5, "seconds": math.inf})
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    beside = f", beside a competing process of {args.load} threads" if args.load else ""
    with warn_if_busy(at_end=not args.load), competing_load(args.load):
        print(f"{args.members} members, batch {BATCH}, MNIST shapes, SGD, {args.precision}, {where}{beside}, torch "
              f"{torch.__version__}; ms per step, medians of {args.repeat} timings of {args.steps} steps or "
              f"{args.seconds} s")
        print(f"{'model':7} {'batches':8} {'stacked':>8} {'products':>9} {'ratio':>6} {'separate':>9} {'speed-up':>9} "
              f"{'samples/s per member':>21} {'in all':>10}")
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models:
                for own_batches in (False, True):
                    print(measured_row(model, own_batches, args, device, Path(tmp)), flush=True)


def measured_row(model: str, own_batches: bool, args, device: torch.device, tmp: Path) -> str:
    runs, data = build_runs(model, args.members, own_batches, device, tmp, args.precision)
    x, y = batch(data, args.members, own_batches, device)
    stepper = StackedStepper(runs)
    stacked = median_ms(lambda: stepper.step(x, y, not own_batches, 0), args.steps, args, device)
    singles = [SingleStepper(run) for run in runs]
    own = [(x[m], y[m]) if own_batches else (x, y[m]) for m in range(args.members)]
    separate = median_ms(lambda: [single.step(*own[m], True, 0) for m, single in enumerate(singles)],
                         max(1, args.steps // 4), args, device)
    line = f"{model:7} {'own' if own_batches else 'shared':8} {stacked:8.2f} "
    if model == "linear":
        matmuls = median_ms(products(x, data.num_classes, args.members, own_batches), args.steps, args, device)
        line += f"{matmuls:9.2f} {stacked / matmuls:5.1f}x "
    else:
        line += f"{'':9} {'':6} "
    per_member = BATCH / stacked * 1e3
    return line + f"{separate:9.2f} {separate / stacked:8.2f}x {per_member:21,.0f} {per_member * args.members:10,.0f}"


if __name__ == "__main__":
    main()
