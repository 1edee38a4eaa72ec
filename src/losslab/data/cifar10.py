"""CIFAR-10 (Krizhevsky 2009), read from its python batches through torchvision."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from losslab.data.sources import Source, check_labels, download_files, missing_files, reader
from losslab.data.tasks import task
from losslab.errors import DataError

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@reader("cifar10", [f"cifar-10-batches-py/{f}" for f in CIFAR10_FILES])
def read_cifar10(root: Path, download: bool) -> Source:
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (folder / f).exists()]
    how = "download cifar-10-python.tar.gz from the CIFAR-10 page and unpack it in " + str(root)
    if missing and not download:
        raise missing_files("CIFAR-10", folder, missing, how + " or set dataset.download=true")
    if missing:
        download_files("CIFAR-10", folder, lambda: CIFAR10(root, train=True, download=True), how)
    splits = []
    for train in (True, False):
        try:
            ds = CIFAR10(root, train=train)
        except RuntimeError as e:
            raise DataError(
                f"CIFAR-10 files in {folder} failed torchvision's checksum check ({e}); "
                f"delete the folder and download it again."
            ) from e
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise DataError(f"a CIFAR-10 batch in {folder} cannot be unpickled ({e}); download it again.") from e
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(ds.targets, dtype=torch.int64)
        check_labels(y, 0, 9, folder / ("data_batch_*" if train else "test_batch"))
        splits += [x, y]
    return Source(*splits)


# asymmetric label noise (Patrini et al. 2017): truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog
@task("cifar10", source="cifar10", num_classes=10, flips={9: 1, 2: 0, 4: 7, 3: 5, 5: 3})
def classes(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, y
