"""A sweep report as text: report.csv and report.md."""

from __future__ import annotations

import csv
import io

from losslab.reporting.plots import CURVES_FIGURE, LEARNED_FIGURE
from losslab.reporting.statistics import COMPARED, CORRECTIONS, reference_name
from losslab.reporting.sweep_data import LOWER_IS_BETTER, Report
from losslab.reporting.test_set import TEST_SET_COLUMNS

NO_TEST = {0: "– with 0 pairs: no seed in common with the reference (runs pair by seed; a run without one cannot "
              "be paired).",
           1: "– with 1 pair: one difference has no spread, so no interval and no test."}


def csv_text(report: Report) -> str:
    """Config rows (status "aggregate") then one row per run not aggregated, with its own status and job. A config
    row has per metric mean, std and its 95 % interval (ci low, ci high), then the reference config it is compared
    with and per metric the pairs, the mean difference, its interval (diff low, diff high), p and the words."""
    stats = [f"{m} {s}" for m in report.metrics for s in ("mean", "std", "ci low", "ci high")]
    compared = [f"{m} {s}" for m in report.metrics for s in COMPARED]
    test_set = list(TEST_SET_COLUMNS) if report.test_set else []
    columns = [*report.keys, "status", "n", "diverged", *stats, "best", "reference", *compared, *test_set, "seeds",
               "jobs", "note"]
    records = [{**row, "status": "aggregate", "best": int(row["best"])} for row in report.rows]
    records += [{**run["values"], "status": run["status"], "seeds": [run["seed"]], "jobs": [run["job"]],
                 "note": run["note"]} for run in report.not_aggregated]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([csv_cell(record.get(column)) for column in columns])
    return out.getvalue()


def csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join("" if v is None else str(v) for v in value)
    return str(value)


def markdown(report: Report) -> str:
    metric, mode = report.best_by
    direction = "lowest" if mode == "min" else "highest"
    why = ("the runs' trainer.monitor" if report.monitored
           else f"lower is better for metrics ending in {', '.join(LOWER_IS_BETTER)}")
    n_aggregated = sum(row["n"] for row in report.rows)
    lines = [
        "# Sweep report",
        "",
        f"`{report.sweep_dir}`: {n_aggregated + len(report.not_aggregated)} jobs, {n_aggregated} aggregated "
        f"(completed or early_stopped), {len(report.not_aggregated)} not aggregated (listed below).",
        "",
        "One row per config (the overrides that vary across the jobs, seed excluded). Each cell is the mean ± "
        "sample std (ddof=1) over the config's aggregated runs [the 95 % confidence interval of the mean, Student t "
        "with n − 1 degrees of freedom]; – and no interval when n = 1 (one value has no spread), (n=k) when only k "
        "of them have the metric; diverged: the config's runs that diverged, a result left out of the mean (listed "
        f"below). **best**: {direction} mean {metric} ({why}; of equals, the first).",
        "",
        table([*report.keys, "n", "diverged", *report.metrics, "best"],
              [[*(row[k] for k in report.keys), row["n"], row["diverged"],
                *(stat_cell(row, m) for m in report.metrics), "**best**" if row["best"] else ""]
               for row in report.rows]),
        *best_line(report),
        *comparison_lines(report),
        *test_set_lines(report),
        *learned_lines(report),
        "",
        "## Runs not aggregated",
        "",
    ]
    if report.not_aggregated or report.unrecorded:
        if report.not_aggregated:
            lines.append(table(["job", "status", "overrides", "note"],
                               [[run["job"], run["status"], run["overrides"], run["note"]]
                                for run in report.not_aggregated]))
        if report.unrecorded:
            lines += ["", "Not recorded in their run dirs, which could not be written:", "",
                      *(f"- {sentence}" for sentence in report.unrecorded)]
        lines += continue_line(report)
    else:
        lines.append("None: every job completed or stopped early.")
    plots = [path for path in report.files if path.suffix == ".png"]
    if plots or report.missing_curves:
        lines += ["", "## Plots", "", *(f"![{path.stem}]({path.name})" for path in plots),
                  *missing_curve_lines(report)]
    return "\n".join(lines) + "\n"


