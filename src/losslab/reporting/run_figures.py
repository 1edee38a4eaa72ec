"""Figures of a finished run, drawn after training from its files: weight templates, confidence histogram,
reliability diagram, training curves.

`draw_run_figures(run_dir)` reads what the figures show from the run dir alone:

- `.hydra/config.yaml`: trainer.figures, the model (templates only for Linear and DualLinear) and the dataset
  (the images' shape);
- `summary.json`: the status (only completed and early_stopped runs get figures) and the final step;
- `metrics.csv`: the curves;
- `predictions_test.npz` (`confidence`, `correct`, written by the run's final evaluation): the confidence
  histogram and the reliability diagram;
- the final weights (`checkpoints/best.pt` under early stopping, else `last.pt`): the weight templates.

It writes `<run dir>/figures/<name>.png` and adds each PNG to TensorBoard as the image `~figures/<name>` at
the run's final step; `runs_figures_drawn` does the same for a sweep's runs on every core. losslab-eval draws
the figures of a split from its own evaluation with `split_plots`.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from losslab.evaluation.metrics import ECE_BINS
from losslab.fileio import atomic_write
from losslab.records.run_dir import final_checkpoint
from losslab.records.summary import read_summary
from losslab.reporting.drawing import draw_plot, draw_plots, evaluations

log = logging.getLogger("losslab")

DRAWN_FOR = ("completed", "early_stopped")  # a diverged run's weights and predictions are not finite
PREDICTIONS = "predictions_test.npz"


# TensorBoard's Time Series dashboard sorts its cards by tag (character codes, with digits and "/" first), groups them
# by the tag's part before the first "/" and opens the first two groups: "~" comes after every letter, digit and "_",
# so the figures' group follows every scalar group (train/, val/, test/, lr, ...) and the first screen shows scalars.
FIGURE_TAG_PREFIX = "~figures"

MIN_RUNS_FOR_POOL = 8  # from about this many runs the workers' start-up pays (scripts/bench_figures.py measures it)


@dataclass
class RunPlots:
    """What a finished run's figures show, read from its files: figure name -> (the losslab.reporting.drawing function
    that draws it, its arguments), plain numpy arrays and strings, so that a worker that imports matplotlib
    and not torch can draw them."""

    run_dir: Path
    step: int
    plots: dict[str, tuple[str, tuple]]


def draw_run_figures(run_dir: Path, unset_draws: bool = True) -> list[Path]:
    """Draw a finished run's figures from its files, write them to `<run dir>/figures/` and to TensorBoard,
    and return the PNG paths; none for a run with trainer.figures=false (or unset, where `unset_draws` is off: a
    sweep's end) or a status other than completed or early_stopped. A figure whose file is missing or unreadable
    is left out with a log line."""
    run_plots = read_run_plots(Path(run_dir), unset_draws)
    return [] if run_plots is None else write_run_figures(run_plots, draw_plots(run_plots.plots))


@contextmanager
def runs_figures_drawn(run_dirs: list[Path], workers: int, unset_draws: bool = True):
    """The figures of several runs (the end of a sweep), drawn while the body runs and written when it ends.
    The files are read here, one run after the other; each figure is drawn by one of `workers` fresh processes
    (spawn: no copy of this process's threads or CUDA state) that import numpy and matplotlib, not torch.
    matplotlib drawing is single-threaded, so the figures are drawn on every core while this process goes on
    (with the sweep's report). Fewer than MIN_RUNS_FOR_POOL runs, or one core: drawn here, before the body.
    `unset_draws`: as for draw_run_figures."""
    if workers < 2 or len(run_dirs) < MIN_RUNS_FOR_POOL:
        for run_dir in run_dirs:
            draw_run_figures(run_dir, unset_draws)
        yield
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(run_dirs)), mp_context=context) as pool:
        drawing = []
        for run_dir in run_dirs:
            run_plots = read_run_plots(Path(run_dir), unset_draws)
            if run_plots is not None:
                drawing.append((run_plots, {name: pool.submit(draw_plot, *plot)
                                            for name, plot in run_plots.plots.items()}))
        try:
            yield
        finally:
            for run_plots, futures in drawing:
                write_run_figures(run_plots, {name: future.result() for name, future in futures.items()})


def read_run_plots(run_dir: Path, unset_draws: bool = True) -> RunPlots | None:
    """A finished run's plots from its files; None for a run without figures."""
    cfg = config_drawn(run_dir, unset_draws)  # first: a run without figures needs no word about its status
    if cfg is None:
        return None
    summary = read_summary(run_dir) or {}
    status = summary.get("status", "unfinished")
    if status not in DRAWN_FOR:
        log.info("%s: no figures for a run that is %s", run_dir, status)
        return None
    templates = run_templates(run_dir, cfg)
    predictions = read_predictions(run_dir / PREDICTIONS)
    plots = split_plots(templates, predictions, "test", read_rows(run_dir / "metrics.csv"))
    return RunPlots(run_dir, int(summary.get("steps", 0)), plots)


def split_plots(templates: tuple | None, predictions: tuple | None, split: str, rows: list[dict]) -> dict:
    """The plots of a model evaluated on a split: its weight templates (K, C, H, W) with their names, the
    confidence histogram and reliability diagram of its (confidence, correct) on `split`, and the curves of
    its metrics.csv rows; each left out where its input is None or empty."""
    plots = {}
    if templates is not None:
        plots["weight_templates"] = ("templates_figure", templates)
    if predictions is not None and not np.isfinite(predictions[0]).all():
        log.warning("the confidences on %s are not finite: no confidence histogram or reliability diagram", split)
    elif predictions is not None:
        plots[f"confidence_histogram_{split}"] = ("confidence_figure", (*predictions, split))
        plots[f"reliability_{split}"] = ("reliability_figure", (*predictions, split, ECE_BINS))
    if evaluations(rows):
        plots["curves"] = ("curves_figure", (rows,))
    return plots


def write_run_figures(run_plots: RunPlots, drawn: dict) -> list[Path]:
    return write_figures(drawn, run_plots.run_dir / "figures", tensorboard_dir=run_plots.run_dir,
                         step=run_plots.step)


def write_figures(drawn: dict, out_dir: Path, tensorboard_dir: Path | None = None, step: int = 0) -> list[Path]:
    """Each drawn figure (name -> (PNG, height, width)) written as `out_dir/<name>.png` and, with a
    `tensorboard_dir`, added there as the TensorBoard image `figure_tag(name)` at `step`."""
    paths = []
    for name, (png, _, _) in drawn.items():
        path = out_dir / f"{name}.png"
        atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
        paths.append(path)
    if tensorboard_dir is not None and drawn:
        from losslab.training.run_logger import import_tensorboard

        writer = import_tensorboard()[0](log_dir=str(tensorboard_dir))
        for name, (png, height, width) in drawn.items():
            writer.file_writer.add_summary(image_summary(figure_tag(name), png, height, width), step)
        writer.close()
    return paths


def figure_tag(name: str) -> str:
    """The TensorBoard tag of the figure `name`."""
    return f"{FIGURE_TAG_PREFIX}/{name}"


def config_drawn(run_dir: Path, unset_draws: bool = True) -> DictConfig | None:
    """The run's config when its figures are drawn: trainer.figures true, or null (unset) with `unset_draws`;
    None when not, when the config is absent, or unreadable (with a log line).
    trainer.figures is read from the plain YAML first, so a sweep without figures skips OmegaConf's load of every
    run's whole config."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():  # a job that never started: nothing to draw, nothing to say
        return None
    try:
        text = path.read_text()
        plain = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        figures = ((plain or {}).get("trainer") or {}).get("figures")
        if figures is False or (figures is None and not unset_draws):
            return None
        return OmegaConf.create(text)
    except (OSError, ValueError, yaml.YAMLError, AttributeError) as e:
        log.warning("%s: no figures, since its config %s is unreadable (%s)", run_dir, path, e)
        return None


def read_rows(metrics_csv: Path) -> list[dict]:
    """The rows of a run's metrics.csv (values as strings, "" where empty); none if there is no file."""
    if not metrics_csv.exists():
        return []
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(confidence, correct) of a predictions file, or None with a log line when it is missing or malformed."""
    if not path.exists():
        log.info("%s: no %s, so no confidence histogram or reliability diagram", path.parent, path.name)
        return None
    try:
        with np.load(path) as arrays:
            confidence, correct = arrays["confidence"], arrays["correct"].astype(bool)
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s is not a predictions file with arrays confidence and correct (%s): no confidence figures",
                    path, e)
        return None
    if confidence.shape != correct.shape or confidence.ndim != 1:
        log.warning("%s holds arrays of shapes %s and %s, not two of one length: no confidence figures", path,
                    confidence.shape, correct.shape)
        return None
    return confidence, correct


def run_templates(run_dir: Path, cfg: DictConfig) -> tuple[np.ndarray, list[str]] | None:
    """The weight templates of the run's final weights, or None for a model that is not linear in its input
    or weights that are missing, unreadable or not finite (with a log line)."""
    import torch
    from hydra.utils import get_class

    model_class = get_class(cfg.model._target_)
    if not is_linear(model_class):
        return None
    checkpoint = final_checkpoint(run_dir, cfg)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    except Exception as e:  # missing (trainer.checkpoints=false), or not a checkpoint
        log.info("%s: no weight templates, since %s is not a readable checkpoint (%s)", run_dir, checkpoint,
                 str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return None
    weights, names = weight_vectors(model_class, state)
    if not np.isfinite(weights).all():
        log.warning("%s: the final weights are not finite: no weight templates", run_dir)
        return None
    return weights.reshape(-1, *image_shape(cfg.dataset, weights.shape[1])), names


def is_linear(model_class: type) -> bool:
    """Whether the model is linear in its input, so that its weights are templates of images."""
    from losslab.models import DualLinear, Linear

    return issubclass(model_class, (Linear, DualLinear))


def weight_vectors(model_class: type, state: dict) -> tuple[np.ndarray, list[str]]:
    """The weight vector of each output (K, D) of a Linear or DualLinear model's state dict, with the outputs'
    names."""
    from losslab.models import Linear

    if issubclass(model_class, Linear):
        weights = state["fc.weight"]
        names = [f"class {k}" for k in range(len(weights))] if len(weights) > 1 else ["logit (class 1)"]
    else:
        weights, names = state["w1"] + state["G1"], ["w1 + G1"]
    return weights.detach().float().cpu().numpy(), names


def image_shape(dataset: DictConfig, features: int) -> tuple[int, int, int]:
    """(C, H, W) of the dataset's images: the synthetic data's `shape`; else square images of one or three
    channels (MNIST and EMNIST 1×28×28, CIFAR-10 3×32×32), told apart by the number of features."""
    if dataset.get("shape") is not None:
        return tuple(dataset.shape)
    for channels in (1, 3):
        side = math.isqrt(features // channels)
        if channels * side * side == features:
            return channels, side, side
    return 1, 1, features  # not square: one row of pixels


def image_summary(tag: str, png: bytes, height: int, width: int):
    """A TensorBoard image summary holding `png` as it is (what SummaryWriter.add_image builds after encoding
    the array itself; the PNG is encoded once for both)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
