"""Drawing the figures of a run from arrays and metrics.csv rows: numpy and matplotlib only, no torch, so a
worker process that draws (losslab.figures.drawing_pool) starts in a fraction of a second.

Each plotting function returns a matplotlib Figure on an Agg canvas (no pyplot, no display needed);
`draw_png` renders one to PNG bytes. matplotlib is imported inside the functions, so importing this module
(and losslab.train) stays fast.
"""

from __future__ import annotations

import io
import math

import numpy as np

HISTOGRAM_BINS = 30
# fixed margins: matplotlib's layout engines cost more than drawing (a sweep writes these for every job)
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.9}
CURVES = {"loss": ("train/loss", "val/loss"), "accuracy": ("train/acc", "val/acc")}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int):
    """(count, mean confidence, accuracy) per equal-width confidence bin; empty bins hold NaN."""
    index = np.clip(np.ceil(confidence * bins), 1, bins).astype(int) - 1  # (0, 1/bins] is the first, as in metrics
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence.astype(np.float64), bins) / count
        accuracy = np.bincount(index, correct.astype(np.float64), bins) / count
    return count, mean_confidence, accuracy


def templates_figure(templates: np.ndarray, names: list[str]):
    """One image per output on one symmetric colour scale (blue < 0 < red); colour images show the mean
    over channels, since a diverging scale has no room for RGB. The images are tiled into one picture with
    white gaps (one axes: a sweep draws this for every job, and an axes per class costs ten times more)."""
    import matplotlib
    from matplotlib.figure import Figure

    images = templates.mean(axis=1)
    limit = float(np.abs(images).max()) or 1.0
    k, h, w = images.shape
    cols = min(k, max(5, math.ceil(math.sqrt(2 * k))))  # about twice as wide as tall
    rows = math.ceil(k / cols)
    label, gap = max(4, h // 3), max(1, w // 10)  # room above each tile for its name, and between tiles
    mosaic = np.full((rows * (label + h), cols * (w + gap) - gap), np.nan)
    height = 1.7 * rows + 0.6
    fig = Figure(figsize=(max(4.0, 1.6 * cols + 1.2), height))
    ax = fig.add_axes((0.01, 0.02, 0.85, 0.96 - 0.6 / height))
    ax.set_axis_off()
    for i, (image, name) in enumerate(zip(images, names)):
        top, left = (i // cols) * (label + h) + label, (i % cols) * (w + gap)
        mosaic[top:top + h, left:left + w] = image
        ax.text(left + (w - 1) / 2, top - 1, name, ha="center", va="bottom", fontsize=9)
    colours = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    shown = ax.imshow(mosaic, cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(shown, cax=fig.add_axes((0.89, 0.1, 0.02, 0.7)), label="weight")
    fig.suptitle("Weight templates (one colour scale)")
    return fig


def confidence_figure(confidence: np.ndarray, correct: np.ndarray, split: str):
    """Histograms of the top-label confidence of correct and of wrong predictions, each summing to one."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots(gridspec_kw=MARGINS)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    for mask, label, colour in ((correct, "correct", "tab:green"), (~correct, "wrong", "tab:red")):
        values = confidence[mask]
        if len(values):
            ax.hist(values, edges, weights=np.full(len(values), 1 / len(values)), alpha=0.6, color=colour,
                    label=f"{label} (n={len(values)}, mean {values.mean():.3f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("fraction of the group")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"Confidence on {split}: correct vs wrong")
    return fig


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, split: str, bins: int):
    """Accuracy per confidence bin against the diagonal; the title holds ECE = Σ_b n_b/N |acc_b - conf_b|."""
    from matplotlib.figure import Figure

    count, mean_confidence, accuracy = calibration_bins(confidence, correct, bins)
    filled = count > 0
    ece = float((count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])).sum() / count.sum())
    centres = (np.arange(bins) + 0.5) / bins
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots(gridspec_kw=MARGINS)
    ax.bar(centres[filled], accuracy[filled], width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot(mean_confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"Reliability on {split}: ECE = {ece:.4f} ({bins} bins)")
    return fig


def curves_figure(rows: list[dict]):
    """Train and val loss and accuracy against the step, from the per-evaluation rows of metrics.csv (the
    final row, with test metrics, evaluates the full train split in eval mode and is left out)."""
    from matplotlib.figure import Figure

    history = evaluations(rows)
    fig = Figure(figsize=(10, 4))
    for ax, (title, keys) in zip(fig.subplots(1, 2, gridspec_kw={**MARGINS, "top": 0.84, "wspace": 0.25}),
                                 CURVES.items()):
        for key in keys:
            points = [(number(r["step"]), number(r.get(key))) for r in history if number(r.get(key)) is not None]
            if points:
                ax.plot(*zip(*points), "o-", markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Training curves (train: mean over the steps since the last evaluation)")
    return fig


def evaluations(rows: list[dict]) -> list[dict]:
    """The rows of the evaluations during training: all but the final one, which has test metrics."""
    return [r for r in rows if number(r.get("test/loss")) is None]


def number(value) -> float | None:
    """A metrics.csv value as a float; None where empty (rows hold floats, or the CSV's strings)."""
    return None if value is None or value == "" else float(value)


def render(fig) -> np.ndarray:
    """The figure as an RGB array (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def encode_png(image: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, image, format="png")
    return buffer.getvalue()


def draw_png(drawer: str, args: tuple) -> tuple[bytes, int, int]:
    """One figure drawn by the function named `drawer` of this module, as (PNG, height, width)."""
    image = render(DRAWERS[drawer](*args))
    return encode_png(image), *image.shape[:2]


DRAWERS = {f.__name__: f for f in (templates_figure, confidence_figure, reliability_figure, curves_figure)}


def warm_up() -> None:
    """A drawing worker's start: import what drawing needs, and leave Ctrl-C to the training process (which
    stops cleanly; a worker killed by it would break the pool mid-figure)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.image  # noqa: F401
