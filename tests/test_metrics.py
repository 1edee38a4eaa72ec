"""SplitMetrics against an independent numpy computation on fixed inputs; the metrics of a split's logits
(evaluate_logits) at extreme logits against a high-precision decimal computation of each loss's probabilities."""

import functools
import itertools
import math
from decimal import Decimal, localcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from losslab.evaluation.evaluate import evaluate_logits
from losslab.evaluation.metrics import SplitMetrics
from losslab.losses import (
    BinaryCrossEntropy,
    ConfidencePenalty,
    CrossEntropy,
    EntropyGradient,
    Focal,
    GeneralisedCrossEntropy,
    MeanAbsoluteError,
    MinEntropy,
    MixEntropy,
    MultiBinaryCrossEntropy,
    SymmetricCrossEntropy,
)

BINS = 15


def numpy_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The definitions in losslab.evaluation.metrics, written out in numpy; ECE bins are the intervals (b/15,
    (b+1)/15]."""
    n, k = probs.shape
    confidence, prediction = probs.max(1), probs.argmax(1)
    correct = prediction == y
    onehot = np.eye(k)[y]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    ece = 0.0
    for b in range(BINS):
        lower, upper = b / BINS, (b + 1) / BINS
        in_bin = (confidence > lower) & (confidence <= upper)
        if in_bin.any():
            ece += in_bin.sum() / n * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return {
        "acc": correct.mean(),
        "nll": -np.log(probs[np.arange(n), y]).mean(),
        "brier": ((probs - onehot) ** 2).sum(1).mean(),
        "entropy": -plogp.sum(1).mean(),
        "ece": ece,
    }


def update(metrics: SplitMetrics, probs: torch.Tensor, y: torch.Tensor, loss: torch.Tensor):
    """SplitMetrics.update with the log-probabilities of `probs` and their argmax as the prediction."""
    return metrics.update(probs.log(), probs.argmax(-1), y, loss)


def split_metrics(probs: np.ndarray, y: np.ndarray, *batches: int) -> dict[str, float]:
    """SplitMetrics over `probs` fed in batches of the given sizes (one batch if none), loss = 0.5 per example."""
    metrics = SplitMetrics(torch.device("cpu"))
    probs_t, y_t = torch.from_numpy(probs), torch.from_numpy(y)
    start = 0
    for size in batches or (len(y),):
        update(metrics, probs_t[start:start + size], y_t[start:start + size], torch.tensor(0.5, dtype=torch.float64))
        start += size
    assert start == len(y)
    return metrics.result()


def calibrated(confidences: list[float], per_bin: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`per_bin` examples at each confidence c (top class first, the rest shared evenly), of which exactly
    c * per_bin are correct: every bin's accuracy equals its confidence."""
    probs, y = [], []
    for c in confidences:
        row = np.full(k, (1 - c) / (k - 1))
        row[0] = c
        hits = round(c * per_bin)
        assert math.isclose(hits, c * per_bin)
        probs += [row] * per_bin
        y += [0] * hits + [1] * (per_bin - hits)
    return np.array(probs), np.array(y)


