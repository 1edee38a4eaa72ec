"""losslab's loop vs the common DataLoader loop: samples/s on the same MNIST data, model and steps, and
the training FLOP/s losslab reaches as a fraction of this machine's dense matmul peak, measured in the same run.

    python scripts/bench_loop.py [--steps 600] [--vgg5-steps 60] [--models linear fnn lenet vgg5]

The reference loop is the usual tutorial style: torchvision MNIST with ToTensor + Normalize transforms,
a shuffling DataLoader with batch 64, the same model class, SGD and cross-entropy. losslab's number is
the `samples_per_s` of a real `losslab-train` run (`fit`) for the same steps and batch size: training
steps on device-resident tensors, including the end-of-run validation pass inside the timed loop.
Training FLOPs per sample are counted by torch.utils.flop_counter over one forward + backward pass; the
peak is the best of several fp32 2048 x 2048 matmuls (2·n³ FLOPs each) on the same threads.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from losslab.cli import compose
from losslab.config import data_root
from losslab.train import build, fit

BATCH = 64


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def training_flops_per_sample(model_name: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose([f"model={model_name}", "dataset=mnist", "trainer.device=cpu"])
    _, loss_fn, model, _, _ = build(cfg, torch.device("cpu"))
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def reference_samples_per_s(model_name: str, steps: int) -> float:
    cfg = compose([f"model={model_name}", "dataset=mnist", "trainer.device=cpu"])
    _, loss_fn, model, optimizer, _ = build(cfg, torch.device("cpu"))
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(datasets.MNIST(data_root(None), train=True, transform=tf), batch_size=BATCH, shuffle=True)
    done, samples = 0, 0
    started = time.perf_counter()
    while done < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            samples += len(y)
            if done == steps:
                break
    return samples / (time.perf_counter() - started)


def losslab_samples_per_s(model_name: str, steps: int) -> float:
    cfg = compose([
        f"model={model_name}", "dataset=mnist", "trainer.device=cpu", f"trainer.batch_size={BATCH}",
        f"trainer.max_steps={steps}", "trainer.epochs=100", "trainer.progress=log", "trainer.checkpoints=false",
        "trainer.eval_batch_size=1000", "trainer.limit_eval_batches=1", "trainer.figures=false",
    ])
    with tempfile.TemporaryDirectory() as run_dir:
        return fit(cfg, Path(run_dir))["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--vgg5-steps", type=int, default=60, help="steps for vgg5, ~100x the FLOPs of lenet")
    parser.add_argument("--models", nargs="+", default=["linear", "fnn", "lenet", "vgg5"])
    args = parser.parse_args()
    losslab_samples_per_s("linear", 20)  # warm the MNIST cache and the allocator
    peak = matmul_peak_flops()
    print(f"MNIST, batch {BATCH}, {args.steps} steps (vgg5: {args.vgg5_steps}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':8} {'losslab samples/s':>18} {'DataLoader samples/s':>21} {'ratio':>7} "
          f"{'MFLOP/sample':>13} {'GFLOP/s':>8} {'of peak':>8}")
    for name in args.models:
        steps = args.vgg5_steps if name == "vgg5" else args.steps
        ours = losslab_samples_per_s(name, steps)
        ref = reference_samples_per_s(name, steps)
        flops = training_flops_per_sample(name)
        print(f"{name:8} {ours:18,.0f} {ref:21,.0f} {ours / ref:6.2f}x {flops / 1e6:13.2f} "
              f"{ours * flops / 1e9:8.2f} {ours * flops / peak:8.1%}", flush=True)


if __name__ == "__main__":
    main()
