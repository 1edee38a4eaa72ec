"""The tasks a config's `dataset.name` picks: which source a task reads, how many classes it has, and how it filters
and relabels each split of that source. Each dataset module registers its own with `@task`."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

Derive = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Task(NamedTuple):
    source: str  # the name its reader is registered under (losslab.data.sources.READERS)
    num_classes: int  # 0: the config says (dataset.num_classes)
    derive: Derive  # (images, labels) of one split of the source -> the task's
    flips: dict[int, int] | None  # asymmetric label noise: class -> the class its labels flip to (None: not defined)


TASKS: dict[str, Task] = {}  # dataset.name -> its task


def task(name: str, source: str, num_classes: int, flips: dict[int, int] | None = None):
    """Function decorator: `derive(x, y)` makes task `name` of source `source`; `flips`, the class-conditional
    flips of its asymmetric label noise (losslab.data.label_noise), where the literature defines them."""

    def add(derive: Derive) -> Derive:
        TASKS[name] = Task(source, num_classes, derive, flips)
        return derive

    return add