def missing_curve_lines(report: Report) -> list[str]:
    """A line per job whose curve is not in CURVES_FIGURE: its number, its dir and why."""
    if not report.missing_curves:
        return []
    return ["", f"Jobs without a curve in {CURVES_FIGURE}:", "",
            *(f"- job {job.split('_', 1)[0]} (`{job}/`): {why}." for job, why in report.missing_curves)]


def continue_line(report: Report) -> list[str]:
    """The command that continues the jobs left failed, interrupted or unfinished (a diverged run is a result)."""
    from losslab.records.summary import LEFT
    from losslab.records.sweep_state import continue_command

    left = max(len([run for run in report.not_aggregated if run["status"] in LEFT]), len(report.unrecorded))
    if not left:
        return []
    return ["", f"{left} of the jobs did not finish. This command continues them (from their last checkpoint "
                f"where they have one) and skips the finished ones:", "", "```bash",
            continue_command(report.sweep_dir), "```"]


def best_line(report: Report) -> list[str]:
    """The best row's config and run dirs (in the sweep dir), as a paragraph after the table."""
    best = report.best
    if best is None:
        return []
    config = " ".join(f"{key}={best[key]}" for key in report.keys) or "all jobs"
    return ["", f"**best**: {config}; run dirs: " + ", ".join(f"`{job}/`" for job in best["jobs"]) + "."]


def stat_cell(row: dict, metric: str) -> str:
    mean, std, count = row[f"{metric} mean"], row[f"{metric} std"], row["counts"][metric]
    if mean is None:
        return ""
    text = f"{mean:.4g} ± " + ("–" if std is None else f"{std:.2g}")
    low, high = row[f"{metric} ci low"], row[f"{metric} ci high"]
    text += "" if low is None else f" [{low:.4g}, {high:.4g}]"
    return text + (f" (n={count})" if count < row["n"] else "")


def comparison_lines(report: Report) -> list[str]:
    """The section comparing each config with its reference config: one row per config compared, a column per
    metric with the mean difference [its 95 % interval] and the words, the pairs it rests on, then why a cell is
    – where one is. Without reference values, one sentence on how to ask for them."""
    if not report.reference:
        return [] if len(report.rows) < 2 else [
            "", "No comparison between configs: the sweep does not vary the loss with ce among its values; "
                "`losslab-report <sweep dir> --reference KEY=VALUE` compares each config with the one you name."]
    name = reference_name(report.reference)
    compared = [row for row in report.rows if row["reference"]]
    lines = ["", f"## Compared with {name}", "",
             f"Each config against the config with {name} that shares its other values (the reference column), "
             "over the seeds both have (pairs; a seed is the same initialisation and data order in both): the mean "
             "difference config − reference [its 95 % interval], the paired t-test's two-sided p and that p "
             f"{CORRECTIONS[report.correction]}-corrected over the metric's {len(compared)} comparisons. Where the "
             "corrected p is below 0.05 the words say better or worse (lower is better for names ending in "
             f"{', '.join(LOWER_IS_BETTER)}); else equivalent, where an equivalence margin was given "
             "(`--equivalence`) and TOST's p is below 0.05, or inconclusive. MDE: the smallest difference these "
             "pairs detect at 80 % power (α = 0.05, from the differences' spread)" + seeds_needed_text(report) + ".",
             ""]
    cells = []
    for row in compared:
        most = max(row[f"{m} pairs"] for m in report.metrics)
        cells.append([*(row[k] for k in report.keys), row["reference"], most,
                      *(comparison_cell(row, m, most) for m in report.metrics)])
    lines.append(table([*report.keys, "reference", "pairs", *report.metrics], cells))
    pairs = {row[f"{m} pairs"] for row in compared for m in report.metrics}
    notes = [NO_TEST[n] for n in sorted(pairs & NO_TEST.keys())]
    return lines + (["", *notes] if notes else [])


