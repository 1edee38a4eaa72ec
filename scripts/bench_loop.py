"""losslab's loop vs the common DataLoader loop: samples/s on the same MNIST data, model and steps, and
the training FLOP/s losslab reaches as a fraction of this machine's dense matmul peak, measured in the same run.

    python scripts/bench_loop.py [--steps 100] [--vgg5-steps 20] [--models linear fnn lenet vgg5]
                                 [--device cpu|cuda] [--precisions fp32 bf16] [--full]

`--full` runs 600 steps (vgg5: 60) instead of 100 (vgg5: 20).

The reference loop is the usual tutorial style: torchvision MNIST with ToTensor + Normalize transforms,
a shuffling DataLoader with batch 64, each batch moved to the device, the same model class, SGD and
cross-entropy (under the same bf16 autocast when the precision is bf16). losslab's number is the
`samples_per_s` of a real `losslab-train` run (`fit`) for the same steps, batch size, device and precision:
training steps on device-resident tensors, including the end-of-run evaluation inside the timed loop (one batch
of each split, of the training batch's size, so that it weighs little however few the steps).
Training FLOPs per sample are counted by torch.utils.flop_counter over one forward + backward pass; the
peak is the best of several n x n matmuls (2·n³ FLOPs each) in the row's precision on the same device
(n = 2048 on the CPU, 8192 on a GPU; fp32 is IEEE fp32, tf32 allows TF32 on a GPU, as trainer.precision).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import parse_sized, warn_if_busy  # beside this script
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from losslab.commands.cli import compose
from losslab.config import data_root
from losslab.training.loop import fit
from losslab.training.runs import build
from losslab.training.runtime import use_float32_math

BATCH = 64


DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, precision: str, repeats: int = 5) -> float:
    n = 8192 if device.type == "cuda" else 2048
    use_float32_math(precision, device)  # tf32: TF32 matmuls on CUDA, as the run's
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[precision]) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
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


def reference_samples_per_s(model_name: str, steps: int, device: torch.device, precision: str) -> float:
    cfg = compose([f"model={model_name}", "dataset=mnist", f"trainer.device={device}"])
    use_float32_math(precision, device)
    _, loss_fn, model, optimizer, _ = build(cfg, device)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(datasets.MNIST(data_root(None), train=True, transform=tf), batch_size=BATCH, shuffle=True)
    done, samples = 0, 0
    started = time.perf_counter()
    while done < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision == "bf16"):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            samples += len(y)
            if done == steps:
                break
    synchronize(device)
    return samples / (time.perf_counter() - started)


def losslab_samples_per_s(model_name: str, steps: int, device: torch.device, precision: str) -> float:
    cfg = compose([
        f"model={model_name}", "dataset=mnist", f"trainer.device={device}", f"trainer.precision={precision}",
        f"trainer.batch_size={BATCH}",
        f"trainer.max_steps={steps}", "trainer.epochs=100", "trainer.progress=log", "trainer.checkpoints=false",
        f"trainer.eval_batch_size={BATCH}", "trainer.limit_eval_batches=1", "trainer.figures=false",
    ])
    with tempfile.TemporaryDirectory() as run_dir:
        return fit(cfg, Path(run_dir))["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps of every model but vgg5 (default 100, --full 600)")
    parser.add_argument("--vgg5-steps", type=int, help="steps for vgg5, ~100x the FLOPs of lenet (default 20, "
                                                       "--full 60)")
    parser.add_argument("--models", nargs="+", default=["linear", "fnn", "lenet", "vgg5"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(DTYPES))
    args = parse_sized(parser, quick={"steps": 100, "vgg5_steps": 20}, full={"steps": 600, "vgg5_steps": 60})
    with warn_if_busy():
        measure(args)


def measure(args) -> None:
    device = torch.device(args.device)
    losslab_samples_per_s("linear", 20, device, "fp32")  # warm the MNIST cache, the allocator and the device
    peaks = {precision: matmul_peak_flops(device, precision) for precision in args.precisions}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"MNIST, batch {BATCH}, {args.steps} steps (vgg5: {args.vgg5_steps}), {where}, torch {torch.__version__}; "
          + ", ".join(f"{p} matmul peak {peak / 1e9:,.1f} GFLOP/s" for p, peak in peaks.items()))
    print(f"{'model':8} {'prec':4} {'losslab samples/s':>18} {'DataLoader samples/s':>21} {'ratio':>7} "
          f"{'MFLOP/sample':>13} {'GFLOP/s':>9} {'of peak':>8}")
    for name in args.models:
        steps = args.vgg5_steps if name == "vgg5" else args.steps
        flops = training_flops_per_sample(name)
        for precision, peak in peaks.items():
            ours = losslab_samples_per_s(name, steps, device, precision)
            ref = reference_samples_per_s(name, steps, device, precision)
            print(f"{name:8} {precision:4} {ours:18,.0f} {ref:21,.0f} {ours / ref:6.2f}x {flops / 1e6:13.2f} "
                  f"{ours * flops / 1e9:9.2f} {ours * flops / peak:8.1%}", flush=True)
            if ours * flops > peak:
                print(f"warning: {name} above the measured peak is a measurement error: the machine was busy while "
                      f"the peak was measured (load average {os.getloadavg()[0]:.1f}); rerun on a quiet machine",
                      flush=True)


if __name__ == "__main__":
    main()
