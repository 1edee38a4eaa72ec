"""Generalised cross-entropy (Zhang & Sabuncu 2018): the negative Box-Cox transform of p̂_y, from cross-entropy
(q → 0) to the label-noise-robust mean absolute error (q = 1: 1 - p̂_y, half of mae).

    L = (1 - p̂_y^q) / q    (batch mean),   p̂ = softmax(z)

q = loss.q in (0, 1] (default 0.7, the paper's); the paper's truncated variant is not included.
p̂_y^q = exp(q·ln p̂_y), with ln p̂_y exact where p̂_y rounds to 1 (`losslab.losses.base.label_log_probs`), and
1 - p̂_y^q taken without cancelling (`one_minus_exp`).
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

import math
from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, hold_per_member, label_log_probs, log_softmax


@schema("loss", "gce")
@dataclass
class GCEConf:
    _target_: str = "losslab.losses.GeneralisedCrossEntropy"
    q: float = 0.7  # q in (0, 1]: (1 - p̂_y^q) / q; q → 0 is cross-entropy, q = 1 is 1 - p̂_y


def generalised_cross_entropy(logits: torch.Tensor, y: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The batch mean of (1 - p̂_y^q) / q; over leading member dims, with q one per member."""
    log_label, _ = label_log_probs(log_softmax(logits), y)
    q = q.unsqueeze(-1)
    return (one_minus_exp(q * log_label) / q).mean(-1)


def one_minus_exp(x: torch.Tensor) -> torch.Tensor:
    """1 - e^x for x ≤ 0, exact in value and gradient: -expm1(x) above -ln 2, where 1 - e^x would cancel, and
    1 - e^x below, where torch takes expm1's gradient as expm1(x) + 1, which cancels there."""
    return torch.where(x > -math.log(2), -torch.expm1(x), 1 - torch.exp(x))


class GeneralisedCrossEntropy(SoftmaxLoss):
    def __init__(self, q: float = 0.7):
        super().__init__()
        require(0 < q <= 1, f"loss.q must be in (0, 1] (q → 0 is cross-entropy: loss=ce), got {q}.")
        hold_per_member(self, q=q)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return generalised_cross_entropy(logits, y, self.q.to(logits.dtype))
