"""Synthetic data: Gaussian clusters around random class prototypes (dataset=synthetic), for tests and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from losslab.config.registry import schema
from losslab.data.schema import DatasetConf
from losslab.data.sources import Source
from losslab.data.tasks import task


@schema("dataset", "synthetic")
@dataclass
class SyntheticConf(DatasetConf):
    name: str = "synthetic"
    shape: list[int] = field(default_factory=lambda: [1, 16, 16])
    num_classes: int = 4
    train_n: int = 2048
    test_n: int = 512
    noise: float = 40.0  # pixel std around each class prototype (0..255 scale)
    val_size: int = 256


def synthetic_source(cfg: DictConfig) -> Source:
    """Gaussian clusters around random class prototypes, quantised to uint8 images of `cfg.shape`."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    prototypes = torch.rand(cfg.num_classes, *cfg.shape, generator=g) * 255

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(cfg.num_classes, (n,), generator=g)
        x = prototypes[y] + cfg.noise * torch.randn(n, *cfg.shape, generator=g)
        return x.round().clamp(0, 255).to(torch.uint8), y

    return Source(*sample(cfg.train_n), *sample(cfg.test_n))


@task("synthetic", source="synthetic", num_classes=0)
def clusters(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y
