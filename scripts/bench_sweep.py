"""Wall time of whole commands, side by side in one run: a grid with Hydra's basic launcher vs
`hydra/launcher=stacked`, and `losslab-train trainer=debug` vs importing torch and torchvision.

    python scripts/bench_sweep.py [--grids softmax4] [--figures on|off] [--repeat 2] [--runs 1] [--device auto]
                                  [--full]

The default times the start-up and one small grid; `--full` the grids softmax softmax64 lenet lenet-conv_on_cpu
(the basic launcher's runs take minutes each) with the start-up's best of 3.

Each grid runs as the user runs it: one `losslab-train -m` process per launcher, on the shipped MNIST,
everything else at its defaults (so each job writes its checkpoints and TensorBoard events, and its figures
unless `--figures off`, which sets trainer.figures=false for both launchers alike). The last column compares
each job's final test accuracy between the two launchers (same seed, same config). Start-up times are the best
of `--repeat` runs. With `--runs N` every stacked command runs N times, the grids taking turns, and its median
run is reported (the basic launcher's, minutes long, runs once).

For every stacked command the phases of its wall time are read from its log and files: compose (Hydra's start
and the sweeper composing every job, until the launcher starts; losslab imports torch only after it), build
(importing torch, the job dirs and .hydra/, the data and the members, until "N jobs stacked"), train (until "N
jobs trained"), finish (the members' final evaluations and summaries, until the last "completed"), figures (the
last PNG written) and report (report.md written), each counted from the end of the finish, since they overlap;
exit is what is left. The start-up it is compared with is `import torch, torchvision`, measured here.
"""

from __future__ import annotations

import argparse
import compileall
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench_common import parse_sized, warn_if_busy  # beside this script

from losslab.records.job_dirs import job_dir, job_dirs, job_number

GRIDS = {  # name: (title, the grid's overrides, the stacked launcher's options)
    "softmax4": ("softmax regression, 2 lr x 2 l2, 1 epoch",
                 ["model=linear", "trainer.epochs=1", "optimizer.lr=0.3,0.03", "trainer.l2=0,0.01"], []),
    "softmax": ("softmax regression, 4 lr x 4 l2, 3 epochs",
                ["model=linear", "trainer.epochs=3", "optimizer.lr=0.3,0.1,0.03,0.01", "trainer.l2=0,0.001,0.01,0.1"],
                []),
    # the same with 4 seeds: every member draws its own data order
    "softmax64": ("softmax regression, 4 lr x 4 l2 x 4 seeds, 3 epochs",
                  ["model=linear", "trainer.epochs=3", "optimizer.lr=0.3,0.1,0.03,0.01",
                   "trainer.l2=0,0.001,0.01,0.1", "seed=0,1,2,3"], []),
    "lenet": ("LeNet-5, 2 lr x 2 momentum x 2 seeds, 1 epoch",
              ["model=lenet", "trainer.epochs=1", "optimizer.lr=0.1,0.03", "optimizer.momentum=0,0.9", "seed=0,1"],
              []),
    # the same grid stacked although it is convolutional and on the CPU (what the default declines, and why)
    "lenet-conv_on_cpu": ("the same, stacked with hydra.launcher.conv_on_cpu=true", None,
                          ["hydra.launcher.conv_on_cpu=true"]),
}


def console_script(name: str) -> str:
    """The entry point installed beside this interpreter (what a virtual environment's PATH finds first), so
    a version manager's shim in front of it (pyenv's costs ~0.1 s) is not timed against `sys.executable`."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def timed(command: list[str], cwd: Path) -> float:
    return run(command, cwd)[0]


def run(command: list[str], cwd: Path) -> tuple[float, str, float, float]:
    """Wall time, output (stdout then stderr), and the wall-clock times of its start and end."""
    started, start_clock = time.perf_counter(), time.time()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench_sweep: {' '.join(command)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr, start_clock, start_clock + wall


LOGGED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^]]*\]\[?[A-Z]*\]? ?(.*)$", re.M)


def log_times(output: str, pattern: str) -> list[float]:
    """The wall-clock times of the log lines matching `pattern`."""
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, text in LOGGED.findall(output) if re.search(pattern, text)]


def phases(output: str, sweep_dir: Path, start: float, end: float) -> dict[str, float]:
    """The stacked command's phases (see the module docstring), in seconds."""
    launched = log_times(output, r"^Launching \d+ jobs")[0]
    built = max(log_times(output, r"jobs stacked on"))
    trained = max(log_times(output, r"jobs trained \d+ steps"))
    finished = max(log_times(output, r" completed after \d+ steps"))
    figures = max((png.stat().st_mtime for png in sweep_dir.glob("*/figures/*.png")), default=finished)
    report = (sweep_dir / "report.md").stat().st_mtime
    return {"compose": launched - start, "build": built - launched,
            "train": trained - built, "finish": finished - trained, "figures": max(0.0, figures - finished),
            "report": report - finished, "exit": end - max(report, figures)}


def test_accuracies(sweep_dir: Path) -> dict[int, float]:
    return {job_number(d): json.loads((d / "summary.json").read_text())["final"]["test/acc"]
            for d in job_dirs(sweep_dir)}


def job_overrides(job_dir: Path) -> str:
    return " ".join(o for o in json.loads((job_dir / "summary.json").read_text())["overrides"] if "progress" not in o)


