"""Evaluating a model on a split: the metrics of losslab.evaluation.metrics and each example's top-label confidence and
correctness (what the reliability figures and calibration read), from one pass in eval mode. Nothing here
decides anything: the loop reads the numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from losslab.evaluation.metrics import SplitMetrics
from losslab.evaluation.precision import autocast
from losslab.fileio import atomic_write


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confidence: torch.Tensor  # (N,) the loss's probability of its predicted class
    correct: torch.Tensor  # (N,) bool: the loss's prediction is the label


@torch.no_grad()
def split_logits(model, x, y, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 logits of the split `x, y` in eval mode and their labels, in batches of trainer
    `settings.eval_batch_size` (only the first `settings.limit_eval_batches` if set), at `settings.precision`.
    The logits are (N, K), or (M, N, K) for a model of M stacked members (losslab.stacking.steppers.StackedStepper)."""
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
    return evaluate_logits(loss_fn, *split_logits(model, x, y, settings), settings)[0]


@torch.no_grad()
def evaluate_logits(loss_fn, logits, y, settings) -> list[Evaluation]:
    """The metrics of a split's logits and its (N,) labels, the loss batch by batch, as training sees it, the
    others from the loss's log-probabilities of the logits in float64: of one model's (N, K) logits, or of M
    stacked members' (M, N, K) with the stack's loss (losslab.stacking.steppers.stacked_loss), each member's from
    its own slice; one Evaluation per model."""
    members, batch_size = logits.shape[0] if logits.ndim == 3 else None, settings.eval_batch_size
    labels = y.expand(logits.shape[:-1])
    metrics, confidence, correct = SplitMetrics(logits.device, members=members), [], []
    for start in range(0, labels.shape[-1], batch_size):
        zb, yb = logits[..., start:start + batch_size, :], labels[..., start:start + batch_size]
        top, hits = metrics.update(loss_fn.log_probs(zb.double()), loss_fn.predict(zb), yb, loss_fn(zb, yb))
        confidence.append(top)
        correct.append(hits.bool())
    confidence, correct = torch.cat(confidence, -1), torch.cat(correct, -1)
    return [Evaluation(result, top, hits) for result, top, hits in
            zip(metrics.results(), confidence.reshape(-1, labels.shape[-1]), correct.reshape(-1, labels.shape[-1]))]


def save_predictions(path, evaluation: Evaluation) -> None:
    """`confidence` (float32) and `correct` (bool) per example, as an .npz (what the figures are drawn from)."""
    arrays = {"confidence": evaluation.confidence.float().cpu().numpy(), "correct": evaluation.correct.cpu().numpy()}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
