"""losslab-report's statistics over seeds and the learned loss values: the 95 % interval of each config's mean and
the paired comparison with a reference config, both against scipy computed here on hand-made summaries; the words
that read the comparison; the learned-value trajectories and their figure."""

import csv
import math
import re
import statistics

import numpy as np
import pytest
from helpers.report import PNG_SIGNATURE, write_job
from scipy import stats

from losslab.errors import UserError
from losslab.reporting.plots import learned_curves, mean_trajectory
from losslab.reporting.report import main, write_report
from losslab.reporting.statistics import Paired, p_text, verdict

SEEDS = (0, 1, 2, 3, 4)
CE_ACC = (0.900, 0.910, 0.905, 0.895, 0.902)
CE_NLL = (0.35, 0.33, 0.34, 0.36, 0.35)
# config -> (test/acc − ce's, test/nll − ce's) per seed; None: the config lacks that seed
SHIFTS = {
    "mbce": ((0.010, 0.012, 0.008, 0.011, 0.009), (0.020, 0.030, 0.025, 0.020, 0.028)),  # acc up, nll up
    "bce": ((0.010, -0.012, 0.004, None, -0.003), (-0.030, -0.028, -0.031, None, -0.029)),  # no seed 3
}
METRICS = ["test/acc", "test/nll"]


def finals() -> dict[str, dict[int, dict[str, float]]]:
    """loss -> seed -> its final test/acc and test/nll."""
    values = {"ce": {seed: {"test/acc": CE_ACC[i], "test/nll": CE_NLL[i]} for i, seed in enumerate(SEEDS)}}
    for loss, (acc, nll) in SHIFTS.items():
        values[loss] = {seed: {"test/acc": CE_ACC[i] + acc[i], "test/nll": CE_NLL[i] + nll[i]}
                        for i, seed in enumerate(SEEDS) if acc[i] is not None}
    return values


def write_losses(sweep, values: dict[str, dict[int, dict[str, float]]], extra: tuple[str, ...] = ()) -> None:
    """One job per (loss, seed) of `values`, in that order, with `extra` overrides."""
    job = 0
    for loss, by_seed in values.items():
        for seed, final in by_seed.items():
            write_job(sweep, job, ["dataset=synthetic", f"loss={loss}", *extra, f"seed={seed}"],
                      {"status": "completed", "seed": seed, "final": final})
            job += 1


