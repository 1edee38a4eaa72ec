"""Drawing the figures of a run from arrays and metrics.csv rows: numpy and matplotlib only.

Each plotting function returns a matplotlib Figure (no pyplot, no display needed); `draw_png` renders one on
an Agg canvas and encodes it as PNG once. matplotlib is imported inside the functions, so importing this
module stays fast.

The drawing is kept cheap, since a sweep draws four figures for every job: fixed axes positions (no layout
engine), few ticks, one artist per histogram, and a small resolution (scripts/bench_figures.py times them).
"""

from __future__ import annotations

import math

import numpy as np

DPI = 80
HISTOGRAM_BINS = 30
UNIT_TICKS = (0, 0.5, 1)
AXES = (0.12, 0.12, 0.84, 0.76)  # left, bottom, width, height of a figure's one axes
CURVES = {"loss": ("train/loss", "val/loss"), "accuracy": ("train/acc", "val/acc")}
SERIES_COLOURS = ("tab:blue", "tab:orange")  # train, val


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int):
    """(count, mean confidence, accuracy) per equal-width confidence bin; empty bins hold NaN."""
    index = np.clip(np.ceil(confidence * bins), 1, bins).astype(int) - 1  # (0, 1/bins] is the first, as in metrics
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence.astype(np.float64), bins) / count
        accuracy = np.bincount(index, correct.astype(np.float64), bins) / count
    return count, mean_confidence, accuracy


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE = Σ_b n_b/N |acc_b - conf_b| over the equal-width bins."""
    count, mean_confidence, accuracy = calibration_bins(confidence, correct, bins)
    filled = count > 0
    return float((count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])).sum() / count.sum())


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def unit_axes(fig, rect=AXES):
    """An axes for confidences: x in [0, 1], three ticks on each axis (each tick costs more to draw than a
    line of data)."""
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_axes(rect)
    ax.set_xlim(0, 1)
    ax.set_xticks(UNIT_TICKS)
    ax.yaxis.set_major_locator(MaxNLocator(3))
    return ax


def templates_figure(templates: np.ndarray, names: list[str]):
    """One image per output on one symmetric colour scale (blue < 0 < red), whose limits the title gives;
    colour images show the mean over channels, since a diverging scale has no room for RGB. The images are
    tiled into one picture with white gaps (one axes: an axes per class, or a colour bar, costs more than
    the rest of the figure)."""
    import matplotlib

    images = templates.mean(axis=1)
    limit = float(np.abs(images).max()) or 1.0
    k, h, w = images.shape
    cols = min(k, max(5, math.ceil(math.sqrt(2 * k))))  # about twice as wide as tall
    rows = math.ceil(k / cols)
    label, gap = max(4, h // 3), max(1, w // 10)  # room above each tile for its name, and between tiles
    mosaic = np.full((rows * (label + h), cols * (w + gap) - gap), np.nan)
    height = 1.7 * rows + 0.6
    fig = new_figure(max(4.0, 1.6 * cols + 0.4), height)
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.96 - 0.6 / height))
    ax.set_axis_off()
    for i, (image, name) in enumerate(zip(images, names)):
        top, left = (i // cols) * (label + h) + label, (i % cols) * (w + gap)
        mosaic[top:top + h, left:left + w] = image
        ax.text(left + (w - 1) / 2, top - 1, name, ha="center", va="bottom", fontsize=9)
    colours = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(f"Weight templates, one colour scale: blue -{limit:.3g} < white 0 < red +{limit:.3g}")
    return fig


def confidence_figure(confidence: np.ndarray, correct: np.ndarray, split: str):
    """Histograms of the top-label confidence of correct and of wrong predictions, each summing to one."""
    fig = new_figure(6, 4)
    ax = unit_axes(fig)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    keys = []
    for mask, label, colour in ((correct, "correct", "tab:green"), (~correct, "wrong", "tab:red")):
        values = confidence[mask]
        if len(values):
            ax.stairs(np.histogram(values, edges)[0] / len(values), edges, fill=True, alpha=0.6, color=colour)
            keys.append((f"{label} (n={len(values)}, mean {values.mean():.3f})", colour))
    key(ax, keys)
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("fraction of the group")
    ax.set_title(f"Confidence on {split}: correct vs wrong", y=1.0)  # y given: no search for room above the ticks
    return fig


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, split: str, bins: int):
    """Accuracy per confidence bin against the diagonal; the title holds ECE = Σ_b n_b/N |acc_b - conf_b|."""
    count, mean_confidence, accuracy = calibration_bins(confidence, correct, bins)
    filled = count > 0
    ece = expected_calibration_error(confidence, correct, bins)
    fig = new_figure(5, 5)
    ax = unit_axes(fig)
    ax.set_ylim(0, 1)
    ax.set_yticks(UNIT_TICKS)
    ax.stairs(np.where(filled, accuracy, 0), np.linspace(0, 1, bins + 1), fill=True, alpha=0.7, color="tab:blue")
    ax.plot(mean_confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    key(ax, [("bars: accuracy per bin", "tab:blue"), ("dots: mean confidence", "tab:red"),
             ("dashed: calibrated", "gray")])
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on {split}: ECE = {ece:.4f} ({bins} bins)", y=1.0)
    return fig


def curves_figure(rows: list[dict]):
    """Train and val loss and accuracy against the step, from the per-evaluation rows of metrics.csv (the
    final row, with test metrics, evaluates the full train split in eval mode and is left out)."""
    from matplotlib.ticker import MaxNLocator

    history = evaluations(rows)
    fig = new_figure(10, 4)
    for i, (title, keys) in enumerate(CURVES.items()):
        ax = fig.add_axes((0.07 + 0.5 * i, 0.12, 0.4, 0.7))
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        for name, colour in zip(keys, SERIES_COLOURS):
            points = [(number(r["step"]), number(r.get(name))) for r in history if number(r.get(name)) is not None]
            if points:
                ax.plot(*zip(*points), "o-", markersize=3, color=colour)
        ax.set_xlabel("step")
        ax.set_title(title, y=1.0)
    fig.suptitle("Training curves (train: mean over the steps since the last evaluation)")
    fig.text(0.98, 0.96, "train", color=SERIES_COLOURS[0], ha="right", va="top")
    fig.text(0.98, 0.91, "val", color=SERIES_COLOURS[1], ha="right", va="top")
    return fig


def key(ax, entries: list[tuple[str, str]]) -> None:
    """Coloured labels in the axes' upper left corner, in place of a legend (a legend costs a third of a
    figure's drawing)."""
    for i, (label, colour) in enumerate(entries):
        ax.text(0.02, 0.97 - 0.06 * i, label, color=colour, fontsize=9, va="top", transform=ax.transAxes)


