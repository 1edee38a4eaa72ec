"""Cross-entropy.

    L = -log p̂_y,   p̂ = softmax(z)           (batch mean)

Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

import torch
import torch.nn.functional as F

from losslab.losses.base import Loss


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


class CrossEntropy(Loss):
    @staticmethod
    def head_size(num_classes: int) -> int:
        return num_classes

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, y)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)
