"""CPU time of drawing one run's four figures (weight templates, confidence histogram, reliability diagram,
curves), PNGs and TensorBoard images included, after the one-time imports.

    python scripts/bench_figures.py [--run-dir DIR] [--repeat 15] [--old REF] [--sweep-sizes 2 4 16]

Without --run-dir it trains `losslab-train model=linear trainer.epochs=1` on the shipped MNIST into a temp dir.
A run dir without predictions_test.npz (written by the loop's final evaluation) gets one from its final weights
first. It prints the median process CPU time of `draw_run_figures(run_dir)` over --repeat calls; with --old REF
(a git commit whose losslab drew the figures inside the training loop) also, from that commit's source in a
subprocess, the median CPU time of the figures as its `fit` drew them at the end of a run (`write_figures` with
the run's model, data and open SummaryWriter: the second pass over the test split and the drawing). With
--sweep-sizes, for each N it also times, side by side and alternating, the wall time of a sweep's end drawing N
copies of the run: `runs_figures_drawn(runs, workers=1)` (one after the other, here) against
`workers=<usable cores>` (worker processes, started by the call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from bench_common import warn_if_busy  # beside this script

REPO = Path(__file__).resolve().parents[1]

OLD_PATH = """
import json, statistics, sys, time
from pathlib import Path
import torch
from omegaconf import OmegaConf
from losslab.reporting.run_figures import read_rows, write_figures
from losslab.training.run_logger import import_tensorboard
from losslab.training.loop import build, pick_device
run_dir, out, repeat = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
model.load_state_dict(state["model"])
loss_fn.load_state_dict(state["loss"])
writer = import_tensorboard()[0](log_dir=str(out))
times = []
for i in range(repeat + 1):
    started = time.process_time()
    write_figures(out / str(i), model, loss_fn, data, read_rows(run_dir / "metrics.csv"), writer, 1)
    times.append(time.process_time() - started)
writer.close()
print(json.dumps(times[1:]))
"""


def train(out: Path) -> Path:
    run_dir = out / "run"
    subprocess.run(["losslab-train", "model=linear", "trainer.epochs=1", "trainer.progress=log",
                    f"hydra.run.dir={run_dir}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def write_predictions(run_dir: Path) -> None:
    """predictions_test.npz from the run's final weights, as the loop's final evaluation writes it."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from losslab.records.run_dir import final_checkpoint
    from losslab.training.loop import build, pick_device

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
    state = torch.load(final_checkpoint(run_dir, cfg), weights_only=True)
    model.load_state_dict(state["model"])
    loss_fn.load_state_dict(state["loss"])
    model.eval()
    x, y = data.split("test")
    with torch.no_grad():
        confidence, prediction = loss_fn.probs(model(x).float()).max(-1)
    np.savez(run_dir / "predictions_test.npz", confidence=confidence.numpy().astype(np.float32),
             correct=(prediction == y).numpy())


def new_times(run_dir: Path, repeat: int) -> list[float]:
    from losslab.reporting.run_figures import draw_run_figures

    times = []
    for _ in range(repeat + 1):  # the first call imports matplotlib and TensorBoard
        started = time.process_time()
        paths = draw_run_figures(run_dir)
        times.append(time.process_time() - started)
        assert len(paths) == 4, paths
    return times[1:]


def old_times(ref: str, run_dir: Path, repeat: int, scratch: Path) -> list[float]:
    """The old code path, from commit `ref`'s src/ in a subprocess."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src", "conf"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(scratch / "old", filter="data")
    out = subprocess.run([sys.executable, "-c", OLD_PATH, str(run_dir), str(scratch / "old_figures"), str(repeat)],
                         env={**os.environ, "PYTHONPATH": str(scratch / "old" / "src"),
                              "LOSSLAB_DATA_DIR": os.environ.get("LOSSLAB_DATA_DIR", str(REPO / "data"))},
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the old code path failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep_times(run_dir: Path, size: int, repeat: int, scratch: Path) -> tuple[list[float], list[float]]:
    """Wall times of drawing `size` copies of the run's figures without and with worker processes."""
    import shutil

    from losslab.reporting.run_figures import runs_figures_drawn
    from losslab.training.runtime import usable_cores

    times = {1: [], usable_cores(): []}
    for i in range(repeat):
        for workers in times:
            runs = [scratch / f"sweep{size}_{workers}_{i}" / str(k) for k in range(size)]
            for run in runs:
                shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("figures", "events.out.tfevents.*"))
            started = time.perf_counter()
            with runs_figures_drawn(runs, workers):
                pass
            times[workers].append(time.perf_counter() - started)
            assert all(len(list((run / "figures").glob("*.png"))) == 4 for run in runs)
    return tuple(times.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="a finished run dir (default: train one)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--old", help="a git commit to time the old figure drawing of, side by side")
    parser.add_argument("--sweep-sizes", type=int, nargs="*", default=[], help="time a sweep's end of N runs")
    args = parser.parse_args()
    with warn_if_busy():
        measure(args)


def measure(args) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        run_dir = args.run_dir or train(scratch)
        if not (run_dir / "predictions_test.npz").exists():
            write_predictions(run_dir)
        if args.old:
            old = old_times(args.old, run_dir, args.repeat, scratch)
            print(f"old ({args.old}, write_figures at the end of fit): median {statistics.median(old):.3f} s CPU "
                  f"per run's four figures (min {min(old):.3f}, {len(old)} repeats)")
        new = new_times(run_dir, args.repeat)
        print(f"draw_run_figures: median {statistics.median(new):.3f} s CPU per run's four figures "
              f"(min {min(new):.3f}, {len(new)} repeats)")
        for size in args.sweep_sizes:
            here, pool = map(statistics.median, sweep_times(run_dir, size, max(3, args.repeat // 5), scratch))
            print(f"{size} runs' figures: median wall {here:.2f} s one after the other, {pool:.2f} s on worker "
                  f"processes: {here / pool:.2f}x")


if __name__ == "__main__":
    main()