def evaluations(rows: list[dict]) -> list[dict]:
    """The rows of the evaluations during training: all but the final one, which has test metrics."""
    return [r for r in rows if number(r.get("test/loss")) is None]


def number(value) -> float | None:
    """A metrics.csv value as a float; None where empty (rows hold floats, or the CSV's strings)."""
    return None if value is None or value == "" else float(value)


def draw_png(fig) -> tuple[bytes, int, int]:
    """The figure rendered once and encoded as PNG: (PNG, height, width)."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    with matplotlib.rc_context({"text.hinting": "no_hinting"}):  # a fifth less time per text, barely visible
        canvas.draw()
    width, height = canvas.get_width_height()
    buffer = io.BytesIO()
    # compression level 1: a quarter of the encoding time of the default, for files about 20 % larger
    Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba()).convert("RGB").save(
        buffer, format="png", compress_level=1)
    return buffer.getvalue(), height, width


def draw_plot(function: str, arguments: tuple) -> tuple[bytes, int, int]:
    """The figure `function(*arguments)` of this module as (PNG, height, width)."""
    return draw_png(globals()[function](*arguments))


def draw_plots(plots: dict[str, tuple[str, tuple]]) -> dict[str, tuple[bytes, int, int]]:
    """Each plot (name -> (function of this module, its arguments)) drawn as (PNG, height, width)."""
    return {name: draw_plot(*plot) for name, plot in plots.items()}
