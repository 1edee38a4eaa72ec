"""The report's figures read at a glance: every text inside its figure and none on top of another axes' or role's
text, measured by matplotlib's own renderer; and a job missing from the curves is named in report.md."""

import itertools
import random
from pathlib import Path

import pytest
from helpers.report import write_job
from matplotlib.backends.backend_agg import FigureCanvasAgg

from losslab.reporting import drawing, plots
from losslab.reporting.report import write_report

LOSSES, LRS, L2S, SEEDS = ("ce", "mbce", "min_ent", "mix_ent"), ("0.1", "0.01"), ("0", "0.01", "0.1"), (0, 1)
GRID_JOBS = len(LOSSES) * len(LRS) * len(L2S) * len(SEEDS)
LEARNED = {"loss/beta1": 0.839, "loss/beta2": 0.308, "loss/base1": 2.02, "loss/base2": 10.73}
CURVE_COLUMNS = ("step", "val/loss", "val/acc", "val/nll", "val/ece", "weights/sq_norm")
TEST_COLUMNS = ("test/acc", "test/nll")
STEPS = (14, 28, 42)
MONITOR = {"metric": "val/nll", "mode": "min"}
# between the boxes of texts of different axes (or of an axes and the figure): boxes that touch read as one line
# run into another. Within an axes, matplotlib's own paddings place the texts; there, boxes must only not overlap.
MIN_GAP_PX = 3


def job_rows(rng: random.Random, loss: str) -> tuple[list[str], list[list], dict[str, float]]:
    """metrics.csv's header, its rows (the evaluations, then the final row with test metrics) and the final values
    of one run. The learned values drift by millionths: long tick labels tell them apart."""
    learned = dict(LEARNED) if loss in ("min_ent", "mix_ent") else {}
    header = [*CURVE_COLUMNS, *learned, *TEST_COLUMNS]
    rows = []
    for step in STEPS:
        values = {"step": step, "val/loss": rng.uniform(0, 2), "val/acc": 0.99 + rng.uniform(0, 0.01),
                  "val/nll": rng.uniform(0, 1.5), "val/ece": rng.uniform(0, 0.2),
                  "weights/sq_norm": rng.uniform(100, 140),
                  **{key: start + step * 1e-6 for key, start in learned.items()}}
        rows.append([values.get(column, "") for column in header])
    final = dict(zip(header, rows[-1])) | {"test/acc": rng.uniform(0.5, 1), "test/nll": rng.uniform(0, 2)}
    return header, [*rows, list(final.values())], final


def csv_text(header: list[str], rows: list[list]) -> str:
    return "".join(",".join(map(str, row)) + "\n" for row in [header, *rows])


def write_mixed_sweep(sweep: Path) -> Path:
    """Four losses x two learning rates x three L2 coefficients (0 among them) x two seeds, whose config labels
    are long; then a diverged job with its curve dashed, and the jobs whose curves are missing: an empty metrics.csv,
    one with its header alone, one with the final row alone, none at all."""
    rng = random.Random(31)
    grid = itertools.product(LOSSES, LRS, L2S, SEEDS)
    for job, (loss, lr, l2, seed) in enumerate(grid):
        header, rows, final = job_rows(rng, loss)
        overrides = [f"loss={loss}", f"optimizer.lr={lr}", f"trainer.l2={l2}", f"seed={seed}"]
        write_job(sweep, job, overrides, {"status": "completed", "seed": seed, "monitor": MONITOR, "final": final},
                  csv_text(header, rows), name=",".join(overrides))
    job += 1
    header, rows, final = job_rows(rng, "ce")
    write_job(sweep, job, ["loss=ce", "optimizer.lr=1.0", "trainer.l2=0", "seed=0"],
              {"status": "diverged", "diverged_at_step": 30}, csv_text(header, rows[:2]), name="diverged")
    for offset, (name, text) in enumerate(MISSING.items(), start=1):
        write_job(sweep, job + offset, ["loss=ce", "optimizer.lr=0.1", "trainer.l2=0", "seed=2"],
                  {"status": "completed", "seed": 2, "monitor": MONITOR, "final": final}, text, name=name)
    return sweep


MISSING = {"empty": "", "header_alone": ",".join(CURVE_COLUMNS) + "\n",
           "final_row_alone": csv_text([*CURVE_COLUMNS, *TEST_COLUMNS], [[42, 0.5, 0.9, 0.4, 0.1, 120, 0.9, 0.4]]),
           "no_csv": None}
WHY_MISSING = {"empty": "its metrics.csv is empty", "header_alone": "its metrics.csv has no rows",
               "final_row_alone": "its metrics.csv has no evaluation before the final one",
               "no_csv": "it has no metrics.csv"}


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    """The mixed sweep's report, and the figures it saved by file name (drawn, not yet written)."""
    sweep = write_mixed_sweep(tmp_path_factory.mktemp("mixed") / "sweep")
    figures = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save", lambda fig, path: figures.setdefault(path.name, fig) and path)
        report = write_report(sweep)
    return sweep, report, figures


def tick_labels(axis) -> list:
    """The tick labels an axis draws: those of ticks inside its view (matplotlib keeps ticks outside it)."""
    low, high = sorted(axis.get_view_interval())
    ticks = [tick for tick in axis.get_major_ticks() + axis.get_minor_ticks() if low <= tick.get_loc() <= high]
    return [label for tick in ticks for label in (tick.label1, tick.label2) if tick.get_visible()]


