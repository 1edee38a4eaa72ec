"""Evaluating a model on a split: the metrics of losslab.metrics and each example's top-label confidence and
correctness (what the reliability figures and calibration read), from one pass in eval mode. Nothing here
decides anything: the loop reads the numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from losslab.fileio import atomic_write
from losslab.metrics import SplitMetrics
from losslab.runtime import autocast


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confidence: torch.Tensor  # (N,) the top value of the loss's probs
    correct: torch.Tensor  # (N,) bool: its argmax is the label


@torch.no_grad()
def split_logits(model, x, y, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 logits of the split `x, y` in eval mode and their labels, in batches of trainer
    `settings.eval_batch_size` (only the first `settings.limit_eval_batches` if set), at `settings.precision`.
    The logits are (N, K), or (M, N, K) for a model of M stacked members (losslab.steppers.StackedStepper)."""
    batch_size, limit, precision = settings.eval_batch_size, settings.limit_eval_batches, settings.precision
    starts = range(0, len(y), batch_size)[:limit]
    was_training = model.training
    model.eval()
    logits = []
    for start in starts:
        with autocast(x.device, precision):
            logits.append(model(x[start:start + batch_size]).float())
    model.train(was_training)
    logits = torch.cat(logits, dim=-2)
    return logits, y[:logits.shape[-2]]


@torch.no_grad()
def evaluate(model, loss_fn, x, y, settings) -> Evaluation:
    """The split `x, y` as `split_logits` computes it; the loss batch by batch, as training sees it."""
    return evaluate_logits(loss_fn, *split_logits(model, x, y, settings), settings)


@torch.no_grad()
def evaluate_logits(loss_fn, logits, y, settings) -> Evaluation:
    """The metrics of a split's (N, K) logits and labels; the loss batch by batch, as training sees it."""
    metrics, confidence, correct = SplitMetrics(logits.device), [], []
    for start in range(0, len(y), settings.eval_batch_size):
        zb, yb = logits[start:start + settings.eval_batch_size], y[start:start + settings.eval_batch_size]
        top, hits = metrics.update(loss_fn.probs(zb), yb, loss_fn(zb, yb))
        confidence.append(top)
        correct.append(hits.bool())
    return Evaluation(metrics.result(), torch.cat(confidence), torch.cat(correct))


def save_predictions(path, evaluation: Evaluation) -> None:
    """`confidence` (float32) and `correct` (bool) per example, as an .npz (what the figures are drawn from)."""
    arrays = {"confidence": evaluation.confidence.float().cpu().numpy(), "correct": evaluation.correct.cpu().numpy()}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
