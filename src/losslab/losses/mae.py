"""Mean absolute error (Ghosh et al. 2017): the L1 distance between the prediction and the one-hot label, a loss
robust to symmetric label noise.

    L = Σ_k |p̂_k - e_{y,k}| = 2·(1 - p̂_y)    (batch mean),   p̂ = softmax(z)

No hyperparameters. 1 - p̂_y is exact where p̂_y rounds to 1 (`losslab.losses.base.label_log_probs`).
Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

from dataclasses import dataclass

import torch

from losslab.config.registry import schema
from losslab.losses.base import SoftmaxLoss, label_log_probs, log_softmax


@schema("loss", "mae")
@dataclass
class MAEConf:
    _target_: str = "losslab.losses.MeanAbsoluteError"


def mean_absolute_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch mean of 2·(1 - p̂_y); over leading member dims."""
    _, log_rest = label_log_probs(log_softmax(logits), y)
    return 2 * log_rest.exp().mean(-1)


class MeanAbsoluteError(SoftmaxLoss):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mean_absolute_error(logits, y)