TRAIN = console_script("losslab-train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="*", choices=list(GRIDS),
                        help="none: start-up only (default softmax4, --full softmax softmax64 lenet lenet-conv_on_cpu)")
    parser.add_argument("--repeat", type=int, help="start-up runs to take the best of (default 2, --full 3)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of each stacked command, the grids in turn; the median is reported")
    parser.add_argument("--figures", choices=("on", "off"), default="on", help="trainer.figures of every job")
    parser.add_argument("--device", default="auto", help="trainer.device of every run (auto: cuda if there is one)")
    args = parse_sized(parser, quick={"grids": ["softmax4"], "repeat": 2},
                       full={"grids": ["softmax", "softmax64", "lenet", "lenet-conv_on_cpu"], "repeat": 3})
    with warn_if_busy():
        measure(args)


def measure(args) -> None:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() and args.device != "cpu" else ""
    print(f"{torch.get_num_threads()} threads{gpu}, torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"trainer.device={args.device}")
    device = [f"trainer.device={args.device}", *(["trainer.figures=false"] if args.figures == "off" else [])]
    if sys.dont_write_bytecode:  # e.g. PYTHONDONTWRITEBYTECODE=1: Python would compile losslab on every start
        compileall.compile_dir(Path(__file__).resolve().parents[1] / "src", quiet=1)
        print("byte-compiled src/ first, as an installed package is and as Python caches it on a first run "
              "(this interpreter does not write bytecode)")
    print(f"{'command':52} {'A (s)':>8} {'B (s)':>8} {'A/B':>7}  notes")
    with tempfile.TemporaryDirectory() as tmp:
        startup = startup_seconds(device, args.repeat, Path(tmp))
        compare_launchers(args.grids, device, args.runs, startup, Path(tmp))


def startup_seconds(device: list[str], repeat: int, tmp: Path) -> float:
    """Prints `losslab-train trainer=debug` against importing torch and torchvision (the best of `repeat` runs
    each) and returns the import's seconds."""
    timed([TRAIN, "trainer=debug", *device], tmp)  # warm the MNIST cache
    debug, imports = [], []
    for _ in range(repeat):  # alternated, so a change in the machine's speed hits both alike
        debug.append(timed([TRAIN, "trainer=debug", *device, "trainer.progress=log"], tmp))
        imports.append(timed([sys.executable, "-c", "import torch, torchvision"], tmp))
    debug, startup = min(debug), min(imports)
    print(f"{'losslab-train trainer=debug vs import torch, torchvision':52} {debug:8.1f} {startup:8.1f} "
          f"{debug / startup:6.2f}x  difference {debug - startup:+.2f} s (target <= +1.5 s)", flush=True)
    return startup


def compare_launchers(grids: list[str], device: list[str], runs: int, startup: float, tmp: Path) -> None:
    """Each grid with the basic launcher once and with the stacked one `runs` times, a line each."""
    basic_runs = {}  # grid: (wall, accuracies) of its basic launcher run, shared by its variants
    for name in grids:
        grid_name = name.split("-")[0]
        if grid_name not in basic_runs:
            basic_dir = tmp / f"{grid_name}-basic"
            wall = timed([TRAIN, "-m", *GRIDS[grid_name][1], *device, "trainer.progress=log",
                          f"hydra.sweep.dir={basic_dir}"], tmp)
            basic_runs[grid_name] = wall, test_accuracies(basic_dir)
    stacked_runs = {name: [] for name in grids}  # grid: [(wall, output, start, end, sweep dir)]
    for round_number in range(runs):  # the grids in turn, so a change in the machine's speed hits all
        for name in grids:
            title, grid, options = GRIDS[name]
            stacked_dir = tmp / f"{name}-stacked-{round_number}"
            command = [TRAIN, "-m", *(grid or GRIDS[name.split("-")[0]][1]), *device, "hydra/launcher=stacked",
                       *options, "trainer.progress=log", f"hydra.sweep.dir={stacked_dir}"]
            stacked_runs[name].append((*run(command, tmp), stacked_dir))
    for name in grids:
        print_grid(name, basic_runs[name.split("-")[0]], stacked_runs[name], startup)
    if {"softmax", "softmax64"} <= stacked_runs.keys():
        many, few = (median_run(stacked_runs[name])[0] for name in ("softmax64", "softmax"))
        print(f"{'stacked: 64 jobs vs 16 jobs':52} {many:8.1f} {few:8.1f} {many / few:6.2f}x", flush=True)


def median_run(runs: list[tuple]) -> tuple:
    """The run of median wall time (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]


def print_grid(name: str, basic_run: tuple[float, dict], stacked_runs: list[tuple], startup: float) -> None:
    """The grid's line: basic vs the median stacked wall time, the accuracy gap, and that run's phases."""
    basic, basic_accuracies = basic_run
    stacked, output, start, end, stacked_dir = median_run(stacked_runs)
    accuracies = test_accuracies(stacked_dir)
    gaps = {j: abs(basic_accuracies[j] - accuracies[j]) * 100 for j in basic_accuracies}
    worst = max(gaps, key=gaps.get)
    walls = "" if len(stacked_runs) == 1 else f"; stacked runs {', '.join(f'{r[0]:.1f}' for r in stacked_runs)} s"
    print(f"{GRIDS[name][0] + f' ({len(accuracies)} jobs): basic vs stacked':52} {basic:8.1f} {stacked:8.1f} "
          f"{basic / stacked:6.2f}x  max |test acc difference| {gaps[worst]:.2f} points "
          f"(job {worst}: {job_overrides(job_dir(stacked_dir, worst))}, test acc "
          f"{basic_accuracies[worst]:.4f} basic){walls}", flush=True)
    if "jobs stacked on" in output:
        times = phases(output, stacked_dir, start, end)
        print(f"{'':52} stacked: {stacked - startup:.1f} s over start-up ({startup:.1f} s); "
              + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in times.items()), flush=True)

if __name__ == "__main__":
    main()
