"""What the seeds leave out: the test set is one sample of images, fixed across seeds, so a difference between two
configs also carries the test set's sampling error. From each run's predictions_test.npz (`correct` and
`confidence` per test example, written by its final evaluation):

- McNemar's exact test (statsmodels) for each seed's pair of runs: do the two models err on different images more
  often than chance would have them?
- a bootstrap over test examples (scipy, percentile, 2,000 resamples, a fixed seed) of the accuracy difference,
  averaged over the seed pairs: the interval the test set's sampling alone puts on the difference;
- each config's ECE with 15 equal-width bins (the metric's own) and with 15 equal-mass bins (adaptive: every bin
  holds N/15 examples, so no bin is nearly empty), mean over seeds, each with its bootstrap interval (the bins
  are the sample's; a resample weighs the examples by how often it drew them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from losslab.reporting.sweep_data import Config

PREDICTIONS = "predictions_test.npz"
RESAMPLES = 2000
BINS = 15
CONFIDENCE = 0.95


@dataclass
class TestSetComparison:
    """A config against its reference on the test examples, over `seeds` (pairs with predictions of one length):
    McNemar's p per seed, and the accuracy difference (mean over the pairs) with its bootstrap interval."""

    seeds: list[str]
    mcnemar_p: list[float]
    acc_diff: float
    acc_low: float
    acc_high: float


Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # a config's (correct, confidence) by seed


def predictions(sweep_dir: Path, config: Config) -> Predictions:
    """The config's (correct, confidence) per test example, by seed, of the runs that wrote predictions."""
    found = {}
    for run in config.runs:
        path = Path(sweep_dir) / run.job / PREDICTIONS
        if run.seed is None or not path.is_file():
            continue
        with np.load(path) as arrays:
            found.setdefault(str(run.seed), (arrays["correct"].astype(bool), arrays["confidence"].astype(float)))
    return found


def compare_on_test_set(own: Predictions, theirs: Predictions) -> TestSetComparison | None:
    """A config's predictions `own` against its reference's `theirs` on the test examples (TestSetComparison);
    None without a seed pair whose runs both wrote predictions of one length."""
    seeds = [seed for seed in own if seed in theirs and len(own[seed][0]) == len(theirs[seed][0])]
    if not seeds:
        return None
    from statsmodels.stats.contingency_tables import mcnemar

    p_values = []
    for seed in seeds:
        a, b = own[seed][0], theirs[seed][0]
        table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
        p_values.append(float(mcnemar(table, exact=True).pvalue))
    per_example = np.mean([own[s][0].astype(float) - theirs[s][0].astype(float) for s in seeds], axis=0)
    low, high = bootstrap_interval(per_example, lambda sample, axis: sample.mean(axis=axis))
    return TestSetComparison(seeds, p_values, float(per_example.mean()), low, high)


def bootstrap_interval(values: np.ndarray, statistic) -> tuple[float, float]:
    """scipy.stats.bootstrap's percentile interval of `statistic` over `values` resampled (vectorized along
    `axis`); the ends equal when every resample gives one value."""
    from scipy.stats import bootstrap

    result = bootstrap((values,), statistic, n_resamples=RESAMPLES, method="percentile", vectorized=True,
                       batch=100, confidence_level=CONFIDENCE, rng=np.random.default_rng(0))
    low, high = result.confidence_interval
    return (float(low), float(high)) if math.isfinite(low) else (float(statistic(values, -1)),) * 2


def bins_of(confidence: np.ndarray, equal_mass: bool) -> np.ndarray:
    """Each example's bin among 15: equal-width ((0, 1/15], …, as losslab.evaluation.metrics bins them), or
    equal-mass (by its rank in confidence: the k-th of N in bin ⌊15k/N⌋). The bins are the sample's: a
    bootstrap resample keeps each example in its bin."""
    if not equal_mass:
        return np.clip(np.ceil(confidence * BINS).astype(int), 1, BINS) - 1
    ranks = np.empty(len(confidence), dtype=int)
    ranks[np.argsort(confidence, kind="stable")] = np.arange(len(confidence))
    return ranks * BINS // len(confidence)


def ece(correct: np.ndarray, confidence: np.ndarray, bins: np.ndarray, weights: np.ndarray | None = None):
    """Σ_b (n_b / N) |acc_b − conf_b| = Σ_b |Σ_{i in b} w_i (correct_i − confidence_i)| / Σ_i w_i, with each
    example's `bins` and its `weights` (rows of counts: one bootstrap resample each; None: each example once)."""
    one_hot = np.zeros((len(correct), BINS))
    one_hot[np.arange(len(correct)), bins] = correct - confidence
    if weights is None:
        return float(np.abs(one_hot.sum(0)).sum() / len(correct))
    return np.abs(weights @ one_hot).sum(-1) / weights.sum(-1)


def ece_with_interval(found: Predictions, equal_mass: bool) -> tuple[float, float, float] | None:
    """A config's ECE from its predictions `found` (mean over its seeds' runs) and its bootstrap interval over
    test examples, the same examples drawn for every seed; None without predictions of one length."""
    runs = list(found.values())
    if not runs or len({len(correct) for correct, _ in runs}) > 1:
        return None
    n = len(runs[0][0])
    binned = [(correct.astype(float), confidence, bins_of(confidence, equal_mass)) for correct, confidence in runs]

    def mean_ece(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = indices.reshape(-1, n).astype(int)  # one resample of example indices a row
        offsets = np.arange(len(rows))[:, None] * n
        weights = np.bincount((offsets + rows).ravel(), minlength=rows.size).reshape(rows.shape).astype(float)
        return np.mean([ece(*run, weights) for run in binned], axis=0).reshape(indices.shape[:-1])

    value = float(np.mean([ece(*run) for run in binned]))
    low, high = bootstrap_interval(np.arange(n), mean_ece)
    return value, low, high


TEST_SET_COLUMNS = ("mcnemar p", "test/acc diff boot low", "test/acc diff boot high", "ece", "ece boot low",
                    "ece boot high", "ece equal-mass", "ece equal-mass boot low", "ece equal-mass boot high")


def add_test_set(rows: list[dict], configs: list[Config], against: list[Config | None],
                 sweep_dirs: list[Path]) -> None:
    """Adds to each config's row its TEST_SET_COLUMNS: McNemar's p per seed pair and the bootstrap interval of
    the test accuracy difference against its reference config `against` (None: not compared), and its two ECEs
    with their intervals; None where the runs wrote no predictions. `sweep_dirs`: the sweep dir of each config's
    runs (one sweep, or a study table's several)."""
    found = [predictions(sweep_dir, config) for sweep_dir, config in zip(sweep_dirs, configs)]  # read once each
    of = {id(config): runs for config, runs in zip(configs, found)}
    for row, runs, reference in zip(rows, found, against):
        row.update(dict.fromkeys(TEST_SET_COLUMNS))
        compared = compare_on_test_set(runs, of[id(reference)]) if reference else None
        if compared:
            row.update({"mcnemar p": compared.mcnemar_p, "test/acc diff boot low": compared.acc_low,
                        "test/acc diff boot high": compared.acc_high})
        for name, equal_mass in (("ece", False), ("ece equal-mass", True)):
            ece_found = ece_with_interval(runs, equal_mass)
            if ece_found:
                row[name], row[f"{name} boot low"], row[f"{name} boot high"] = ece_found
