"""losslab-report's account of the test set's own variance, on hand-made predictions: 3 losses × 5 seeds, 2,000
test examples each. McNemar's p against scipy's exact binomial test on the discordant pairs; the bootstrap interval
of the accuracy difference against the normal approximation of the same mean; the ECEs against a loop over bins."""

import math

import numpy as np
import pytest
from helpers.report import write_job
from scipy import stats

from losslab.reporting.report import main
from losslab.reporting.test_set import PREDICTIONS

EXAMPLES = 2000
SKILL = {"ce": 0.90, "mbce": 0.92, "bce": 0.90}  # the chance that a run gets an example right


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Jobs with summaries and predictions: the correct examples drawn with the loss's skill, the confidence
    drawn around it."""
    sweep = tmp_path_factory.mktemp("test_set") / "sweep"
    rng = np.random.default_rng(7)
    job = 0
    for loss, skill in SKILL.items():
        for seed in range(5):
            correct = rng.random(EXAMPLES) < skill
            confidence = np.clip(rng.normal(skill, 0.05, EXAMPLES), 0.1, 1.0).astype(np.float32)
            folder = write_job(sweep, job, [f"loss={loss}", f"seed={seed}"],
                               {"status": "completed", "seed": seed, "final": {"test/acc": float(correct.mean())}})
            np.savez(folder / PREDICTIONS, correct=correct, confidence=confidence)
            job += 1
    main([str(sweep), "--metrics", "test/acc"])
    return sweep


def predictions(sweep, loss: str) -> list[tuple[np.ndarray, np.ndarray]]:
    jobs = sorted((d for d in sweep.iterdir() if d.is_dir()), key=lambda d: int(d.name))
    runs = [np.load(d / PREDICTIONS) for d in jobs]
    offset = list(SKILL).index(loss) * 5
    return [(runs[k]["correct"], runs[k]["confidence"].astype(float)) for k in range(offset, offset + 5)]


def report_row(sweep, loss: str) -> dict:
    import csv

    with open(sweep / "report.csv", newline="") as f:
        return next(r for r in csv.DictReader(f) if r["loss"] == loss and r["status"] == "aggregate")


@pytest.mark.parametrize("loss", ["mbce", "bce"])
def test_mcnemar_per_seed_and_the_bootstrap_interval_of_the_accuracy_difference(sweep, loss):
    row, own, ce = report_row(sweep, loss), predictions(sweep, loss), predictions(sweep, "ce")
    expected = []
    for (a, _), (b, _) in zip(own, ce):
        only_own, only_ce = int(np.sum(a & ~b)), int(np.sum(~a & b))
        expected.append(stats.binomtest(only_own, only_own + only_ce, 0.5).pvalue)
    assert [float(p) for p in row["mcnemar p"].split()] == pytest.approx(expected, rel=1e-9)
    per_example = np.mean([a.astype(float) - b.astype(float) for (a, _), (b, _) in zip(own, ce)], axis=0)
    half = 1.96 * per_example.std(ddof=1) / math.sqrt(EXAMPLES)
    low, high = float(row["test/acc diff boot low"]), float(row["test/acc diff boot high"])
    assert low < per_example.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)  # a percentile bootstrap of a mean of 2,000 values


def bin_ece(correct: np.ndarray, confidence: np.ndarray, edges: list[float] | None) -> float:
    """Σ_b (n_b / N) |acc_b − conf_b| by a loop: bins (e_{k−1}, e_k] of `edges`, or with edges None, 15
    equal-mass bins of the examples sorted by confidence."""
    if edges is None:
        order = np.argsort(confidence, kind="stable")
        groups = np.array_split(order, 15) if len(order) % 15 == 0 else [
            order[[i for i in range(len(order)) if i * 15 // len(order) == k]] for k in range(15)]
    else:
        groups = [np.flatnonzero((confidence > lo if k else confidence >= 0) & (confidence <= hi))
                  for k, (lo, hi) in enumerate(zip(edges, edges[1:]))]
    total = 0.0
    for members in groups:
        if len(members):
            total += len(members) / len(correct) * abs(correct[members].mean() - confidence[members].mean())
    return total


@pytest.mark.parametrize("column, edges", [("ece", [k / 15 for k in range(16)]), ("ece equal-mass", None)])
def test_each_configs_ece_and_its_bootstrap_interval(sweep, column, edges):
    for loss in SKILL:
        row = report_row(sweep, loss)
        expected = np.mean([bin_ece(c, p, edges) for c, p in predictions(sweep, loss)])
        assert float(row[column]) == pytest.approx(expected, rel=1e-9)
        assert float(row[f"{column} boot low"]) < float(row[column]) < float(row[f"{column} boot high"])
    md = (sweep / "report.md").read_text()
    assert "## The test set's variance" in md and "McNemar p per seed" in md
