"""Figures of a run: weight templates, confidence histograms, reliability diagram, training curves.

`write_figures` collects what the figures show from the model (its weights, its predictions on one
split) and the metrics.csv rows, has losslab.drawing draw them (here, or side by side in a process pool),
saves the PNGs and adds them to TensorBoard; `start_figures` is the same in two halves, so a stack of runs
draws all its members' figures at once.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from losslab.drawing import draw_png, evaluations, warm_up
from losslab.fileio import atomic_write
from losslab.metrics import ECE_BINS
from losslab.models import DualLinear, Linear

log = logging.getLogger("losslab")


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
    return weights.detach().float().cpu().numpy().reshape(-1, *shape).copy(), names  # not a view of the model


def read_rows(metrics_csv: Path) -> list[dict]:
    """The rows of a run's metrics.csv (values as strings, "" where empty); none if there is no file yet."""
    if not metrics_csv.exists():
        return []
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def write_figures(out_dir: Path, model, loss_fn, data, rows: list[dict], writer=None, step: int = 0,
                  split: str = "test", pool=None) -> list[Path]:
    """Draw the figures of `model` on `split` and `rows`, write them as `out_dir/<name>.png` and, with a
    SummaryWriter, as TensorBoard images `figures/<name>` at `step`; return the PNG paths. Figures that do
    not apply are left out: templates for a model that is not linear, curves without evaluation rows, and
    anything drawn from weights or predictions that are not finite. With a process pool (an Executor), the
    figures are drawn side by side in its workers (see `drawing_pool`)."""
    return start_figures(model, loss_fn, data, rows, split, pool).save(out_dir, writer, step)


def start_figures(model, loss_fn, data, rows: list[dict], split: str = "test", pool=None) -> StartedFigures:
    """write_figures in two halves: take what the figures show from the model now, and start drawing them in
    `pool`'s workers; `.save(out_dir, writer, step)` waits for them and writes them. In between, the model
    may change and other runs' figures may be started, so several runs' figures are drawn side by side."""
    return StartedFigures(figure_inputs(model, loss_fn, data, rows, split), pool)


class StartedFigures:
    """Figures whose inputs are taken, being drawn in a process pool's workers (or here, by `save`, without
    one or when its workers died: a broken pool never costs a run its figures)."""

    def __init__(self, plots: dict[str, tuple[str, tuple]], pool=None):
        self.plots, self.futures, self.broken = plots, None, None
        if pool is not None and plots:
            from concurrent.futures.process import BrokenProcessPool

            try:
                self.futures = [pool.submit(draw_png, drawer, args) for drawer, args in plots.values()]
            except BrokenProcessPool as e:
                self.broken = e

    def save(self, out_dir: Path, writer=None, step: int = 0) -> list[Path]:
        drawn = None
        if self.futures is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                drawn = [future.result() for future in self.futures]
            except BrokenProcessPool as e:  # a worker died (killed, out of memory)
                self.broken = e
        if self.broken is not None:
            log.warning("the figure-drawing workers stopped (%s); drawing %s here", self.broken, out_dir)
        if drawn is None:
            drawn = [draw_png(drawer, args) for drawer, args in self.plots.values()]
        paths = []
        for name, (png, height, width) in zip(self.plots, drawn):  # the same PNG goes to figures/ and TensorBoard
            path = out_dir / f"{name}.png"
            atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
            paths.append(path)
            if writer is not None:
                writer.file_writer.add_summary(image_summary(f"figures/{name}", png, height, width), step)
        return paths


def figure_inputs(model, loss_fn, data, rows: list[dict], split: str) -> dict[str, tuple[str, tuple]]:
    """What each figure is drawn from: {name: (drawing function's name, its arguments)}, as numpy arrays
    and rows (the part that needs the model; drawing needs only these)."""
    plots = {}
    templates = weight_templates(model, data.shape)
    if templates is not None and np.isfinite(templates[0]).all():
        plots["weight_templates"] = ("templates_figure", templates)
    confidence, correct = top_label(model, loss_fn, *data.split(split))
    if np.isfinite(confidence).all():
        plots[f"confidence_histogram_{split}"] = ("confidence_figure", (confidence, correct, split))
        plots[f"reliability_{split}"] = ("reliability_figure", (confidence, correct, split, ECE_BINS))
    else:
        log.warning("the model's predictions on %s are not finite (it diverged): no confidence figures", split)
    if evaluations(rows):
        plots["curves"] = ("curves_figure", (rows,))
    return plots


def drawing_pool(workers: int):
    """A pool of `workers` processes that draw figures (write_figures(pool=...)): matplotlib drawing is
    single-threaded Python, so a stack of M jobs, 4 figures each, draws them side by side. The workers are
    fresh interpreters (spawn: no copy of the parent's threads or CUDA state) that import losslab.drawing
    and matplotlib, not torch, and they start now, while the stack trains."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=warm_up)
    for _ in range(workers):
        pool.submit(int)  # a trivial task per worker starts it now; its initializer does the warming up
    return pool


def image_summary(tag: str, png: bytes, height: int, width: int):
    """A TensorBoard image summary holding `png` as it is (what SummaryWriter.add_image builds after encoding
    the array itself; the PNG is encoded once for both)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
