"""What the commands say: --help of every entry point, mistakes as one sentence (with a did-you-mean, the config
choice's name, and in the failed run's cli.log), and log lines with rounded metrics."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from losslab.config import CONF_DIR, REPO_ROOT


def test_train_help_lists_the_groups_options_and_no_internal_schema(tmp_path, losslab):
    result = losslab.run("losslab-train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("losslab-train: train one config")
    assert "_schema" not in text and "powered by Hydra" not in text
    for group in ("dataset", "model", "loss", "optimizer", "scheduler", "trainer", "experiment", "sweep"):
        options = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))
        assert f"\n{group}: {', '.join(options)}\n" in text
    assert "\ntrainer:\n  epochs: 5\n" in text  # the composed config follows
    assert "losslab-train --hydra-help" in text


@pytest.mark.parametrize("command", [["losslab-report"], ["losslab-eval"], ["losslab-gradcheck"],
                                     [sys.executable, str(REPO_ROOT / "scripts" / "reproduce.py")]])
def test_argparse_help_describes_the_command_in_whole_sentences(command, tmp_path, losslab):
    result = losslab.run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    usage, description = result.stdout.split("\n\n")[:2]
    assert usage.startswith("usage: ")
    assert description.rstrip().endswith("."), description  # not cut after the docstring's first line
    assert "_schema" not in result.stdout


def test_a_mistyped_key_gets_a_did_you_mean(tmp_path, losslab):
    result = losslab.run("losslab-train", "trainer.epoch=3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "did you mean trainer.epochs?" in result.stderr
    assert "did you mean" not in losslab.run("losslab-train", "trainer.zzzzzz=3", cwd=tmp_path).stderr  # nothing close


def test_the_binary_loss_error_names_the_config_choice(tmp_path, losslab):
    result = losslab.run("losslab-train", "loss=bce", "trainer=debug", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("losslab-train: error: loss=bce needs a binary task but dataset mnist has 10 classes; "
                             "use loss=ce or loss=mbce, or a binary dataset (mnist_even_odd, mnist_2v3).\n")


def test_a_refused_run_says_why_once_and_leaves_no_run_dir(tmp_path, losslab):
    result = losslab.run("losslab-train", "optimizer.lr=-1", "trainer=debug", cwd=tmp_path)
    assert result.returncode == 2
    sentence = result.stderr.removeprefix("losslab-train: error: ").strip()
    assert "optimizer.lr must be > 0" in sentence
    assert sentence not in result.stdout  # said once on the screen
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]


def test_a_models_own_refusal_is_one_sentence_without_hydras_lines(tmp_path, losslab):
    result = losslab.run("losslab-train", "model=dual_linear", "trainer=debug", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("losslab-train: error: model=dual_linear has one output (binary tasks) but the loss asks "
                             "for 10; use loss=entropy_gradient or loss=bce on mnist_even_odd or mnist_2v3.\n")


def test_the_last_log_line_rounds_the_test_accuracy(tmp_path, losslab):
    result = losslab.run("losslab-train", "trainer=debug", "trainer.progress=log", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    accuracy = json.loads((run_dir / "summary.json").read_text())["final"]["test/acc"]
    last = result.stdout.strip().splitlines()[-1]
    assert re.search(r"completed after 1 steps: test/acc (\S+) ", last).group(1) == f"{accuracy:.4g}"


def test_hydras_own_slurm_launcher_is_refused_with_a_pointer_to_losslabs(tmp_path, losslab):
    result = losslab.run("losslab-train", "-m", "hydra/launcher=submitit_slurm", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "use hydra/launcher=slurm, which takes the same hydra.launcher keys" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_slurm_launcher_without_srun_says_so_in_one_sentence(tmp_path, losslab):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # losslab-train and python, no Slurm commands
    result = losslab.run("losslab-train", "-m", "hydra/launcher=slurm", "seed=0,1", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "submits to a Slurm cluster, but this machine has no `srun` on its PATH" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_the_stacked_launchers_slurm_executor_without_srun_says_so_in_one_sentence(tmp_path, losslab):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # losslab-train and python, no Slurm commands
    result = losslab.run("losslab-train", "-m", "hydra/launcher=stacked", "hydra.launcher.executor=submitit_slurm",
                         "seed=0,1", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "executor=submitit_slurm submits to a Slurm cluster, but this machine has no `srun` on its PATH" \
        in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("executor", ["submitit_local", "submitit_slurm"])
def test_the_stacked_launchers_submitit_executors_without_the_sweep_extra_say_so_in_one_sentence(executor, tmp_path,
                                                                                                   losslab):
    missing = tmp_path / "without_submitit" / "submitit"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError(\"No module named 'submitit'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(missing.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    result = losslab.run("losslab-train", "-m", "hydra/launcher=stacked", f"hydra.launcher.executor={executor}",
                         "seed=0,1", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"losslab-train: error: hydra.launcher.executor={executor} needs submitit and Hydra's "
                             "submitit launcher, which the `sweep` extra installs (pip install -e \".[sweep]\"); "
                             "without them use hydra.launcher.executor=in_process.\n")
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_executor_of_the_stacked_launcher_is_one_sentence_with_the_choices(tmp_path, losslab):
    result = losslab.run("losslab-train", "-m", "hydra/launcher=stacked", "hydra.launcher.executor=slurm", "seed=0,1",
                         cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Invalid value 'slurm', expected one of [in_process, submitit_local, submitit_slurm]" in result.stderr
    assert not (tmp_path / "outputs").exists()
