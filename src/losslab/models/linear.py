"""Logistic / softmax regression: one affine map of the flattened image."""

from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.models.init import init_weights


@schema("model", "linear")
@dataclass
class LinearConf:
    _target_: str = "losslab.models.Linear"
    init: str = "default"  # default | zeros | normal
    init_std: float = 0.01


class Linear(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], num_outputs: int, init: str = "default", init_std: float = 0.01):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.fc = nn.Linear(prod(in_shape), num_outputs)
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
