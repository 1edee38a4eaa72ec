"""MNIST (LeCun et al.), shipped gzipped under data/MNIST/raw/, and the tasks made of it: the ten digits,
even vs odd, and 2 vs 3 (the course protocols)."""

from __future__ import annotations

from pathlib import Path

import torch

from losslab.config import REPO_ROOT
from losslab.data.sources import Source, read_idx_dataset, reader
from losslab.data.tasks import task

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@reader("mnist", [f"MNIST/raw/{f}" for f in MNIST_FILES])
def read_mnist(root: Path, download: bool) -> Source:
    from torchvision.datasets import MNIST

    train, test = read_idx_dataset(
        "MNIST", root / "MNIST" / "raw", MNIST_FILES,
        lambda train, download: MNIST(root, train=train, download=download),
        "the repo ships them gzipped under data/MNIST/raw/ (restore them with git checkout)" if shipped(root)
        else "copy MNIST's four IDX files there (the repo ships them under data/MNIST/raw/)", download, (0, 9),
    )
    return Source(train.data[:, None], train.targets, test.data[:, None], test.targets)


def shipped(root: Path) -> bool:
    """Whether `root` is the repo's data/, where MNIST ships."""
    return root.resolve() == (REPO_ROOT / "data").resolve()


# asymmetric label noise: the flips of Patrini et al. 2017 (also Han et al. 2018), digits that look alike
@task("mnist", source="mnist", num_classes=10, flips={2: 7, 3: 8, 5: 6, 6: 5, 7: 1})
def digits(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y


@task("mnist_even_odd", source="mnist", num_classes=2)
def even_odd(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 for an even digit, 0 for an odd one."""
    return x, (y % 2 == 0).long()


@task("mnist_2v3", source="mnist", num_classes=2)
def two_vs_three(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the 2s and 3s; class 1 for a 2."""
    keep = (y == 2) | (y == 3)
    return x[keep], (y[keep] == 2).long()
