"""losslab-eval recomputes a finished run's metrics and figures from its config and checkpoint."""

import json
import shutil
import sys

import pytest
from omegaconf import OmegaConf

from losslab.commands.cli import compose
from losslab.commands.cli import evaluate as eval_cli
from losslab.commands.evaluate import main
from losslab.errors import UserError
from losslab.records.lock import exclusive
from losslab.training.loop import fit

METRICS = ("loss", "acc", "nll", "brier", "ece", "entropy")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run with early stopping on (so its test metrics come from best.pt) and a loss with learned
    coefficients and bases (so its test loss needs the loss's weights too)."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose(["dataset=synthetic", "dataset.noise=150", "model=linear", "loss=min_ent", "loss.coeffs=learnable",
                   "loss.bases=learnable", "loss.param_lr=0.1", "trainer.epochs=2", "trainer.eval_every=0.5",
                   "trainer.patience=20", "trainer.progress=log"])
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)  # as Hydra writes it
    return run_dir, fit(cfg, run_dir)


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run to spoil."""
    return shutil.copytree(finished_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("eval"))


def training_results(run_dir) -> dict:
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "eval" not in p.parts}


def test_eval_reproduces_all_the_runs_test_metrics(finished_run):
    run_dir, summary = finished_run
    before = training_results(run_dir)
    assert summary["final"]["loss/beta1"] != pytest.approx(0.839, abs=1e-3)  # the loss's weights were learned
    result = main([str(run_dir)])
    assert result["checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    for key in (f"test/{m}" for m in METRICS):
        assert result[key] == pytest.approx(summary["final"][key], abs=1e-6), key
    assert json.loads((run_dir / "eval" / "test.json").read_text()) == result
    figures = sorted(p.name for p in (run_dir / "eval" / "figures").iterdir())
    assert figures == ["confidence_histogram_test.png", "curves.png", "reliability_test.png", "weight_templates.png"]
    assert training_results(run_dir) == before


def test_eval_on_another_split_and_checkpoint(finished_run):
    run_dir, summary = finished_run
    result = main([str(run_dir / "checkpoints" / "best.pt"), "split=val"])
    for key in (f"val/{m}" for m in METRICS):
        assert result[key] == pytest.approx(summary["final"][key], abs=1e-6), key
    assert (run_dir / "eval" / "val.json").exists()
    assert (run_dir / "eval" / "figures" / "reliability_val.png").exists()


def test_eval_bad_input(finished_run, run_copy, tmp_path_factory):
    run_dir, _ = finished_run
    with pytest.raises(UserError, match="does not exist"):
        main([str(run_dir / "nope")])
    with pytest.raises(UserError, match="no checkpoints/last.pt"):
        main([str(tmp_path_factory.mktemp("empty"))])
    with pytest.raises(UserError, match="cannot be read: it is damaged or cut short") as refused:
        main([str(run_dir / "metrics.csv")])
    assert "weights_only" not in str(refused.value)
    with exclusive(run_copy):  # as the process training there holds it
        with pytest.raises(UserError, match="is being trained by another process"):
            main([str(run_copy)])
    with pytest.raises(UserError, match="split=bogus is not one of"):
        main([str(run_dir), "split=bogus"])
    with pytest.raises(UserError, match="takes split=... and device=..., not epochs"):
        main([str(run_dir), "epochs=3"])

    other = OmegaConf.load(run_copy / ".hydra" / "config.yaml")
    other.model = OmegaConf.create({"_target_": "losslab.models.FNN", "hidden": [8], "activation": "relu",
                                    "dropout": 0.0, "init": "default", "init_std": 0.01})
    OmegaConf.save(other, run_copy / ".hydra" / "config.yaml")
    with pytest.raises(UserError, match="does not fit the model and loss"):
        main([str(run_copy)])

    shutil.rmtree(run_copy / ".hydra")
    with pytest.raises(UserError, match="no .hydra/config.yaml"):
        main([str(run_copy / "checkpoints" / "last.pt")])


def test_eval_cli_prints_one_sentence_and_exits_non_zero(finished_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["losslab-eval", str(finished_run[0] / "nope")])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("losslab-eval: error: ") and "does not exist" in err
