"""Wall and CPU time of whole commands with and without each of two start-up speed hacks, side by side in one
sitting (runs alternated, so a change in the machine's speed hits both alike), median of `--repeat` runs:

- tensorboard: hiding boto3 and fsspec (None in sys.modules) while torch.utils.tensorboard is imported; TensorBoard
  imports them only for s3:// and gs:// log dirs. losslab imports it as is (the hack paid under 3 %); here the
  hack is applied before the command. Timed on the import alone, and with `--full` on `losslab-train trainer=debug`.
- compositions: the stacked launcher takes each job's config from the sweeper's validation pass
  (losslab.sweeps.hydra_adapter.remember_compositions) instead of composing it again, and that pass derives a job
  that changes only config values from an earlier job's composition (losslab.sweeps.compositions). Timed on a 16-job
  stacked grid (`--grid-training`: by default one step and one evaluation batch a split, no figures, so the command
  is mostly what the hack touches; `--full`: one epoch). Without the hack, the launcher composes every job with
  Hydra's load_sweep_config, as the basic launcher does. As whole commands vary by more than the hack saves on a
  busy machine, one more run without it times each composition and prints what the launcher's compositions (the ones
  the hack saves) cost of the command.
- validation: the first half of the compositions hack alone, the one that leans on Hydra's inner workings: with
  it as above; without it, the launcher derives its jobs' configs itself and the sweeper composes each job in full
  (the public path, which the launcher falls back to where Hydra's config loader takes no layer).

    python scripts/bench_speed_hacks.py [--hacks tensorboard compositions] [--repeat 3] [--site DIR] [--full]

`--full` times the three hacks, each command 5 times, on the one-epoch grid.

`--site DIR` appends DIR to sys.path in every timed process, e.g. a `pip install --target DIR boto3` to time the
tensorboard hack with boto3 installed (appended, so nothing there shadows the environment's own packages).
Every command runs in a fresh temp dir, on the shipped MNIST, on the CPU.
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

from bench_common import parse_sized, warn_if_busy  # beside this script

DEBUG = ["trainer=debug", "trainer.progress=log", "trainer.device=cpu"]
GRID = ["-m", "hydra/launcher=stacked", "model=linear", "optimizer.lr=0.3,0.1,0.03,0.01", "trainer.l2=0,0.001,0.01,0.1",
        "trainer.progress=log", "trainer.device=cpu"]  # and --grid-training
TRAIN = "from losslab.commands.cli import train\nsys.argv = ['losslab-train', *{argv!r}]\ntrain()\n"
LAUNCHER = "hydra_plugins.losslab_launcher.stacked_launcher.StackedLauncher"
HIDE = "sys.modules.update(dict.fromkeys(['boto3', 'fsspec']))\n"
WITH = {"tensorboard": HIDE + "import torch.utils.tensorboard\ndel sys.modules['boto3'], sys.modules['fsspec']\n",
        "compositions": "", "validation": ""}
# the launcher class Hydra's plugin scan loaded (its module is not the one `import` would give), and Compositions
# that let Hydra compose every job
LAYERS = ("from hydra.core.plugins import Plugins\nfrom losslab.sweeps.compositions import Compositions\n"
          "launcher = Plugins.instance().class_name_to_class['" + LAUNCHER + "']\n"
          "class Composing(Compositions):\n"
          "    def __call__(self, master_config, sweep_overrides):\n"
          "        return self.compose(master_config, list(sweep_overrides))\n")
WITHOUT = {
    "tensorboard": "",
    "compositions": LAYERS + "launcher.setup.__globals__['remember_compositions'] = "
                             "lambda config_loader: Composing(config_loader.load_sweep_config)\n",
    "validation": LAYERS + "launcher.setup.__globals__['remember_compositions'] = "
                           "lambda config_loader: Compositions(config_loader.load_sweep_config)\n",
}
COMPOSITIONS_COST = (  # without the hack, and the wall and CPU time of every composition
    "import resource, time\n" + LAYERS + "spent = []\n"
    "def timing(loader):\n"
    "    compose = loader.load_sweep_config\n"
    "    def load_sweep_config(master_config, sweep_overrides):\n"
    "        wall, cpu = time.perf_counter(), time.process_time()\n"
    "        config = compose(master_config, sweep_overrides)\n"
    "        spent.append((time.perf_counter() - wall, time.process_time() - cpu))\n"
    "        return config\n"
    "    loader.load_sweep_config = load_sweep_config\n"
    "    return Composing(load_sweep_config)\n"
    "launcher.setup.__globals__['remember_compositions'] = timing\nstarted = time.perf_counter()\n"
    "try:\n    {train}finally:\n"
    "    usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    again = spent[len(spent) // 2:]  # the sweeper's validation composes first, then the launcher\n"
    "    print(len(again), sum(w for w, _ in again), sum(c for _, c in again), time.perf_counter() - started,\n"
    "          usage.ru_utime + usage.ru_stime)\n"
)
IMPORT = ("import time\nimport torch\nstarted = time.perf_counter()\n{hide}import torch.utils.tensorboard\n"
          "print(time.perf_counter() - started)\n")


def python(code: str, site: str | None, cwd: Path) -> subprocess.CompletedProcess:
    prefix = "import sys\n" + (f"sys.path.append({site!r})\n" if site else "")
    proc = subprocess.run([sys.executable, "-c", prefix + code], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_speed_hacks: failed:\n{code}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def timed(code: str, site: str | None) -> tuple[float, float]:
    """(wall, CPU) seconds of the command; CPU time (user + system) is what other load on the machine changes least."""
    with tempfile.TemporaryDirectory() as tmp:
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        python(code, site, Path(tmp))
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def import_time(hide: bool, site: str | None) -> tuple[float]:
    with tempfile.TemporaryDirectory() as tmp:
        return (float(python(IMPORT.format(hide=HIDE if hide else ""), site, Path(tmp)).stdout.split()[-1]),)


def compare(title: str, with_hack, without_hack, repeat: int) -> None:
    """One line per measure (wall, CPU): medians with and without the hack, their ratio and what the hack saves."""
    runs = {"with": [], "without": []}
    for _ in range(repeat):
        runs["with"].append(with_hack())
        runs["without"].append(without_hack())
    for i, measure in enumerate(("wall", "CPU")[:len(runs["with"][0])]):
        a, b = (statistics.median(times[i] for times in runs[arm]) for arm in ("with", "without"))
        print(f"{title + f' ({measure})':52} {a:8.3f} {b:8.3f} {b / a:6.3f}x  saves {b - a:+.3f} s ({(b - a) / b:+.1%})"
              "; runs with " + " ".join(f"{t[i]:.2f}" for t in runs["with"])
              + ", without " + " ".join(f"{t[i]:.2f}" for t in runs["without"]), flush=True)


def print_compositions_cost(grid: list[str], site: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        code = COMPOSITIONS_COST.replace("{train}", TRAIN.format(argv=grid).strip().replace("\n", "\n    ") + "\n")
        out = python(code, site, Path(tmp)).stdout.split("\n")[-2].split()
    n, wall, cpu, command_wall, command_cpu = int(out[0]), *map(float, out[1:])
    print(f"the launcher's {n} compositions the hack saves: {wall:.2f} s wall, {cpu:.2f} s CPU, of the command's "
          f"{command_wall:.1f} s wall ({wall / command_wall:.1%}), {command_cpu:.1f} s CPU ({cpu / command_cpu:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hacks", nargs="+", choices=list(WITHOUT),
                        help="(default tensorboard compositions, --full all three)")
    parser.add_argument("--repeat", type=int, help="runs of each command; the median is shown (default 3, --full 5)")
    parser.add_argument("--grid-training", help="the grid's trainer override (default trainer=debug, --full "
                                                "trainer.epochs=1)")
    parser.add_argument("--site", help="a dir appended to sys.path of every timed process (e.g. holding boto3)")
    args = parse_sized(parser, quick={"hacks": ["tensorboard", "compositions"], "repeat": 3,
                                      "grid_training": "trainer=debug"},
                       full={"hacks": list(WITHOUT), "repeat": 5, "grid_training": "trainer.epochs=1"})
    with warn_if_busy():
        measure(args)


def measure(args) -> None:
    installed = python("import importlib.util\nprint(*(n for n in ('boto3', 'fsspec') if importlib.util.find_spec(n)))",
                       args.site, Path.cwd()).stdout.split()
    print(f"python {sys.version.split()[0]}; installed of boto3, fsspec: {' '.join(installed) or 'neither'}; "
          f"grid {args.grid_training}")
    print(f"{'median seconds':52} {'with':>8} {'without':>8} {'ratio':>7}")
    timed(TRAIN.format(argv=DEBUG), args.site)  # warm the MNIST cache and the file cache
    if "tensorboard" in args.hacks:
        compare("import torch.utils.tensorboard", lambda: import_time(True, args.site),
                lambda: import_time(False, args.site), args.repeat)
    grid = [*GRID, args.grid_training]
    for hack, title, argv in (("tensorboard", "losslab-train trainer=debug", DEBUG),
                              ("compositions", "losslab-train -m hydra/launcher=stacked (16)", grid),
                              ("validation", "the same, its validation layer", grid)):
        if hack in args.hacks and (hack != "tensorboard" or args.full):
            with_hack, without_hack = (arm[hack] + TRAIN.format(argv=argv) for arm in (WITH, WITHOUT))
            compare(title, lambda code=with_hack: timed(code, args.site),
                    lambda code=without_hack: timed(code, args.site), args.repeat)
    if "compositions" in args.hacks:
        print_compositions_cost(grid, args.site)


if __name__ == "__main__":
    main()
