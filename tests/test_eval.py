"""losslab-eval recomputes a finished run's metrics from its config and checkpoint."""

import json

import pytest
from omegaconf import OmegaConf

from losslab.cli import compose
from losslab.errors import UserError
from losslab.evaluate import main
from losslab.train import fit


@pytest.fixture
def finished_run(tmp_path):
    cfg = compose(["dataset=synthetic", "model=lenet", "trainer.epochs=2", "trainer.progress=log"])
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml", resolve=True)  # as Hydra writes it
    return tmp_path, fit(cfg, tmp_path)


def test_eval_reproduces_the_runs_test_metrics(finished_run):
    run_dir, summary = finished_run
    result = main([str(run_dir)])
    for key in ("test/loss", "test/acc"):
        assert result[key] == pytest.approx(summary["final"][key], abs=1e-6)
    assert json.loads((run_dir / "eval" / "test.json").read_text())["test/acc"] == result["test/acc"]
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))


def test_eval_bad_input(finished_run, tmp_path_factory):
    run_dir, _ = finished_run
    with pytest.raises(UserError, match="does not exist"):
        main([str(run_dir / "nope")])
    with pytest.raises(UserError, match="no checkpoints"):
        main([str(tmp_path_factory.mktemp("empty"))])
    other = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    other.model = OmegaConf.structured({"_target_": "losslab.models.Linear", "init": "default", "init_std": 0.01})
    OmegaConf.save(other, run_dir / ".hydra" / "config.yaml")
    with pytest.raises(UserError, match="does not fit the model"):
        main([str(run_dir)])
