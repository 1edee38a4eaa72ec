"""EMNIST letters (Cohen et al. 2017): 26 classes of handwritten letters, read from NIST's IDX files."""

from __future__ import annotations

from pathlib import Path

import torch

from losslab.data.sources import Source, read_idx_dataset, reader
from losslab.data.tasks import task

EMNIST_LETTERS_FILES = [
    f"emnist-letters-{split}-{kind}-ubyte"
    for split in ("train", "test") for kind in ("images-idx3", "labels-idx1")
]


@reader("emnist_letters", [f"EMNIST/raw/{f}" for f in EMNIST_LETTERS_FILES])
def read_emnist_letters(root: Path, download: bool) -> Source:
    """EMNIST letters; labels 1..26 are kept here (the task maps them to 0..25), images are transposed upright."""
    from torchvision.datasets import EMNIST

    train, test = read_idx_dataset(
        "EMNIST letters", root / "EMNIST" / "raw", EMNIST_LETTERS_FILES,
        lambda train, download: EMNIST(root, split="letters", train=train, download=download),
        "download the EMNIST 'gzip.zip' from NIST and unpack the emnist-letters-* files there", download, (1, 26),
    )
    return Source(
        train.data.transpose(1, 2)[:, None].contiguous(), train.targets,
        test.data.transpose(1, 2)[:, None].contiguous(), test.targets,
    )


@task("emnist_letters", source="emnist_letters", num_classes=26)
def letters(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 1..26 as 0..25."""
    return x, y - 1
