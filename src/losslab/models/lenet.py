"""LeNet-5: conv 6@5x5 (padding 2) -> pool -> conv 16@5x5 -> pool -> FC 120 -> FC 84 -> FC K."""

from dataclasses import dataclass

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.models.init import init_weights, make_activation
from losslab.models.shapes import flat_features


@schema("model", "lenet")
@dataclass
class LeNetConf:
    _target_: str = "losslab.models.LeNet"
    activation: str = "relu"
    init: str = "default"
    init_std: float = 0.01


class LeNet(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_outputs: int,
        activation: str = "relu",
        init: str = "default",
        init_std: float = 0.01,
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 6, 5, padding=2), make_activation(activation), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), make_activation(activation), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(flat_features(self.features, in_shape, "lenet"), 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, num_outputs),
        )
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
