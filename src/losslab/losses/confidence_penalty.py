"""Confidence penalty (Pereyra et al. 2017): cross-entropy minus β times the entropy of the prediction, which
penalises confident (low-entropy) output distributions; min_ent adds the entropy term with the opposite sign.

    L = -ln p̂_y - β·H(p̂),   H(p̂) = -Σ_k p̂_k ln p̂_k    (batch mean),   p̂ = softmax(z)

β = loss.beta ≥ 0 (default 0.1; the paper tunes β per task); β = 0 is cross-entropy. The paper's hinged variant
(a penalty only below an entropy threshold) is not included. H is taken from log_softmax(z), without min_ent's ε.
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, hold_per_member, log_softmax, mean_nll


@schema("loss", "confidence_penalty")
@dataclass
class ConfidencePenaltyConf:
    _target_: str = "losslab.losses.ConfidencePenalty"
    beta: float = 0.1  # β ≥ 0: the weight of the entropy subtracted from cross-entropy


def confidence_penalty(logits: torch.Tensor, y: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The batch mean of -ln p̂_y + β·Σ_k p̂_k ln p̂_k; over leading member dims, with β one per member."""
    log_p = log_softmax(logits)
    negative_entropy = (log_p.exp() * log_p).sum(-1)
    return mean_nll(log_p, y) + beta * negative_entropy.mean(-1)


class ConfidencePenalty(SoftmaxLoss):
    def __init__(self, beta: float = 0.1):
        super().__init__()
        require(beta >= 0, f"loss.beta must be >= 0, got {beta}.")
        hold_per_member(self, beta=beta)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return confidence_penalty(logits, y, self.beta.to(logits.dtype))
