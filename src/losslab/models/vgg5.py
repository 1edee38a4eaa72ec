"""VGG-5: 3x3 conv + BatchNorm + ReLU in blocks 64-64 | 128-128 | 256-256-256 | 256-256-256, each block
ending in a 2x2 max-pool, then Dropout -> Linear(., 512) -> BatchNorm -> ReLU -> Dropout -> Linear(512, K)."""

from dataclasses import dataclass

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.models.init import init_weights
from losslab.models.shapes import flat_features


@schema("model", "vgg5")
@dataclass
class VGG5Conf:
    _target_: str = "losslab.models.VGG5"
    dropout: float = 0.5
    init: str = "default"
    init_std: float = 0.01

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (256, 256, 256))


class VGG5(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_outputs: int,
        dropout: float = 0.5,
        init: str = "default",
        init_std: float = 0.01,
    ):
        super().__init__()
        layers, channels = [], in_shape[0]
        for block in BLOCKS:
            for width in block:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(flat_features(self.features, in_shape, "vgg5"), 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_outputs),
        )
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
