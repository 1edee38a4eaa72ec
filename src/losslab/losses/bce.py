"""Binary cross-entropy on a single logit s (binary tasks only).

    L = -[t log σ(s) + (1 - t) log(1 - σ(s))]    (batch mean), t ∈ {0, 1} the class index

Head: 1 output. Prediction: class 1 iff σ(s) ≥ 0.5 (s ≥ 0); confidences: (1 - σ(s), σ(s)), whose logarithms
(ln σ(-s), ln σ(s)) are the log-probabilities, so val/nll is the loss itself.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losslab.config.registry import schema
from losslab.losses.base import Loss, sigmoid_log_probs, sign_class


@schema("loss", "bce")
@dataclass
class BCEConf:
    _target_: str = "losslab.losses.BinaryCrossEntropy"


def binary_cross_entropy(logit: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit.squeeze(-1), t.to(logit.dtype), reduction="none").mean(-1)


class BinaryCrossEntropy(Loss):
    binary_only = True
    scaled_probs_formula = "(1 - σ(s/T), σ(s/T))"

    @staticmethod
    def head_size(num_classes: int) -> int:
        return 1

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy(logits, y)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return sigmoid_log_probs(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return sign_class(logits)
