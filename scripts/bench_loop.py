"""losslab's loop vs the common DataLoader loop: samples/s on the same MNIST data, model and steps.

    python scripts/bench_loop.py [--steps 600] [--models linear fnn lenet]

The reference loop is the usual tutorial style: torchvision MNIST with ToTensor + Normalize transforms,
a shuffling DataLoader with batch 64, the same model class, SGD and cross-entropy. losslab's number is
the `samples_per_s` of a real `losslab-train` run (`fit`) for the same steps and batch size: training
steps on device-resident tensors, including the end-of-run validation pass inside the timed loop.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--models", nargs="+", default=["linear", "fnn", "lenet"])
    args = parser.parse_args()
    losslab_samples_per_s("linear", 20)  # warm the MNIST cache and the allocator
    print(f"MNIST, batch {BATCH}, {args.steps} steps, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':8} {'losslab samples/s':>18} {'DataLoader samples/s':>21} {'ratio':>7}")
    for name in args.models:
        ours = losslab_samples_per_s(name, args.steps)
        ref = reference_samples_per_s(name, args.steps)
        print(f"{name:8} {ours:18,.0f} {ref:21,.0f} {ours / ref:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
