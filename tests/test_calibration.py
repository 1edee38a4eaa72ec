"""Temperature scaling (losslab.evaluation.calibration): the fit recovers a known temperature, minimises the exact NLL
(against scipy's minimum of a float64 one), leaves every prediction as it was, and `losslab-eval <run dir>
--calibrate` writes eval/calibration.json, which losslab-report reads."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers.commands import summary
from omegaconf import OmegaConf
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from losslab.evaluation.calibration import T_MAX, T_MIN, calibrate, fit_temperature, metrics_of
from losslab.losses import BinaryCrossEntropy, CrossEntropy, MinEntropy, MultiBinaryCrossEntropy
from losslab.records.run_dir import CALIBRATION
from losslab.reporting.report import write_report

N, K = 20_000, 10  # the fitted T is within 1 % of the true one at this size (its spread shrinks as 1/√N)


def labels_drawn_from(loss, z_true: torch.Tensor, seed: int) -> torch.Tensor:
    """One label per row drawn from the loss's own probabilities of `z_true`: the model is calibrated at T = 1."""
    return torch.multinomial(loss.probs(z_true), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def true_logits(loss, seed: int) -> torch.Tensor:
    outputs = loss.head_size(2 if loss.binary_only else K)
    z = 2 * torch.randn(N, outputs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z - 2 if isinstance(loss, MultiBinaryCrossEntropy) else z  # mbce: mostly small sigmoids, as it trains


@pytest.mark.parametrize("loss", [CrossEntropy(), MinEntropy(), BinaryCrossEntropy(), MultiBinaryCrossEntropy()],
                         ids=["ce", "min_ent", "bce", "mbce"])
@pytest.mark.parametrize("t_true", [2.5, 0.6])
def test_the_fit_recovers_a_known_temperature_and_lowers_the_ece(loss, t_true):
    z_true = true_logits(loss, seed=0)
    y = labels_drawn_from(loss, z_true, seed=1)
    logits = z_true * t_true  # over-confident for T > 1: dividing by the fitted T must give z_true back
    temperature = fit_temperature(logits, y, loss)
    assert temperature == pytest.approx(t_true, rel=0.02)
    before, after = metrics_of(loss, logits, y), metrics_of(loss, logits, y, temperature)
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]
    assert after["acc"] == before["acc"]


def test_calibrate_keeps_every_prediction_and_lowers_the_val_nll():
    loss = CrossEntropy()
    z_true = true_logits(loss, seed=2)
    y = labels_drawn_from(loss, z_true, seed=3)
    logits = (3 * z_true).float()
    half = N // 2
    result = calibrate((logits[:half], y[:half]), (logits[half:], y[half:]), loss)
    temperature = result["calibration/temperature"]
    assert temperature == pytest.approx(3, rel=0.03)
    scaled = loss.log_probs(logits[half:] / temperature)
    assert torch.equal(scaled.argmax(-1), logits[half:].argmax(-1))
    assert result["calibrated/test/acc"] == result["test/acc"]
    assert result["calibrated/val/nll"] < result["val/nll"]
    for metric in ("nll", "ece", "brier"):
        assert result[f"calibrated/test/{metric}"] < result[f"test/{metric}"], metric
    assert result["test/nll"] == pytest.approx(metrics_of(loss, logits[half:], y[half:])["nll"], rel=1e-12)


def test_the_temperature_stays_within_its_bounds_on_a_split_the_model_separates():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(50, 1)
    y = z.argmax(-1)
    assert T_MIN <= fit_temperature(z, y, CrossEntropy()) < 1 <= T_MAX


def test_the_fit_minimises_the_exact_nll_of_confident_mistakes():
    """One mistake at logit margin 40 (NLL 40/T, past any probability floor: 1e-12 is margin 27.6) among 100
    examples at margin 3, 5 of them wrong: the fitted T is where scipy finds the minimum of the float64 NLL
    -mean ln softmax(z/T)_y (about 2.0; a floored NLL has its minimum near 1.0)."""
    z = torch.tensor([[3.0, 0.0]] * 100 + [[40.0, 0.0]])
    y = torch.tensor([0] * 95 + [1] * 6)

    def reference_nll(log_t: float) -> float:
        log_p = log_softmax(z.double().numpy() / np.exp(log_t), axis=1)
        return -log_p[np.arange(len(y)), y.numpy()].mean()

    reference = minimize_scalar(reference_nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                                options={"xatol": 1e-9})
    assert fit_temperature(z, y, CrossEntropy()) == pytest.approx(math.exp(reference.x), rel=1e-4)
    assert math.exp(reference.x) == pytest.approx(2.0, abs=0.1)
    assert metrics_of(CrossEntropy(), z, y)["nll"] == pytest.approx(reference_nll(0.0), rel=1e-12)


def test_the_report_reads_the_calibrated_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (loss, temperature) in enumerate((("ce", 1.5), ("ce", 2.5), ("mbce", 0.8))):
        job_dir = sweep / f"{job}_loss={loss},seed={job}"
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n- seed={job}\n")
        final = {"val/acc": 0.9, "test/acc": 0.9, "test/nll": 0.5}
        (job_dir / "summary.json").write_text(json.dumps({"status": "completed", "seed": job, "final": final}))
        calibration = {"calibration/temperature": temperature, "calibrated/test/nll": 0.1 * temperature,
                       "calibrated/test/ece": 0.01, "calibrated/test/brier": 0.2, "test/nll": 99.0,
                       "calibration/probs": "softmax(z/T)"}
        (job_dir / CALIBRATION).parent.mkdir()
        (job_dir / CALIBRATION).write_text(json.dumps(calibration))
    metrics = ["calibrated/test/nll", "calibrated/test/ece", "calibrated/test/brier", "calibration/temperature",
               "test/nll"]
    rows = {row["loss"]: row for row in write_report(sweep, metrics).rows}
    assert rows["ce"]["n"] == 2 and rows["ce"]["calibration/temperature mean"] == pytest.approx(2.0)
    assert rows["ce"]["calibrated/test/nll mean"] == pytest.approx(0.2)
    assert rows["mbce"]["calibrated/test/brier mean"] == 0.2
    assert rows["ce"]["test/nll mean"] == 0.5  # the run's own metrics stay summary.json's
    assert rows["mbce"]["best"]  # the lowest calibrated/test/nll


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def trained(tmp_path_factory, losslab):
    """A tiny finished run, trained as a user trains one."""
    home = tmp_path_factory.mktemp("home")
    done = losslab.run("losslab-train", "dataset=synthetic", "dataset.noise=150", "model=linear", "trainer.epochs=1",
                       "trainer.progress=log", "trainer.figures=false", "hydra.run.dir=run", cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return home / "run"


def finite_numbers(values: dict) -> dict:
    return {key: value for key, value in values.items() if isinstance(value, float) and math.isfinite(value)}


def test_calibrate_command_writes_the_temperature_and_the_metrics_before_and_after(trained, losslab):
    done = losslab.run("losslab-eval", "run", "--calibrate", cwd=trained.parent)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads((trained / CALIBRATION).read_text())
    numbers = [key for key in result if key not in ("calibration/probs", "checkpoint")]
    assert len(numbers) == 13 and set(numbers) <= set(finite_numbers(result))
    assert result["calibration/probs"] == "softmax(z/T)"
    assert result["calibrated/test/acc"] == result["test/acc"]
    assert result["calibrated/val/nll"] <= result["val/nll"]
    final = summary(trained)["final"]
    for key in ("val/nll", "test/acc", "test/nll", "test/brier", "test/ece"):
        assert result[key] == pytest.approx(final[key], rel=1e-6, abs=1e-6), key
    assert f"temperature {result['calibration/temperature']:.4g}" in done.stdout


@pytest.mark.parametrize("spoil, says", [
    ("val_from=test", "dataset.val_from=test"),
    ("no checkpoint", "has no checkpoints/last.pt"),
])
def test_calibrate_bad_input_is_one_sentence(trained, tmp_path, spoil, says, losslab):
    copy = shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
    if spoil == "val_from=test":
        cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
        cfg.dataset.val_from = "test"
        OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    else:
        shutil.rmtree(copy / "checkpoints")
    done = losslab.run("losslab-eval", "run", "--calibrate", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losslab-eval: error: ") and says in lines[0], done.stderr
    assert not (copy / CALIBRATION).exists()
