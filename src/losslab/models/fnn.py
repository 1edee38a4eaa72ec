"""Fully connected network: hidden layers of `hidden` sizes, each Linear -> activation -> dropout."""

from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.models.init import init_weights, make_activation


@schema("model", "fnn")
@dataclass
class FNNConf:
    _target_: str = "losslab.models.FNN"
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"  # relu | tanh | sigmoid | gelu
    dropout: float = 0.0
    init: str = "default"
    init_std: float = 0.01


class FNN(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_outputs: int,
        hidden: tuple[int, ...] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
        init_std: float = 0.01,
    ):
        super().__init__()
        layers, width = [nn.Flatten()], prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