def test_a_small_case_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = np.array([0, 1])
    result = split_metrics(probs, y)
    assert result["acc"] == pytest.approx(0.5)
    assert result["nll"] == pytest.approx((-math.log(0.7) - math.log(0.3)) / 2)
    assert result["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.49 + 0.36)) / 2)
    entropies = [-sum(p * math.log(p) for p in row) for row in probs]
    assert result["entropy"] == pytest.approx(sum(entropies) / 2)
    # confidence 0.7 right (|1 - 0.7|) and 0.6 wrong (|0 - 0.6|), in different bins, half the examples each
    assert result["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.6)
    assert result["loss"] == pytest.approx(0.5)


def test_random_inputs_match_numpy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=1000)
    y = np.where(rng.random(1000) < 0.7, probs.argmax(1), rng.integers(0, 10, 1000))
    result, expected = split_metrics(probs, y), numpy_metrics(probs, y)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs, y = calibrated([0.3, 0.5, 0.65, 0.85, 0.95, 1.0], per_bin=20)
    assert numpy_metrics(probs, y)["ece"] == pytest.approx(0, abs=1e-12)
    result = split_metrics(probs, y)
    assert result["ece"] == pytest.approx(0, abs=1e-12)
    assert result["acc"] == pytest.approx(y.tolist().count(0) / len(y))


def test_over_confident_predictions():
    # 0.9 confident but 60 % right, 0.99 confident but 80 % right: ECE = (0.3 + 0.19) / 2
    probs = np.concatenate([np.tile([0.9, 0.05, 0.05], (100, 1)), np.tile([0.99, 0.005, 0.005], (100, 1))])
    y = np.array(([0] * 60 + [1] * 40) + ([0] * 80 + [2] * 20))
    result = split_metrics(probs, y)
    assert result["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.19)
    assert result["acc"] == pytest.approx(0.7)
    expected_nll = (60 * -math.log(0.9) + 40 * -math.log(0.05) + 80 * -math.log(0.99) + 20 * -math.log(0.005)) / 200
    assert result["nll"] == pytest.approx(expected_nll)
    for key, value in numpy_metrics(probs, y).items():
        assert result[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_confident_predictions_have_zero_entropy_and_their_exact_nll():
    """Log-probabilities 0 and -1000 (a probability that is 0 in float64): the NLL is the log-probability
    itself, never clamped."""
    log_probs = torch.tensor([[0.0, -1000.0, -1000.0]]).repeat(4, 1).double()
    y = torch.tensor([0, 0, 0, 1])
    metrics = SplitMetrics(torch.device("cpu"))
    metrics.update(log_probs, torch.zeros(4, dtype=torch.long), y, torch.tensor(0.0))
    result = metrics.result()
    assert result["nll"] == 1000 / 4
    assert result["entropy"] == 0
    assert result["acc"] == pytest.approx(0.75)
    assert result["brier"] == pytest.approx(2 / 4)
    assert result["ece"] == pytest.approx(0.25)  # one bin (1.0): confidence 1, accuracy 0.75


def test_the_confidence_is_that_of_the_predicted_class():
    """A prediction that is not the argmax (bce's tie at σ = 0.5 goes to class 1) is the one scored."""
    log_probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]]).log()
    metrics = SplitMetrics(torch.device("cpu"))
    confidence, hits = metrics.update(log_probs, torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1]), torch.tensor(0.0))
    torch.testing.assert_close(confidence, torch.tensor([0.5, 0.5, 0.9], dtype=torch.float64))
    assert hits.tolist() == [1, 0, 0] and metrics.result()["acc"] == pytest.approx(1 / 3)


def test_batches_add_up_to_one_update():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=100)
    y = rng.integers(0, 5, 100)
    whole = split_metrics(probs, y)
    assert split_metrics(probs, y, 37, 63) == pytest.approx(whole, rel=1e-12)
    assert split_metrics(probs, y, 1, 98, 1) == pytest.approx(whole, rel=1e-12)


def test_the_loss_is_weighted_by_batch_size():
    metrics = SplitMetrics(torch.device("cpu"))
    probs = torch.full((4, 2), 0.5)
    update(metrics, probs[:1], torch.tensor([0]), torch.tensor(1.0))
    update(metrics, probs[1:], torch.tensor([0, 1, 1]), torch.tensor(3.0))
    assert metrics.result()["loss"] == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)


