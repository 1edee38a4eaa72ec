"""The numbers of a sweep report: mean, spread and interval over seeds, the best row, and each config's paired
comparison with its reference config: the paired t-test, its p corrected for the report's number of comparisons
(Holm, per metric), the equivalence test (TOST) against a stated margin, and the power the seeds give (the smallest
difference detectable at 80 % power; the seeds an effect needs). statsmodels computes the correction, TOST and
power."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from losslab.errors import UserError
from losslab.reporting.sweep_data import Config, RunResult, lower_is_better, to_float

CONFIDENCE = 0.95  # of the intervals: the mean's, and the mean paired difference's


COMPARED = ("pairs", "diff", "diff low", "diff high", "p", "p corrected", "tost p", "mde", "seeds needed",
            "vs reference")  # a row's comparison, per metric
ALPHA = 0.05  # a paired comparison with corrected p below it reads "better than" or "worse than"
POWER = 0.8  # of the minimum detectable difference and of the seeds an effect needs
CORRECTIONS = {"holm": "Holm", "fdr_bh": "Benjamini–Hochberg"}  # statsmodels' multipletests methods offered


DEFAULT_REFERENCE = {"loss": "ce"}  # where the sweep varies the loss and ce is one of its values


@dataclass
class Paired:
    """A metric of a config against its reference config over the seeds both have: `pairs` of them, the mean of
    the differences config − reference, its 95 % interval (low, high) and the paired t-test's two-sided p. Only
    the mean for one pair or a value not finite; low = high = mean and no p when every difference is the same.
    With a test: `p_corrected` (set by `correct`), `tost_p` (given an equivalence margin: TOST's p that the true
    difference lies within ±margin), `mde` (the smallest |difference| the pairs detect at 80 % power and α, from
    the differences' spread) and `seeds_needed` (given an effect: the pairs that detect it at 80 % power)."""

    pairs: int
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None
    p_corrected: float | None = None
    tost_p: float | None = None
    margin: float | None = None
    mde: float | None = None
    seeds_needed: int | None = None


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
    row = {**config.values, "n": len(config.runs), "diverged": config.diverged}
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
    config that has the reference values itself, without reference values, or where no config has them."""
    if not reference or matches(config.values, reference):
        return None
    candidates = [other for other in configs if matches(other.values, reference)]
    if not candidates:  # the reference config has not run (yet)
        return None
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


def paired_comparison(config: Config, reference: Config, metric: str, margin: float | None = None,
                      effect: float | None = None) -> Paired:
    """`metric` of `config` against `reference` over the seeds both have, by the paired t-test (as scipy's
    ttest_rel computes it): the differences d_i = config_i − reference_i of seed i, their mean d̄, its 95 % interval
    d̄ ± t(0.975, n − 1)·s_d/√n, and the two-sided p of t = d̄/(s_d/√n) with n − 1 degrees of freedom; with
    `margin`, TOST's p for |true difference| < margin; the minimum detectable difference; with `effect`, the
    seeds needed (`Paired`).

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
    paired = Paired(n, mean, *t_interval(mean, std, n), float(2 * stdtr(n - 1, -abs(t))), margin=margin)
    paired.mde, paired.seeds_needed = power_of(std, n, effect)
    if margin is not None:
        import numpy as np
        from statsmodels.stats.weightstats import ttost_paired

        pairs = np.array([own[s] for s in seeds]), np.array([theirs[s] for s in seeds])
        paired.tost_p = float(ttost_paired(*pairs, -margin, margin)[0])
    return paired


def power_of(std: float, pairs: int, effect: float | None) -> tuple[float, int | None]:
    """For a paired t-test at α (two-sided) and 80 % power, with differences of sample std `std`: the smallest
    |mean difference| that `pairs` pairs detect, and, given `effect`, the pairs that detect it (at least 2)."""
    from statsmodels.stats.power import TTestPower

    solver = TTestPower()
    mde = std * float(solver.solve_power(nobs=pairs, alpha=ALPHA, power=POWER, alternative="two-sided"))
    if effect is None:
        return mde, None
    needed = solver.solve_power(effect_size=abs(effect) / std, alpha=ALPHA, power=POWER, alternative="two-sided")
    return mde, max(2, math.ceil(float(needed)))


def correct(comparisons: list[Paired], method: str = "holm") -> None:
    """Sets each tested comparison's `p_corrected`, by statsmodels' multipletests (`method`: holm, or fdr_bh for
    Benjamini–Hochberg) across `comparisons`: a family, e.g. every comparison of one metric in a report."""
    tested = [paired for paired in comparisons if paired.p is not None]
    if not tested:
        return
    from statsmodels.stats.multitest import multipletests

    for paired, corrected in zip(tested, multipletests([paired.p for paired in tested], method=method)[1]):
        paired.p_corrected = float(corrected)


def verdict(paired: Paired, metric: str, name: str, correction: str = "holm") -> str:
    """The comparison in words: "better than" or "worse than" `name` (by the sign of the difference and whether
    lower is better for the metric) when the corrected p is below α = 0.05; else "equivalent to" it within
    ±margin when TOST's p is below α, else "inconclusive"; "–" without a test (fewer than two pairs, a value not
    finite)."""
    if paired.pairs < 2 or paired.diff is None or not math.isfinite(paired.diff):
        return "–"
    direction = "worse" if (paired.diff > 0) == lower_is_better(metric) else "better"
    if paired.p is None:
        if paired.diff == 0:
            return f"not distinguishable from {name} (identical in all {paired.pairs} pairs)"
        return f"{direction} than {name} by the same amount in all {paired.pairs} pairs (no spread: no test)"
    corrected = paired.p if paired.p_corrected is None else paired.p_corrected
    tested = p_text(paired.p) + ("" if paired.p_corrected is None else
                                 f", {CORRECTIONS[correction]} {p_text(paired.p_corrected)}")
    if corrected < ALPHA:
        return f"{direction} than {name} ({tested})"
    if paired.tost_p is not None and paired.tost_p < ALPHA:
        return f"equivalent to {name} within ±{paired.margin:.2g} (TOST {p_text(paired.tost_p)}; {tested})"
    return f"inconclusive against {name} ({tested})"


def p_text(p: float) -> str:
    """p to two significant digits (more where two would round it onto α), or "p < 0.001"."""
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    return f"p = {p:.4g}" if float(text) == ALPHA and p != ALPHA else f"p = {text}"


def add_comparisons(rows: list[dict], configs: list[Config], metrics: list[str],
                    reference: dict[str, str | None], name: str | None = None,
                    margins: dict[str, float] | None = None, effects: dict[str, float] | None = None,
                    correction: str = "holm") -> None:
    """Adds to each config's row its comparison with its reference config (`reference_config`), per metric; the
    p values of one metric's comparisons are corrected together (`correct`); `margins` and `effects` by metric
    (`by_metric`) ask for TOST and the seeds an effect needs; the words name the reference `name` (default:
    `reference_name`)."""
    name, margins, effects = name or reference_name(reference), margins or {}, effects or {}
    against = [reference_config(config, configs, reference) for config in configs]
    for metric in metrics:
        compared = {k: paired_comparison(config, other, metric, by_metric(margins, metric), by_metric(effects, metric))
                    for k, (config, other) in enumerate(zip(configs, against)) if other}
        correct(list(compared.values()), correction)
        for k, row in enumerate(rows):
            row["reference"] = against[k].label() if against[k] else None
            row.update({f"{metric} {column}": None for column in COMPARED})
            if k in compared:
                paired = compared[k]
                values = (paired.pairs, paired.diff, paired.low, paired.high, paired.p, paired.p_corrected,
                          paired.tost_p, paired.mde, paired.seeds_needed, verdict(paired, metric, name, correction))
                row.update({f"{metric} {column}": value for column, value in zip(COMPARED, values)})


def by_metric(values: dict[str, float], metric: str) -> float | None:
    """The value given for `metric`: by its full name (test/acc), else by its name after the split (acc: every
    split's accuracy)."""
    return values.get(metric, values.get(metric.rsplit("/", 1)[-1]))


def run_row(run: RunResult) -> dict:
    overrides = " ".join(f"{k}={v}" for k, v in (run.overrides or {}).items())
    return {"job": run.job, "status": run.status, "overrides": overrides, "note": run.note,
            "values": run.overrides or {}, "seed": run.seed}
