"""The console entry point as a user meets it: the main job, and user mistakes."""

import json
import math
import os
import runpy
import sys
from pathlib import Path

import pytest
from helpers.commands import REPO
from helpers.tb_events import hparams, read_events

from losslab.data.mnist import MNIST_FILES


def test_a_debug_run_imports_only_what_it_uses(tmp_path, losslab):
    """trainer=debug draws no figures and reads MNIST from its cache: no matplotlib, no torchvision, no launcher
    plugins."""
    probe = (
        "import sys\n"
        "from losslab.commands.cli import train\n"
        "sys.argv = ['losslab-train', 'trainer=debug', 'trainer.progress=log']\n"
        "try:\n    train()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(' '.join(sorted({name.split('.')[0] for name, module in sys.modules.items() if module is not None})))\n"
    )
    losslab.train("trainer=debug", cwd=tmp_path)  # builds the MNIST cache, as the user's first run would
    result = losslab.run(sys.executable, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.splitlines()[-1].split())
    assert {"torch", "hydra", "tensorboard", "losslab"} <= imported  # it did train and log
    assert not imported & {"matplotlib", "torchvision", "joblib", "submitit", "optuna"}


def test_main_job_writes_a_complete_run(tmp_path, losslab):
    """The README's main job: `losslab-train` with no arguments, from any directory, offline."""
    result = losslab.train(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final"]["test/acc"] > 0.9  # softmax regression on real MNIST
    for key in ("best", "final", "wall_s", "samples_per_s", "device"):
        assert key in summary
    tags = read_events(run_dir).Tags()["scalars"]
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "lr"):
        assert tag in tags
    values = hparams(run_dir)
    assert values["model"] == "linear" and values["optimizer.lr"] == pytest.approx(0.1)
    assert (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / "checkpoints" / "best.pt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,weights/sq_norm,train/loss") and len(rows) == 1 + 5 + 1  # 5 epochs + final


@pytest.mark.parametrize("summary, expected", [
    ({"monitor": {"metric": "val/nll", "mode": "min"}, "final": {"val/nll": 0.3, "val/loss": 0.2}}, 0.3),
    ({"monitor": {"metric": "val/acc", "mode": "max"}, "final": {"val/acc": 0.9, "val/loss": 0.2}}, -0.9),
    ({"final": {"val/acc": 0.9, "val/loss": 0.2}}, 0.2),  # a run from before trainer.monitor
    ({"monitor": {"metric": "val/acc", "mode": "max"}, "final": {}}, math.inf),  # failed before a final value
])
def test_a_job_returns_its_monitored_metric_for_sweepers_to_minimise(summary, expected):
    from losslab.records.summary import objective

    assert objective(summary) == expected


def write_truncated_mnist(root: Path) -> Path:
    """A copy of MNIST whose training images file is cut short."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    source = REPO / "data" / "MNIST" / "raw"
    import gzip

    for name in MNIST_FILES:
        data = gzip.decompress((source / f"{name}.gz").read_bytes())
        (raw / name).write_bytes(data[: len(data) // 2] if name == "train-images-idx3-ubyte" else data)
    return raw / "train-images-idx3-ubyte"


@pytest.mark.parametrize(
    "case",
    ["unknown key", "wrong type", "negative lr", "bce on 10 classes", "missing data file", "truncated data file"],
)
def test_user_mistakes_get_one_sentence_and_nonzero_exit(case, tmp_path, losslab):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    args, expected = {
        "unknown key": (["optimizer.lrr=0.1"], "optimizer.lrr"),
        "wrong type": (["trainer.epochs=five"], "trainer.epochs"),
        "negative lr": (["optimizer.lr=-1"], "optimizer.lr must be > 0"),
        "bce on 10 classes": (["loss=bce"], "10 classes"),
        "missing data file": ([f"dataset.root={empty}", "dataset.download=false"], "train-images-idx3-ubyte"),
        "truncated data file": ([f"dataset.root={broken}"], "truncated"),
    }[case]
    if case == "truncated data file":
        expected = str(write_truncated_mnist(broken))
    result = losslab.train(*args, "trainer=debug", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


def test_python_m_losslab_runs_the_train_command(monkeypatch):
    """`python -m losslab` is `losslab-train`: its __main__ calls the console script's function (which the test below
    runs as a process)."""
    called = []
    monkeypatch.setattr("losslab.commands.cli.train_command", lambda: called.append("train_command"))
    runpy.run_module("losslab", run_name="__main__")
    assert called == ["train_command"]


def test_full_error_shows_the_traceback(tmp_path, losslab):
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    result = losslab.run(sys.executable, "-m", "losslab", "optimizer.lr=-1", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0 and "Traceback" in result.stderr and "optimizer.lr must be > 0" in result.stderr


@pytest.mark.parametrize(("ending", "status", "stderr"),
                         [("None", 0, ""), ("3", 3, ""), ("'a sentence'", 1, "a sentence")])
def test_the_command_ends_with_mains_status_after_flushing_logs_and_exit_handlers(ending, status, stderr, tmp_path,
                                                                                  losslab):
    """losslab-train's process (cli.train_command) ends with the exit status of its main, and log handlers and
    atexit handlers have run, so nothing written is lost."""
    probe = (
        "import atexit, logging, sys\n"
        "from pathlib import Path\n"
        "import losslab.commands.cli\n"
        "logging.basicConfig(filename='run.log', level=logging.INFO)\n"
        "atexit.register(lambda: Path('atexit.txt').write_text('ran'))\n"
        "def main():\n    logging.info('logged before the end')\n    print('printed', end='')\n"
        f"    sys.exit({ending})\n"
        "losslab.commands.cli.train = main\n"
        "losslab.commands.cli.train_command()\n"
        "print('not reached')\n"
    )
    result = losslab.run(sys.executable, "-c", probe, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (status, "printed", stderr)
    assert "logged before the end" in (tmp_path / "run.log").read_text()
    assert (tmp_path / "atexit.txt").read_text() == "ran"
