"""The numbers of a sweep report: mean, spread and interval over seeds, the best row, and each config's paired
comparison with its reference config."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from losslab.errors import UserError
from losslab.reporting.sweep_data import Config, RunResult, lower_is_better, to_float

CONFIDENCE = 0.95  # of the intervals: the mean's, and the mean paired difference's


COMPARED = ("pairs", "diff", "diff low", "diff high", "p", "vs reference")  # a row's comparison, per metric
ALPHA = 0.05  # a paired comparison with p below it reads "better than" or "worse than"


DEFAULT_REFERENCE = {"loss": "ce"}  # where the sweep varies the loss and ce is one of its values


@dataclass
class Paired:
    """A metric of a config against its reference config over the seeds both have: `pairs` of them, the mean of
    the differences config − reference, its 95 % interval (low, high) and the paired t-test's two-sided p. Only
    the mean for one pair or a value not finite; low = high = mean and no p when every difference is the same."""

    pairs: int
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std None for one value, nan when a value is not finite."""
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    std = statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan
    return statistics.fmean(values), std


def mean_interval(values: list[float]) -> tuple[float | None, float | None]:
    """The 95 % confidence interval of the mean, mean ± t(0.975, n − 1)·s/√n (Student t, what scipy's
    ttest_1samp gives); (None, None) for fewer than two values, (nan, nan) when a value is not finite, the mean
    twice when all values are equal."""
    if len(values) < 2:
        return None, None
    if not all(map(math.isfinite, values)):
        return math.nan, math.nan
    if min(values) == max(values):
        return values[0], values[0]
    return t_interval(statistics.fmean(values), statistics.stdev(values), len(values))


def t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    """mean ± t(0.975, n − 1)·std/√n, the Student t quantile from scipy.special (scipy.stats gives the same
    numbers, but its import is most of a small report's cost)."""
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2)) * std / math.sqrt(n)
    return mean - half, mean + half


def config_row(config: Config, metrics: list[str]) -> dict:
    row = {**config.values, "n": len(config.runs)}
    counts = {}
    for metric in metrics:
        values = [v for run in config.runs if (v := run.value(metric)) is not None]
        row[f"{metric} mean"], row[f"{metric} std"] = mean_std(values)
        row[f"{metric} ci low"], row[f"{metric} ci high"] = mean_interval(values)
        counts[metric] = len(values)
    return {**row, "best": False, "seeds": [run.seed for run in config.runs],
            "jobs": [run.job for run in config.runs], "counts": counts}


def mark_best(rows: list[dict], metric: str, mode: str) -> None:
    """Marks the row with the lowest (mode "min") or highest ("max") finite mean of `metric` (the first of equals),
    if any row has one."""
    sign = -1 if mode == "min" else 1
    scored = [row for row in rows if row[f"{metric} mean"] is not None and not math.isnan(row[f"{metric} mean"])]
    if scored:
        max(scored, key=lambda row: sign * row[f"{metric} mean"])["best"] = True


def choose_reference(configs: list[Config], keys: list[str],
                     given: dict[str, str | None] | None) -> dict[str, str | None]:
    """The reference values: `given` (swept keys only, matched by some config), else loss=ce where the sweep
    varies the loss and ce is one of its values, else none ({}: no comparison)."""
    if given is None:
        default = "loss" in keys and any(matches(config.values, DEFAULT_REFERENCE) for config in configs)
        return dict(DEFAULT_REFERENCE) if default else {}
    unswept = [key for key in given if key not in keys]
    if unswept:
        raise UserError(f"--reference names {', '.join(unswept)}, which the sweep does not vary; choose from "
                        f"{', '.join(keys) or 'none (every job has the same overrides but the seed)'}.")
    if not any(matches(config.values, given) for config in configs):
        seen = "; ".join(f"{key}: {', '.join(sorted({str(c.values[key]) for c in configs}))}" for key in given)
        raise UserError(f"No config of the sweep has {reference_name(given)}; its values are {seen}.")
    return dict(given)


def matches(values: dict[str, str | None], reference: dict[str, str | None]) -> bool:
    """Whether `values` has the reference values: equal as text or as numbers (0 and 0.0); a reference value of
    None matches a config that does not set the key."""
    def same(value: str | None, wanted: str | None) -> bool:
        if value is None or wanted is None:
            return value is wanted
        return value == wanted or to_float(value) is not None and to_float(value) == to_float(wanted)

    return all(same(values.get(key), wanted) for key, wanted in reference.items())


def reference_name(reference: dict[str, str | None]) -> str:
    """The reference values in words: the loss's name alone where the loss is the only key (ce), else
    key=value pairs."""
    if list(reference) == ["loss"] and reference["loss"] is not None:
        return reference["loss"]
    return " ".join(f"{key} unset" if value is None else f"{key}={value}" for key, value in reference.items())


