"""MIN-ENT: cross-entropy plus the entropy of the prediction, each in its own log base.

    L = β1·CE_{b1} + β2·H_{b2}(p̂)    (batch mean),   p̂ = softmax(z)
    CE_b = -ln p̂_y / ln b,   H_b(p̂) = -Σ_k p̂_k ln(p̂_k + ε) / ln b

Coefficients and bases are fixed or learnable (see `losslab.losses.entropy`).
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.losses.entropy import EntropyLoss, EntropyLossConf


@schema("loss", "min_ent")
@dataclass
class MinEntConf(EntropyLossConf):
    _target_: str = "losslab.losses.MinEntropy"


def entropy(probs: torch.Tensor, eps: float) -> torch.Tensor:
    """-Σ_k p̂_k ln(p̂_k + ε) per sample, in nats."""
    return -(probs * (probs + eps).log()).sum(-1)


class MinEntropy(EntropyLoss):
    def second_term(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return entropy(probs, self.eps)
