"""Multi-binary cross-entropy: one independent sigmoid per class, a one-vs-rest BCE on each.

    L = -(1/K) Σ_k [e_{y,k} log σ(z_k) + (1 - e_{y,k}) log(1 - σ(z_k))]    (batch mean)

Head: K outputs. Prediction: argmax_k σ(z_k) (= argmax_k z_k); confidences: σ(z) / Σ_k σ(z_k), the
per-class sigmoids normalised to sum to one.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losslab.config.registry import schema
from losslab.losses.base import Loss, top_class


@schema("loss", "mbce")
@dataclass
class MBCEConf:
    _target_: str = "losslab.losses.MultiBinaryCrossEntropy"


def multi_binary_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    targets = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((-2, -1))


class MultiBinaryCrossEntropy(Loss):
    scaled_probs_formula = "σ(z/T) / Σ_k σ(z_k/T)"
    @staticmethod
    def head_size(num_classes: int) -> int:
        return num_classes

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return multi_binary_cross_entropy(logits, y)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(logits)
        return s / s.sum(-1, keepdim=True)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return top_class(logits)  # the probabilities increase with each logit