def test_the_metrics_of_stacked_members_are_each_members_own():
    """Three members' (M, N, K) probabilities in two batches, each member's numbers against numpy on its slice."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=(3, 90))
    y = rng.integers(0, 5, (3, 90))
    metrics = SplitMetrics(torch.device("cpu"), members=3)
    probs_t, y_t = torch.from_numpy(probs), torch.from_numpy(y)
    for batch in (slice(0, 40), slice(40, 90)):
        confidence, hits = update(metrics, probs_t[:, batch], y_t[:, batch], torch.tensor([0.5, 1.0, 2.0]).double())
        assert confidence.shape == hits.shape == (3, batch.stop - batch.start)
    results = metrics.results()
    assert len(results) == 3
    for m, result in enumerate(results):
        expected = numpy_metrics(probs[m], y[m]) | {"loss": [0.5, 1.0, 2.0][m]}
        assert result == pytest.approx(expected, rel=1e-12)
    assert len({result["ece"] for result in results}) == 3


# ---------------------------------------------------------------- a split's logits: the NLL is exact at any logit
LOSSES = {"ce": CrossEntropy, "min_ent": MinEntropy, "mix_ent": MixEntropy, "mbce": MultiBinaryCrossEntropy,
          "bce": BinaryCrossEntropy, "entropy_gradient": EntropyGradient, "focal": Focal,
          "gce": GeneralisedCrossEntropy, "sce": SymmetricCrossEntropy, "mae": MeanAbsoluteError,
          "confidence_penalty": ConfidencePenalty}
SINGLE_LOGIT = {"bce", "entropy_gradient"}
SETTINGS = SimpleNamespace(eval_batch_size=10)


DIGITS = 1000  # where 1 - σ(1000) still holds e^-1000 to 500 digits


@functools.cache
def exp(x: float) -> Decimal:
    with localcontext(prec=DIGITS):
        return Decimal(x).exp()


def decimal_nll(name: str, row: list[float], y: int) -> float:
    """-ln p_y, each loss's probabilities p written as its docstring writes them, in DIGITS-digit decimals."""
    with localcontext(prec=DIGITS):
        if name in SINGLE_LOGIT:
            (s,) = row
            probabilities = [1 - 1 / (1 + exp(-s)), 1 / (1 + exp(-s))]
        elif name == "mbce":
            sigmoids = [1 / (1 + exp(-z)) for z in row]
            probabilities = [p / sum(sigmoids) for p in sigmoids]
        else:
            probabilities = [exp(z) / sum(map(exp, row)) for z in row]
    with localcontext(prec=30):  # the logarithm needs no more: it cancels nothing
        return float(-probabilities[y].ln())


def extreme_split(name: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of logits from {-scale, 0, scale} (3 classes; one logit for bce), with every label: confident right
    and wrong predictions, and ties."""
    width, classes = (1, 2) if name in SINGLE_LOGIT else (3, 3)
    rows = list(itertools.product((-scale, 0.0, scale), repeat=width))
    logits = torch.tensor([row for row in rows for _ in range(classes)])  # float32, as split_logits gives them
    return logits, torch.arange(classes).repeat(len(rows))


@pytest.mark.parametrize("scale", [40.0, 1e3])
@pytest.mark.parametrize("name", LOSSES)
def test_the_nll_of_extreme_logits_is_exact(name, scale):
    loss, (logits, y) = LOSSES[name](), extreme_split(name, scale)
    references = [decimal_nll(name, row, label) for row, label in zip(logits.tolist(), y.tolist())]
    for i, reference in enumerate(references):  # each example alone: right ones hold NLLs like e^-40
        (evaluation,) = evaluate_logits(loss, logits[i:i + 1], y[i:i + 1], SETTINGS)
        assert evaluation.metrics["nll"] == pytest.approx(reference, rel=1e-6, abs=1e-15), (logits[i], y[i])
    (evaluation,) = evaluate_logits(loss, logits, y, SETTINGS)
    assert evaluation.metrics["nll"] == pytest.approx(math.fsum(references) / len(y), rel=1e-6)
    if name in ("ce", "bce"):
        assert evaluation.metrics["nll"] == pytest.approx(evaluation.metrics["loss"], rel=1e-6)


@pytest.mark.parametrize("name", sorted(SINGLE_LOGIT))
def test_one_logit_predicts_class_1_from_probability_one_half(name):
    """The course's rule: ŷ = σ(s) ≥ 0.5 predicts class 1, at s = 0 too, and where float32 rounds σ(s) to 0.5."""
    logits = torch.tensor([[0.0], [-0.0], [1e-8], [-1e-8]])
    (evaluation,) = evaluate_logits(LOSSES[name](), logits, torch.tensor([1, 1, 1, 0]), SETTINGS)
    assert evaluation.correct.tolist() == [True] * 4 and evaluation.metrics["acc"] == 1
    torch.testing.assert_close(evaluation.confidence, torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
