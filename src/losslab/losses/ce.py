"""Cross-entropy, with optional label smoothing (Szegedy et al. 2016): the cross-entropy against the target
(1 - ε)·e_y + ε/K, K classes.

    L = (1 - ε)·(-ln p̂_y) + ε·(1/K)·Σ_k (-ln p̂_k),   p̂ = softmax(z)     (batch mean)

ε = loss.label_smoothing in [0, 1); ε = 0 (the default) is plain cross-entropy -ln p̂_y.
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂ (smoothing changes the loss, not the probabilities:
val/nll stays -ln p̂_y and differs from val/loss when ε > 0).
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, hold_per_member, log_softmax, mean_cross_entropy, mean_nll


@schema("loss", "ce")
@dataclass
class CEConf:
    _target_: str = "losslab.losses.CrossEntropy"
    label_smoothing: float = 0.0  # ε in [0, 1): cross-entropy against the target (1 - ε)·e_y + ε/K


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The batch mean of (1 - ε)·(-ln p̂_y) + ε·mean_k(-ln p̂_k); over leading member dims, with ε one per member."""
    log_p = log_softmax(logits)
    return (1 - label_smoothing) * mean_nll(log_p, y) - label_smoothing * log_p.mean((-2, -1))


class CrossEntropy(SoftmaxLoss):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        require(0 <= label_smoothing < 1, f"loss.label_smoothing must be in [0, 1), got {label_smoothing}.")
        hold_per_member(self, label_smoothing=label_smoothing)
        self.smoothing_read_from, self.any_smoothing = None, False  # see smooths()

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.smooths():
            return mean_cross_entropy(logits, y)
        return cross_entropy(logits, y, self.label_smoothing.to(logits.dtype))

    def smooths(self) -> bool:
        """Whether any ε > 0 (a stack holds one per member). Read from the buffer once per buffer tensor, not
        every step, since reading a GPU tensor waits for the GPU: ε is the config's constant. Without smoothing the
        loss skips the ε-terms, a third of a stacked step's loss ops."""
        if self.smoothing_read_from is not self.label_smoothing:
            self.smoothing_read_from, self.any_smoothing = self.label_smoothing, bool(self.label_smoothing.any())
        return self.any_smoothing