def reference_config(config: Config, configs: list[Config], reference: dict[str, str | None]) -> Config | None:
    """The config `config` is compared with: of those that have the reference values, the one sharing most of
    its other swept values (in a loss × l2 grid, ce at the same l2), the first in job order of equals; None for a
    config that has the reference values itself, or without reference values."""
    if not reference or matches(config.values, reference):
        return None
    candidates = [other for other in configs if matches(other.values, reference)]
    others = [key for key in config.values if key not in reference]
    return max(candidates, key=lambda other: sum(other.values[key] == config.values[key] for key in others))


def by_seed(config: Config, metric: str) -> dict[str, float]:
    """`metric` of the config's runs by seed (as text); runs without a seed or without the metric are left out."""
    values: dict[str, float] = {}
    for run in config.runs:
        value = run.value(metric)
        if run.seed is not None and value is not None:
            values.setdefault(str(run.seed), value)
    return values


def paired_comparison(config: Config, reference: Config, metric: str) -> Paired:
    """`metric` of `config` against `reference` over the seeds both have, by the paired t-test (as scipy's
    ttest_rel computes it): the differences d_i = config_i − reference_i of seed i, their mean d̄, its 95 % interval
    d̄ ± t(0.975, n − 1)·s_d/√n, and the two-sided p of t = d̄/(s_d/√n) with n − 1 degrees of freedom.

    Paired, because a seed fixes the initialisation and the data order in every config: much of a run's luck is
    its seed's, shared by both runs of a pair, and the differences are free of it, where an unpaired test would
    count it as noise twice. A t-test, because a rank test cannot reject at the seed counts a sweep has:
    Wilcoxon's signed-rank test has no two-sided p below 0.05 for n ≤ 5 pairs (at best 2/2⁵ = 0.0625), however
    large and consistent the differences. The t-test assumes the differences roughly normal."""
    own, theirs = by_seed(config, metric), by_seed(reference, metric)
    seeds = [seed for seed in own if seed in theirs]
    diffs = [own[seed] - theirs[seed] for seed in seeds]
    if len(diffs) < 2 or not all(map(math.isfinite, diffs)):
        return Paired(len(diffs), statistics.fmean(diffs) if diffs else None)
    mean = statistics.fmean(diffs)
    if min(diffs) == max(diffs):  # no spread: t is 0/0 or ±∞, no test
        return Paired(len(diffs), mean, mean, mean)
    from scipy.special import stdtr

    n, std = len(diffs), statistics.stdev(diffs)
    t = mean / (std / math.sqrt(n))
    return Paired(n, mean, *t_interval(mean, std, n), float(2 * stdtr(n - 1, -abs(t))))


def verdict(paired: Paired, metric: str, name: str) -> str:
    """The comparison in words, at α = 0.05: "better than" or "worse than" `name` (by the sign of the difference
    and whether lower is better for the metric) when p < α, else "not distinguishable from" (which is no proof of
    equality); "–" without a test (fewer than two pairs, a value not finite)."""
    if paired.pairs < 2 or paired.diff is None or not math.isfinite(paired.diff):
        return "–"
    direction = "worse" if (paired.diff > 0) == lower_is_better(metric) else "better"
    if paired.p is None:
        if paired.diff == 0:
            return f"not distinguishable from {name} (identical in all {paired.pairs} pairs)"
        return f"{direction} than {name} by the same amount in all {paired.pairs} pairs (no spread: no test)"
    if paired.p >= ALPHA:
        return f"not distinguishable from {name} ({p_text(paired.p)})"
    return f"{direction} than {name} ({p_text(paired.p)})"


def p_text(p: float) -> str:
    """p to two significant digits (more where two would round it onto α), or "p < 0.001"."""
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    return f"p = {p:.4g}" if float(text) == ALPHA and p != ALPHA else f"p = {text}"


def add_comparisons(rows: list[dict], configs: list[Config], metrics: list[str],
                    reference: dict[str, str | None], name: str | None = None) -> None:
    """Adds to each config's row its comparison with its reference config (`reference_config`), per metric; the
    words name the reference `name` (default: `reference_name`)."""
    name = name or reference_name(reference)
    for row, config in zip(rows, configs):
        against = reference_config(config, configs, reference)
        row["reference"] = against.label() if against else None
        for metric in metrics:
            row.update({f"{metric} {column}": None for column in COMPARED})
            if against:
                paired = paired_comparison(config, against, metric)
                values = (paired.pairs, paired.diff, paired.low, paired.high, paired.p, verdict(paired, metric, name))
                row.update({f"{metric} {column}": value for column, value in zip(COMPARED, values)})


def run_row(run: RunResult) -> dict:
    overrides = " ".join(f"{k}={v}" for k, v in (run.overrides or {}).items())
    return {"job": run.job, "status": run.status, "overrides": overrides, "note": run.note,
            "values": run.overrides or {}, "seed": run.seed}
