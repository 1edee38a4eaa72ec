"""MIX-ENT: cross-entropy plus the reverse (swapped) cross-entropy, each in its own log base.

    L = β1·CE_{b1} + β2·RCE_{b2}    (batch mean),   p̂ = softmax(z)
    CE_b = -ln p̂_y / ln b,   RCE_b = -Σ_k p̂_k ln(e_{y,k} + ε) / ln b

RCE = H(p̂) + KL(p̂ ‖ e_y) with both logs taken of (· + ε).
Coefficients and bases are fixed or learnable (see `losslab.losses.entropy`).
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losslab.config.registry import schema
from losslab.losses.entropy import EntropyLoss, EntropyLossConf


@schema("loss", "mix_ent")
@dataclass
class MixEntConf(EntropyLossConf):
    _target_: str = "losslab.losses.MixEntropy"


def reverse_cross_entropy(probs: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """-Σ_k p̂_k ln(e_{y,k} + ε) per sample, in nats."""
    onehot = F.one_hot(y, probs.shape[-1]).to(probs.dtype)
    return -(probs * (onehot + eps).log()).sum(-1)


class MixEntropy(EntropyLoss):
    def second_term(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return reverse_cross_entropy(probs, y, self.eps)
