"""Focal loss (Lin et al. 2017): cross-entropy scaled down on the examples the model already predicts with
confidence, so that training weighs the hard ones.

    L = -(1 - p̂_y)^γ · ln p̂_y    (batch mean),   p̂ = softmax(z)

γ = loss.gamma ≥ 0 (default 2, the paper's); γ = 0 is cross-entropy. Without the paper's class weight α.
(1 - p̂_y)^γ = exp(γ·ln(1 - p̂_y)), with ln p̂_y and ln(1 - p̂_y) exact where p̂_y rounds to 1
(`losslab.losses.base.label_log_probs`); the gradient stays finite there for γ < 1, where (1 - p̂_y)^(γ-1) is not.
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, hold_per_member, label_log_probs, log_softmax


@schema("loss", "focal")
@dataclass
class FocalConf:
    _target_: str = "losslab.losses.Focal"
    gamma: float = 2.0  # γ ≥ 0: the weight (1 - p̂_y)^γ of -ln p̂_y; 0 is cross-entropy


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The batch mean of -(1 - p̂_y)^γ ln p̂_y; over leading member dims, with γ one per member."""
    log_label, log_rest = label_log_probs(log_softmax(logits), y)
    return -(torch.exp(gamma.unsqueeze(-1) * log_rest) * log_label).mean(-1)


class Focal(SoftmaxLoss):
    def __init__(self, gamma: float = 2.0):
        super().__init__()
        require(gamma >= 0, f"loss.gamma must be >= 0, got {gamma}.")
        hold_per_member(self, gamma=gamma)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, y, self.gamma.to(logits.dtype))