def axes_texts(ax) -> dict[str, list]:
    """An axes' texts by role."""
    texts = {"title": [ax.title], "texts": list(ax.texts)}
    if ax.get_legend() is not None:
        texts["legend"] = [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    if ax.axison:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            texts |= {f"{name} label": [axis.label], f"{name} ticks": tick_labels(axis),
                      f"{name} offset": [axis.get_offset_text()]}
    return texts


def text_boxes(fig) -> list[tuple[tuple[str, str], str, object]]:
    """((owner, role), text, window extent) of every visible text of the figure, drawn by its renderer."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    roles = {("figure", f"legend {i}"): [legend.get_title(), *legend.get_texts()]
             for i, legend in enumerate(fig.legends)}
    roles |= {("figure", f"text {i}"): [text] for i, text in enumerate(fig.texts)}
    for i, ax in enumerate(fig.axes):
        if ax.get_visible():
            roles |= {(f"axes {i}", role): texts for role, texts in axes_texts(ax).items()}
    return [(role, text.get_text(), text.get_window_extent(renderer)) for role, texts in roles.items()
            for text in texts if text.get_visible() and text.get_text().strip()]


def layout_faults(fig) -> list[str]:
    """Each text that leaves the figure, each pair of texts of different roles that overlap, and each pair of
    different owners less than MIN_GAP_PX apart."""
    boxes = text_boxes(fig)
    inside = fig.bbox.padded(0.5)
    faults = [f"{' '.join(role)} {text!r} leaves the figure: {box.bounds} not in {fig.bbox.bounds}"
              for role, text, box in boxes if not (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1))]
    for (role_a, text_a, a), (role_b, text_b, b) in itertools.combinations(boxes, 2):
        gap = MIN_GAP_PX / 2 if role_a[0] != role_b[0] else 0
        if role_a != role_b and a.padded(gap).overlaps(b.padded(gap)):
            faults.append(f"{' '.join(role_a)} {text_a!r} at {a.bounds} runs into {' '.join(role_b)} {text_b!r} at "
                          f"{b.bounds}")
    return faults


def test_the_mixed_sweep_gets_every_report_figure(mixed_report):
    _, report, figures = mixed_report
    assert set(figures) == {"val_curves.png", "vs_optimizer.lr.png", "vs_trainer.l2.png", "learned_values.png"}
    assert [path.name for path in report.files if path.suffix == ".png"] == list(figures)


@pytest.mark.parametrize("name", ["val_curves.png", "vs_optimizer.lr.png", "vs_trainer.l2.png", "learned_values.png"])
def test_report_figure_texts_stay_inside_and_apart(mixed_report, name):
    _, _, figures = mixed_report
    fig = figures[name]
    assert len(text_boxes(fig)) > 20  # titles, labels, ticks and legend entries were found and measured
    assert layout_faults(fig) == []


def test_every_config_is_in_the_curves_legend(mixed_report):
    _, report, figures = mixed_report
    (legend,) = figures["val_curves.png"].legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == [f"loss={lo} optimizer.lr={lr} trainer.l2={l2}" for lo in LOSSES for lr in LRS for l2 in L2S] + [
        "loss=ce optimizer.lr=1.0 trainer.l2=0"]


def test_a_job_missing_from_the_curves_is_named_in_the_report_with_why(mixed_report):
    sweep, report, figures = mixed_report
    first = GRID_JOBS + 1  # after the grid and the diverged job
    expected = [(f"{first + i}_{name}", WHY_MISSING[name]) for i, name in enumerate(MISSING)]
    assert report.missing_curves == expected
    md = (sweep / "report.md").read_text()
    for number, (job, why) in enumerate(expected, start=first):
        assert f"- job {number} (`{job}/`): {why}." in md
    assert len(figures["val_curves.png"].axes[0].get_lines()) == GRID_JOBS + 1  # the diverged job's too


def test_a_report_with_every_curve_names_none_missing(tmp_path):
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(LRS):
        header, rows, final = job_rows(random.Random(job), "ce")
        write_job(sweep, job, [f"optimizer.lr={lr}"], {"status": "completed", "final": final}, csv_text(header, rows))
    report = write_report(sweep)
    assert report.missing_curves == []
    assert "without a curve" not in (sweep / "report.md").read_text()


def run_figure(name: str):
    """A figure of a run (losslab.reporting.drawing), from arrays of a run that finished."""
    import numpy as np

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 500)
    correct = rng.uniform(size=500) < confidence
    if name == "templates":
        return drawing.templates_figure(rng.normal(size=(10, 1, 8, 8)), [f"class {i}" for i in range(10)])
    if name == "curves":
        return drawing.curves_figure([{"step": s, "train/loss": 1 / s, "val/loss": 2 / s, "train/acc": 1 - 1 / s,
                                       "val/acc": 1 - 2 / s} for s in (10, 20, 30)])
    if name == "confidence":
        return drawing.confidence_figure(confidence, correct, "test")
    return drawing.reliability_figure(confidence, correct, "test", 15)


@pytest.mark.parametrize("name", ["templates", "confidence", "reliability", "curves"])
def test_run_figure_texts_stay_inside_and_apart(name):
    assert layout_faults(run_figure(name)) == []
