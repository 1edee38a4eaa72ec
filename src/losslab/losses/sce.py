"""Symmetric cross-entropy (Wang et al. 2019): cross-entropy plus the reverse cross-entropy, in which prediction
and one-hot label swap roles and ln 0 is replaced by a constant A < 0.

    L = α·CE + β·RCE    (batch mean),   p̂ = softmax(z)
    CE = -ln p̂_y,   RCE = -Σ_k p̂_k ln e_{y,k} with ln 0 := A,   i.e.   RCE = -A·(1 - p̂_y)

α = loss.alpha ≥ 0, β = loss.beta ≥ 0 (not both 0), A = loss.log_zero < 0; the defaults 0.1, 1, -4 are the
paper's for CIFAR-10. mix_ent's RCE is this RCE with A = ln ε, up to its ln(1 + ε) on the label's term.
ln p̂_y and 1 - p̂_y are exact where p̂_y rounds to 1 (`losslab.losses.base.label_log_probs`).
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, hold_per_member, label_log_probs, log_softmax


@schema("loss", "sce")
@dataclass
class SCEConf:
    _target_: str = "losslab.losses.SymmetricCrossEntropy"
    alpha: float = 0.1  # α ≥ 0: the weight of CE
    beta: float = 1.0  # β ≥ 0: the weight of RCE
    log_zero: float = -4.0  # A < 0: what RCE takes for ln 0 (the paper's A)


def symmetric_cross_entropy(logits: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                            log_zero: torch.Tensor) -> torch.Tensor:
    """The batch mean of α·(-ln p̂_y) + β·(-A)·(1 - p̂_y); over leading member dims, with α, β, A one per member."""
    log_label, log_rest = label_log_probs(log_softmax(logits), y)
    return alpha * -log_label.mean(-1) + beta * -log_zero * log_rest.exp().mean(-1)


class SymmetricCrossEntropy(SoftmaxLoss):
    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0):
        super().__init__()
        require(alpha >= 0, f"loss.alpha must be >= 0, got {alpha}.")
        require(beta >= 0, f"loss.beta must be >= 0, got {beta}.")
        require(alpha + beta > 0, f"loss.alpha + loss.beta must be > 0, got {alpha} + {beta}.")
        require(log_zero < 0, f"loss.log_zero must be < 0 (it stands for ln 0), got {log_zero}.")
        hold_per_member(self, alpha=alpha, beta=beta, log_zero=log_zero)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        numbers = (self.alpha, self.beta, self.log_zero)
        return symmetric_cross_entropy(logits, y, *(number.to(logits.dtype) for number in numbers))
