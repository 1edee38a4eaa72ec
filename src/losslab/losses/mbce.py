"""Multi-binary cross-entropy: one independent sigmoid per class, a one-vs-rest BCE on each.

    L = -(1/K) Σ_k [e_{y,k} log σ(z_k) + (1 - e_{y,k}) log(1 - σ(z_k))]    (batch mean)

Head: K outputs. Prediction: argmax_k σ(z_k) (= argmax_k z_k); confidences: p̂_k = σ(z_k) / Σ_j σ(z_j), the
per-class sigmoids normalised to sum to one, with log-probabilities ln p̂_k = ln σ(z_k) - logsumexp_j ln σ(z_j).
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


def normalised_sigmoid_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """ln(σ(z_k) / Σ_j σ(z_j)) = ln σ(z_k) - logsumexp_j ln σ(z_j): exact where σ(z_k) rounds to 0 (z_k below
    about -88 in float32, -745 in float64)."""
    log_sigmoid = F.logsigmoid(logits)
    return log_sigmoid - log_sigmoid.logsumexp(-1, keepdim=True)


class MultiBinaryCrossEntropy(Loss):
    scaled_probs_formula = "σ(z/T) / Σ_k σ(z_k/T)"
    @staticmethod
    def head_size(num_classes: int) -> int:
        return num_classes

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return multi_binary_cross_entropy(logits, y)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return normalised_sigmoid_log_probs(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return top_class(logits)  # the probabilities increase with each logit