def comparison_cell(row: dict, metric: str, most: int) -> str:
    """The mean difference [its 95 % interval]: the words; (n=k) where fewer pairs than `most` have the metric."""
    words, diff, low, high, pairs = (row[f"{metric} {s}"] for s in ("vs reference", "diff", "diff low",
                                                                     "diff high", "pairs"))
    fewer = f" (n={pairs})" if pairs < most else ""
    if words == "–" or low is None:
        return words + fewer
    mde, needed = row[f"{metric} mde"], row[f"{metric} seeds needed"]
    power = "" if mde is None else f"; MDE ±{mde:.2g}" + ("" if needed is None else f", {needed} seeds for the effect")
    return f"{diff:+.2g} [{low:+.2g}, {high:+.2g}]: {words}{power}{fewer}"


def seeds_needed_text(report: Report) -> str:
    if not report.effects:
        return ""
    effects = ", ".join(f"±{value:.2g} in {metric}" for metric, value in report.effects.items())
    return f"; seeds for the effect: the pairs that detect {effects} at 80 % power (`--power`)"


def test_set_lines(report: Report) -> list[str]:
    """The test set's own variance (losslab.reporting.test_set) under its heading: `test_set_table`."""
    if not report.test_set:
        return []
    return ["", "## The test set's variance", "", *test_set_table(report.keys, report.rows)]


def test_set_table(keys: list[str], rows: list[dict], points: bool = False) -> list[str]:
    """Per config: McNemar's p per seed pair and the bootstrap interval of the test accuracy difference against its
    reference (in percentage points with `points`), and the two ECEs with theirs (test_set.TEST_SET_COLUMNS)."""
    rows = [row for row in rows if row["ece"] is not None or row["mcnemar p"] is not None]
    if not rows:
        return ["None: no run wrote predictions_test.npz."]

    def interval(row: dict, name: str) -> str:
        value, low, high = row[name], row[f"{name} boot low"], row[f"{name} boot high"]
        return "" if value is None else f"{value:.3g} [{low:.3g}, {high:.3g}]"

    def mcnemar(row: dict) -> str:
        found = row["mcnemar p"]
        if not found:
            return ""
        below = sum(p < 0.05 for p in found)
        return f"{min(found):.2g}–{max(found):.2g} ({below} of {len(found)} below 0.05)"

    unit = " (points)" if points else ""
    return ["The seeds vary the initialisation and the data order; the test set is one fixed sample of images. "
            "Per config, from its runs' predictions_test.npz: the test accuracy difference against its reference "
            "averaged over seed pairs with its 95 % bootstrap interval over test examples (2,000 resamples), "
            "McNemar's exact p for each seed pair (its range, and how many are below 0.05), and the ECE with 15 "
            "equal-width bins and with 15 equal-mass bins, mean over seeds [bootstrap interval].", "",
            table([*keys, f"test/acc diff{unit} [bootstrap]", "McNemar p per seed", "ECE equal-width",
                   "ECE equal-mass"],
                  [[*(row[k] for k in keys), boot_diff(row, 100 if points else 1), mcnemar(row),
                    interval(row, "ece"), interval(row, "ece equal-mass")] for row in rows])]


def boot_diff(row: dict, scale: float = 1) -> str:
    low, high = row["test/acc diff boot low"], row["test/acc diff boot high"]
    diff = row["test/acc diff"]
    return "" if low is None else f"{scale * diff:+.2g} [{scale * low:+.2g}, {scale * high:+.2g}]"


def learned_lines(report: Report) -> list[str]:
    """The table of the learned loss values at the end of training, per config."""
    if not report.learned_rows:
        return []
    return ["", "## Learned loss values", "",
            "The loss's coefficients and log bases at the end of training (summary.json's final, from the best "
            "weights under early stopping), mean ± sample std [95 % interval] over seeds; their trajectories over "
            f"training are in {LEARNED_FIGURE}.", "",
            table([*report.keys, "n", *report.learned],
                  [[*(row[k] for k in report.keys), row["n"], *(stat_cell(row, m) for m in report.learned)]
                   for row in report.learned_rows])]


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)
