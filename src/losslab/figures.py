"""Figures of a run: weight templates, confidence histograms, reliability diagram, training curves.

The plotting functions take arrays (or metrics.csv rows) and return a matplotlib Figure; `write_figures`
collects the predictions of one split, draws every figure that fits the model, saves PNGs and adds them
to TensorBoard. matplotlib is imported inside the functions, so importing losslab.train stays fast.
Figures are drawn on Agg canvases (no pyplot), which works without a display.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np
import torch

from losslab.fileio import atomic_write
from losslab.metrics import ECE_BINS
from losslab.models import DualLinear, Linear

log = logging.getLogger("losslab")

HISTOGRAM_BINS = 30
# fixed margins: matplotlib's layout engines cost more than drawing (a sweep writes these for every job)
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.9}
CURVES = {"loss": ("train/loss", "val/loss"), "accuracy": ("train/acc", "val/acc")}


@torch.no_grad()
def top_label(model, loss_fn, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048):
    """(confidence, correct) per example of a split: the top value of the loss's `probs` and whether its
    argmax is the label, from one pass in eval mode (the rule of losslab.metrics)."""
    was_training = model.training
    model.eval()
    confidence, correct = [], []
    for start in range(0, len(y), batch_size):
        top, prediction = loss_fn.probs(model(x[start:start + batch_size]).float()).max(-1)
        confidence.append(top)
        correct.append(prediction == y[start:start + batch_size])
    model.train(was_training)
    return torch.cat(confidence).cpu().numpy(), torch.cat(correct).cpu().numpy()


def weight_templates(model, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]] | None:
    """The weight vector of each output as an image (K, C, H, W) with its names, or None for a model
    that is not linear in its input."""
    if isinstance(model, Linear):
        weights = model.fc.weight
        names = [f"class {k}" for k in range(len(weights))] if len(weights) > 1 else ["logit (class 1)"]
    elif isinstance(model, DualLinear):
        weights, names = model.w1 + model.G1, ["w1 + G1"]
    else:
        return None
    return weights.detach().float().cpu().numpy().reshape(-1, *shape), names


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS):
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


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, split: str, bins: int = ECE_BINS):
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


def read_rows(metrics_csv: Path) -> list[dict]:
    """The rows of a run's metrics.csv (values as strings, "" where empty); none if there is no file yet."""
    if not metrics_csv.exists():
        return []
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def evaluations(rows: list[dict]) -> list[dict]:
    """The rows of the evaluations during training: all but the final one, which has test metrics."""
    return [r for r in rows if number(r.get("test/loss")) is None]


def number(value) -> float | None:
    """A metrics.csv value as a float; None where empty (rows hold floats, or the CSV's strings)."""
    return None if value is None or value == "" else float(value)


def write_figures(out_dir: Path, model, loss_fn, data, rows: list[dict], writer=None, step: int = 0,
                  split: str = "test") -> list[Path]:
    """Draw the figures of `model` on `split` and `rows`, write them as `out_dir/<name>.png` and, with a
    SummaryWriter, as TensorBoard images `figures/<name>` at `step`; return the PNG paths. Figures that do
    not apply are left out: templates for a model that is not linear, curves without evaluation rows, and
    anything drawn from weights or predictions that are not finite."""
    figures = {}
    templates = weight_templates(model, data.shape)
    if templates is not None and np.isfinite(templates[0]).all():
        figures["weight_templates"] = templates_figure(*templates)
    confidence, correct = top_label(model, loss_fn, *data.split(split))
    if np.isfinite(confidence).all():
        figures[f"confidence_histogram_{split}"] = confidence_figure(confidence, correct, split)
        figures[f"reliability_{split}"] = reliability_figure(confidence, correct, split)
    else:
        log.warning("the model's predictions on %s are not finite (it diverged): no confidence figures", split)
    if evaluations(rows):
        figures["curves"] = curves_figure(rows)

    paths = []
    for name, fig in figures.items():
        image = render(fig)
        png = encode_png(image)  # the same file goes to figures/ and to TensorBoard
        path = out_dir / f"{name}.png"
        atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
        paths.append(path)
        if writer is not None:
            writer.file_writer.add_summary(image_summary(f"figures/{name}", png, *image.shape[:2]), step)
    return paths


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


def image_summary(tag: str, png: bytes, height: int, width: int):
    """A TensorBoard image summary holding `png` as it is (what SummaryWriter.add_image builds after encoding
    the array itself; the PNG is encoded once for both)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