@pytest.fixture(scope="module")
def five_seeds(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("five_seeds") / "sweep"
    write_losses(sweep, finals())
    return sweep, write_report(sweep, METRICS)


def test_the_interval_of_each_mean_is_scipys_student_t(five_seeds):
    sweep, report = five_seeds
    values = finals()
    for row in report.rows:
        for metric in METRICS:
            sample = [final[metric] for final in values[row["loss"]].values()]
            mean, sem = statistics.mean(sample), statistics.stdev(sample) / math.sqrt(len(sample))
            low, high = stats.t.interval(0.95, len(sample) - 1, loc=mean, scale=sem)
            assert (row[f"{metric} ci low"], row[f"{metric} ci high"]) == pytest.approx((low, high), rel=1e-12)
    bce = next(row for row in report.rows if row["loss"] == "bce")
    assert bce["n"] == 4
    with open(sweep / "report.csv", newline="") as f:
        record = next(r for r in csv.DictReader(f) if r["loss"] == "bce")
    assert float(record["test/acc ci low"]) == bce["test/acc ci low"]
    cell = f"{bce['test/acc mean']:.4g} ± {bce['test/acc std']:.2g} [{bce['test/acc ci low']:.4g}, " \
           f"{bce['test/acc ci high']:.4g}]"
    assert f"| bce | 4 | 0 | {cell} |" in (sweep / "report.md").read_text()


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p values, by its definition: the i-th smallest p times (m − i + 1), made
    non-decreasing in that order, at most 1."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[k]))
        adjusted[k] = running
    return adjusted


def paired_p(loss: str, metric: str) -> float:
    values = finals()
    seeds = list(values[loss])
    return stats.ttest_rel([values[loss][s][metric] for s in seeds], [values["ce"][s][metric] for s in seeds]).pvalue


@pytest.mark.parametrize("loss, words", [
    ("mbce", {"test/acc": "better than ce", "test/nll": "worse than ce"}),  # nll: lower is better
    ("bce", {"test/acc": "inconclusive against ce", "test/nll": "better than ce"}),
])
def test_each_config_is_compared_with_ce_over_matched_seeds_by_scipys_paired_t_test(five_seeds, loss, words):
    """p from scipy's ttest_rel; Holm's correction over the metric's two comparisons (mbce and bce against ce)
    by its definition; the smallest difference detectable at 80 % power from scipy's noncentral t."""
    sweep, report = five_seeds
    values = finals()
    row = next(row for row in report.rows if row["loss"] == loss)
    assert row["reference"] == "loss=ce"
    seeds = list(values[loss])  # bce lacks seed 3: the pairs are the seeds both have
    assert len(seeds) == (4 if loss == "bce" else 5)
    with open(sweep / "report.csv", newline="") as f:
        record = next(r for r in csv.DictReader(f) if r["loss"] == loss)
    md = (sweep / "report.md").read_text()
    for metric in METRICS:
        own, ce = [values[loss][s][metric] for s in seeds], [values["ce"][s][metric] for s in seeds]
        expected = stats.ttest_rel(own, ce)
        low, high = expected.confidence_interval(0.95)
        assert row[f"{metric} pairs"] == len(seeds) and int(record[f"{metric} pairs"]) == len(seeds)
        assert row[f"{metric} diff"] == pytest.approx(statistics.mean(a - b for a, b in zip(own, ce)), rel=1e-12)
        assert (row[f"{metric} diff low"], row[f"{metric} diff high"]) == pytest.approx((low, high), rel=1e-12)
        assert row[f"{metric} p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert float(record[f"{metric} p"]) == row[f"{metric} p"]
        corrected = holm([paired_p("mbce", metric), paired_p("bce", metric)])[0 if loss == "mbce" else 1]
        assert row[f"{metric} p corrected"] == pytest.approx(corrected, rel=1e-9)
        assert (corrected < 0.05) == (not words[metric].startswith("inconclusive"))
        said = f"{words[metric]} ({p_text(expected.pvalue)}, Holm {p_text(corrected)})"
        assert row[f"{metric} vs reference"] == said == record[f"{metric} vs reference"]
        assert said in md.split("## Compared with ce")[1]
        std = statistics.stdev(a - b for a, b in zip(own, ce))
        assert row[f"{metric} mde"] == pytest.approx(detectable(len(seeds)) * std, rel=1e-4)
        assert f"; MDE ±{row[f'{metric} mde']:.2g}" in md
    assert f"| {loss} | loss=ce | {len(seeds)} | " in md


def detectable(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The effect (mean difference / its std) that a two-sided one-sample t-test of n values detects with
    `power`, from scipy's noncentral t distribution."""
    from scipy.optimize import brentq

    critical = stats.t.ppf(1 - alpha / 2, n - 1)

    def power_at(effect: float) -> float:
        shift = effect * math.sqrt(n)
        other_tail = np.nan_to_num(stats.nct.cdf(-critical, n - 1, shift))  # NaN where it underflows
        return stats.nct.sf(critical, n - 1, shift) + other_tail - power

    return brentq(power_at, 1e-6, 100)


def test_equivalence_and_the_seeds_an_effect_needs_follow_scipy(tmp_path):
    """ce and two losses over 6 seeds: `near` differs from ce by ±0.001 around +0.0002, `far` by about +0.01.
    With --equivalence acc=0.005 (half a point), near is equivalent (TOST: the larger p of the two one-sided
    t-tests against ±0.005, from scipy) and far is better; --power acc=0.002 gives the seeds whose power to detect
    0.002 first reaches 80 % (scipy's noncentral t)."""
    sweep = tmp_path / "sweep"
    base = [0.90, 0.91, 0.905, 0.895, 0.902, 0.899]
    shifts = {"ce": [0] * 6, "near": [0.0012, -0.0008, 0.0011, -0.0009, 0.0010, -0.0004],
              "far": [0.011, 0.009, 0.010, 0.012, 0.008, 0.010]}
    job = 0
    for loss, shift in shifts.items():
        for seed in range(6):
            write_job(sweep, job, [f"loss={loss}", f"seed={seed}"],
                      {"status": "completed", "seed": seed, "final": {"test/acc": base[seed] + shift[seed]}})
            job += 1
    main([str(sweep), "--metrics", "test/acc", "--equivalence", "acc=0.005", "--power", "acc=0.002"])
    with open(sweep / "report.csv", newline="") as f:
        rows = {r["loss"]: r for r in csv.DictReader(f)}
    for loss in ("near", "far"):
        diffs = [(base[s] + shifts[loss][s]) - base[s] for s in range(6)]
        above = stats.ttest_1samp(diffs, -0.005, alternative="greater").pvalue
        below = stats.ttest_1samp(diffs, 0.005, alternative="less").pvalue
        assert float(rows[loss]["test/acc tost p"]) == pytest.approx(max(above, below), rel=1e-9)
        std = statistics.stdev(diffs)
        needed = next(n for n in range(2, 10_000) if detectable(n) * std <= 0.002)
        assert int(rows[loss]["test/acc seeds needed"]) == needed
    assert rows["near"]["test/acc vs reference"].startswith("equivalent to ce within ±0.005 (TOST p ")
    assert rows["far"]["test/acc vs reference"].startswith("better than ce (p ")
    assert "seeds for the effect" in (sweep / "report.md").read_text()


def test_the_reference_itself_is_not_compared(five_seeds):
    sweep, report = five_seeds
    ce = next(row for row in report.rows if row["loss"] == "ce")
    assert ce["reference"] is None and ce["test/acc p"] is None and ce["test/acc vs reference"] is None
    assert "| ce | loss=ce |" not in (sweep / "report.md").read_text()


def test_one_and_two_seeds_in_a_grid_are_compared_with_ce_at_the_same_learning_rate(tmp_path):
    """ce and mbce at two learning rates; mbce at 0.01 has only seed 0: one pair, no interval and no test. At 0.1
    both have seeds 0 and 1: two pairs, an interval (wide: t(0.975, 1) = 12.7) and a p-value."""
    sweep = tmp_path / "sweep"
    acc = {("ce", "0.1"): {0: 0.90, 1: 0.92}, ("mbce", "0.1"): {0: 0.91, 1: 0.94},
           ("ce", "0.01"): {0: 0.80, 1: 0.82}, ("mbce", "0.01"): {0: 0.85}}
    job = 0
    for (loss, lr), by_seed in acc.items():
        for seed, value in by_seed.items():
            write_job(sweep, job, [f"loss={loss}", f"optimizer.lr={lr}", f"seed={seed}"],
                      {"status": "completed", "seed": seed, "final": {"test/acc": value}})
            job += 1
    report = write_report(sweep, ["test/acc"])
    rows = {(row["loss"], row["optimizer.lr"]): row for row in report.rows}

    two = rows["mbce", "0.1"]
    expected = stats.ttest_rel([0.91, 0.94], [0.90, 0.92])
    assert two["reference"] == "loss=ce optimizer.lr=0.1" and two["test/acc pairs"] == 2
    assert (two["test/acc diff low"], two["test/acc diff high"]) == pytest.approx(
        tuple(expected.confidence_interval(0.95)), rel=1e-12)
    assert two["test/acc diff high"] - two["test/acc diff low"] > 0.1  # 12.7 × 0.005 each side of 0.015
    assert two["test/acc p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert (two["test/acc ci low"], two["test/acc ci high"]) == pytest.approx(
        stats.t.interval(0.95, 1, loc=0.925, scale=0.015), rel=1e-12)

    one = rows["mbce", "0.01"]
    assert one["reference"] == "loss=ce optimizer.lr=0.01" and one["test/acc pairs"] == 1
    assert one["test/acc diff"] == pytest.approx(0.05) and one["test/acc p"] is None
    assert one["test/acc diff low"] is None and one["test/acc vs reference"] == "–"
    assert one["test/acc std"] is None and one["test/acc ci low"] is None
    md = (sweep / "report.md").read_text()
    assert "| mbce | 0.01 | 1 | 0 | 0.85 ± – |" in md  # no interval for one value
    assert "| mbce | 0.01 | loss=ce optimizer.lr=0.01 | 1 | – |" in md
    assert "– with 1 pair: one difference has no spread, so no interval and no test." in md
    with open(sweep / "report.csv", newline="") as f:
        record = next(r for r in csv.DictReader(f) if r["optimizer.lr"] == "0.01" and r["loss"] == "mbce")
    assert record["test/acc pairs"] == "1" and record["test/acc p"] == "" and record["test/acc ci low"] == ""


def test_differences_without_spread_and_runs_without_seeds(tmp_path):
    """Every pair equal (scipy's t is 0/0: nan) or differing by the same amount (±∞): no test, said in words.
    Runs that record no seed cannot be paired: 0 pairs."""
    sweep = tmp_path / "sweep"
    values = {"ce": {seed: {"test/acc": 0.5 + seed / 8, "test/nll": 0.25 + seed / 16} for seed in (0, 1, 2)},
              "mbce": {seed: {"test/acc": 0.5 + seed / 8, "test/nll": 0.375 + seed / 16} for seed in (0, 1, 2)}}
    write_losses(sweep, values)
    report = write_report(sweep, METRICS)
    mbce = report.rows[1]
    assert mbce["test/acc diff"] == 0 and mbce["test/acc p"] is None
    assert mbce["test/acc vs reference"] == "not distinguishable from ce (identical in all 3 pairs)"
    assert mbce["test/nll diff"] == mbce["test/nll diff low"] == mbce["test/nll diff high"] == 0.125
    assert mbce["test/nll vs reference"] == "worse than ce by the same amount in all 3 pairs (no spread: no test)"
    assert "+0 [+0, +0]: not distinguishable from ce (identical in all 3 pairs)" in (sweep / "report.md").read_text()

    unseeded = tmp_path / "unseeded"
    for job, loss in enumerate(("ce", "mbce")):
        write_job(unseeded, job, [f"loss={loss}"], {"status": "completed", "final": {"test/acc": 0.9 + job / 100}})
    row = write_report(unseeded, ["test/acc"]).rows[1]
    assert row["test/acc pairs"] == 0 and row["test/acc diff"] is None and row["test/acc vs reference"] == "–"
    assert "– with 0 pairs: no seed in common with the reference" in (unseeded / "report.md").read_text()


@pytest.mark.parametrize("diff, metric, p, words", [
    (0.01, "test/acc", 0.003, "better than ce (p = 0.003, Holm p = 0.006)"),
    (-0.01, "test/acc", 0.003, "worse than ce (p = 0.003, Holm p = 0.006)"),
    (0.01, "test/nll", 0.003, "worse than ce (p = 0.003, Holm p = 0.006)"),  # lower is better
    (-0.01, "val/ece", 0.0004, "better than ce (p < 0.001, Holm p < 0.001)"),
    (0.01, "test/acc", 0.41, "inconclusive against ce (p = 0.41, Holm p = 0.82)"),
    (-0.01, "test/nll", 0.025, "inconclusive against ce (p = 0.025, Holm p = 0.05)"),  # α = 0.05: p < α rejects
    (0.01, "test/acc", 0.0248, "better than ce (p = 0.025, Holm p = 0.0496)"),  # not "p = 0.05" beside "better"
])
def test_the_words_follow_the_corrected_p_the_sign_and_whether_lower_is_better(diff, metric, p, words):
    assert verdict(Paired(5, diff, diff - 0.01, diff + 0.01, p, p_corrected=2 * p), metric, "ce") == words


def test_a_chosen_reference_and_one_that_does_not_set_a_key(tmp_path, capsys):
    """By default (loss=ce) a label-smoothed ce is a reference itself; `KEY=` names a config that does not set
    KEY, so `--reference loss=ce,loss.label_smoothing=` compares it with plain ce. `loss=mbce` turns it round."""
    sweep = tmp_path / "sweep"
    values = finals()
    job = 0
    for loss, extra, by_seed in (("ce", [], values["ce"]), ("ce", ["loss.label_smoothing=0.1"], values["mbce"]),
                                 ("mbce", [], values["mbce"])):
        for seed, final in by_seed.items():
            write_job(sweep, job, [f"loss={loss}", *extra, f"seed={seed}"],
                      {"status": "completed", "seed": seed, "final": final})
            job += 1
    plain = "loss=ce loss.label_smoothing=None"
    assert [row["reference"] for row in write_report(sweep, ["test/acc"]).rows] == [None, None, plain]

    main([str(sweep), "--metrics", "test/acc", "--reference", "loss=ce,loss.label_smoothing="])
    printed = capsys.readouterr().out
    assert "## Compared with loss=ce loss.label_smoothing unset" in printed
    assert re.search(rf"\| ce \| 0\.1 \| {plain} \| 5 \| .*: better than loss=ce loss.label_smoothing unset", printed)
    assert f"| mbce |  | {plain} | 5 | " in printed

    report = write_report(sweep, ["test/acc"], {"loss": "mbce"})
    rows = {(row["loss"], row["loss.label_smoothing"]): row for row in report.rows}
    assert rows["ce", None]["reference"] == rows["ce", "0.1"]["reference"] == "loss=mbce loss.label_smoothing=None"
    assert rows["mbce", None]["reference"] is None
    assert rows["ce", None]["test/acc vs reference"].startswith("worse than mbce (p")


@pytest.mark.parametrize("reference, says", [
    ({"dataset": "synthetic"}, "does not vary; choose from loss"),
    ({"loss": "focal"}, "No config of the sweep has focal; its values are loss: bce, ce, mbce."),
])
def test_a_reference_the_sweep_cannot_give_is_one_sentence(five_seeds, reference, says):
    sweep, _ = five_seeds
    with pytest.raises(UserError, match=re.escape(says)):
        write_report(sweep, METRICS, reference)


def test_a_reference_that_is_not_key_value_is_a_usage_error(five_seeds, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(five_seeds[0]), "--reference", "ce"])
    assert exit_info.value.code == 2 and "is not KEY=VALUE" in capsys.readouterr().err


def test_without_a_loss_sweep_there_is_no_default_reference(tmp_path):
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(("0.1", "0.01")):
        write_job(sweep, job, [f"optimizer.lr={lr}", "seed=0"],
                  {"status": "completed", "seed": 0, "final": {"test/acc": 0.9}})
    report = write_report(sweep, ["test/acc"])
    assert report.reference == {} and all(row["reference"] is None for row in report.rows)
    md = (sweep / "report.md").read_text()
    assert "## Compared with" not in md and "--reference KEY=VALUE" in md


LEARNED_HEADER = "step,val/acc,test/acc,loss/beta1,loss/base1\n"
# seed -> its evaluations (step, β1, b1); seed 2 stopped early after step 20
TRAJECTORIES = {0: [(10, 0.80, 2.0), (20, 0.82, 2.2), (30, 0.83, 2.5)],
                1: [(10, 0.78, 2.1), (20, 0.79, 2.4), (30, 0.81, 2.6)],
                2: [(10, 0.70, 2.3), (20, 0.74, 2.9)]}


def learned_csv(points: list[tuple[int, float, float]]) -> str:
    """metrics.csv with loss/* columns: the evaluations, then the final row (test metrics) repeating the last."""
    rows = [f"{step},0.9,,{beta},{base}\n" for step, beta, base in points]
    step, beta, base = points[-1]
    return LEARNED_HEADER + "".join(rows) + f"{step},0.9,0.9,{beta},{base}\n"


def test_learned_values_get_a_table_and_a_trajectory_figure_with_the_mean_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    job = 0
    for bases in ("fixed", "learnable"):
        for seed, learned in TRAJECTORIES.items():
            points = [(step, beta, 2.0 if bases == "fixed" else base) for step, beta, base in learned]
            final = {"test/acc": 0.9, "loss/beta1": points[-1][1], "loss/base1": points[-1][2]}
            write_job(sweep, job, ["loss=min_ent", f"loss.bases={bases}", f"seed={seed}"],
                      {"status": "early_stopped" if seed == 2 else "completed", "seed": seed, "final": final},
                      learned_csv(points))
            job += 1
    report = write_report(sweep, ["test/acc"])

    assert (sweep / "learned_values.png").read_bytes()[:8] == PNG_SIGNATURE
    md = (sweep / "report.md").read_text()
    assert "![learned_values](learned_values.png)" in md and "## Learned loss values" in md
    config = next(c for c in report_configs(sweep) if c.values["loss.bases"] == "learnable")
    curves = learned_curves(sweep, config)
    assert [curve["loss/base1"] for curve in curves] == [[(s, b) for s, _, b in TRAJECTORIES[seed]]
                                                         for seed in TRAJECTORIES]
    by_hand = [(10.0, (0.80 + 0.78 + 0.70) / 3), (20.0, (0.82 + 0.79 + 0.74) / 3), (30.0, (0.83 + 0.81) / 2)]
    means = mean_trajectory([curve["loss/beta1"] for curve in curves])
    assert [step for step, _ in means] == [step for step, _ in by_hand]
    assert [mean for _, mean in means] == pytest.approx([mean for _, mean in by_hand], rel=1e-12)

    assert report.learned == ["loss/beta1", "loss/base1"]
    row = report.learned_rows[1]
    finals = [points[-1][2] for points in TRAJECTORIES.values()]
    assert row["loss/base1 mean"] == pytest.approx(statistics.mean(finals), rel=1e-12)
    assert row["loss/base1 std"] == pytest.approx(statistics.stdev(finals), rel=1e-12)
    section = md.split("## Learned loss values")[1]
    line = next(line for line in section.splitlines() if line.startswith("| learnable | 3 | "))
    assert line.endswith(f" | {statistics.mean(finals):.4g} ± {statistics.stdev(finals):.2g} "
                         f"[{row['loss/base1 ci low']:.4g}, {row['loss/base1 ci high']:.4g}] |")
    assert "| fixed | 3 | " in section and "| 2 ± 0 [2, 2] |" in section


def test_loss_values_that_are_constants_get_no_learned_table_or_figure(tmp_path):
    sweep = tmp_path / "sweep"
    for job, seed in enumerate((0, 1)):  # fixed coefficient and basis: the same in every run
        points = [(10, 0.839, 2.0), (20, 0.839, 2.0)]
        write_job(sweep, job, ["loss=min_ent", f"seed={seed}"],
                  {"status": "completed", "seed": seed,
                   "final": {"test/acc": 0.9 + job / 100, "loss/beta1": 0.839, "loss/base1": 2.0}},
                  learned_csv(points))
    report = write_report(sweep, ["test/acc"])
    assert report.learned == [] and not (sweep / "learned_values.png").exists()
    assert "## Learned loss values" not in (sweep / "report.md").read_text()


def report_configs(sweep):
    from losslab.reporting.sweep_data import group_by_config, read_runs, varying_keys

    runs = read_runs(sweep)
    return group_by_config(runs, varying_keys(runs))


def test_no_learned_values_no_trajectory_figure(five_seeds):
    sweep, report = five_seeds
    assert not (sweep / "learned_values.png").exists() and report.learned == []
    assert "Learned loss values" not in (sweep / "report.md").read_text()


def test_the_curves_are_of_the_monitored_metric_which_compares_losses(tmp_path, monkeypatch):
    from losslab.reporting import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append((path.name, fig)) or path)
    sweep = tmp_path / "sweep"
    for job, loss in enumerate(("ce", "mbce")):
        write_job(sweep, job, [f"loss={loss}", "seed=0"],
                  {"status": "completed", "seed": 0, "monitor": {"metric": "val/nll", "mode": "min"},
                   "final": {"test/acc": 0.9, "val/nll": 0.3}},
                  "step,val/loss,val/acc,val/nll,test/acc\n10,0.5,0.8,0.4,\n20,0.4,0.85,0.3,\n20,0.4,0.85,0.3,0.9\n")
    write_report(sweep, ["test/acc"])
    curves = dict(drawn)["val_curves.png"]
    assert [ax.get_ylabel() for ax in curves.axes if ax.get_ylabel()] == ["val/nll", "val/acc"]
