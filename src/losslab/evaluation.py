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
def evaluate(model, loss_fn, x, y, settings) -> Evaluation:
    """The split `x, y` in eval mode, in batches of trainer `settings.eval_batch_size` (only the first
    `settings.limit_eval_batches` if set), at `settings.precision`."""
    batch_size, limit, precision = settings.eval_batch_size, settings.limit_eval_batches, settings.precision
    was_training = model.training
    model.eval()
    metrics, confidence, correct = SplitMetrics(x.device), [], []
    for i, start in enumerate(range(0, len(y), batch_size)):
        if limit is not None and i >= limit:
            break
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with autocast(x.device, precision):
            logits = model(xb)
        logits = logits.float()
        top, hits = metrics.update(loss_fn.probs(logits), yb, loss_fn(logits, yb))
        confidence.append(top)
        correct.append(hits.bool())
    model.train(was_training)
    return Evaluation(metrics.result(), torch.cat(confidence), torch.cat(correct))


def save_predictions(path, evaluation: Evaluation) -> None:
    """`confidence` (float32) and `correct` (bool) per example, as an .npz (what the figures are drawn from)."""
    arrays = {"confidence": evaluation.confidence.float().cpu().numpy(), "correct": evaluation.correct.cpu().numpy()}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
