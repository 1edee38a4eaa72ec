"""Label noise (`dataset.label_noise`), drawn with a generator of its own (`dataset.noise_seed`), so every training
seed and every loss trains on the same noisy labels:

- `symmetric`: each label is replaced, with probability r (`dataset.noise_rate`), by a class drawn uniformly from
  the K − 1 others;
- `asymmetric`: each label of a class in the task's flip map (losslab.data.tasks; MNIST's 2→7, 3→8, 5↔6, 7→1 and
  CIFAR-10's truck→automobile, bird→airplane, deer→horse, cat↔dog, after Patrini et al. 2017) is replaced, with
  probability r, by the class the map gives; the other classes keep their labels.

The train and the val labels are flipped, the test labels never: a user's validation labels are as noisy as their
training labels, so what is chosen on the val split (the best evaluation, early stopping) is chosen on noisy labels,
and the test split measures against the truth. The record of the draw (summary.json's `label_noise`, a TensorBoard
text entry) gives for each split its realised rate, the share of the labels the noise could change that it changed
(all of them for symmetric noise, those of the mapped classes for asymmetric), an estimate of r, and its flip
matrix: counts of (true class, label given).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from losslab.data.tasks import TASKS
from losslab.errors import ConfigError

NOISY_SPLITS = ("train", "val")


def flip_table(flips: dict[int, int], num_classes: int) -> torch.Tensor:
    """(K,) the class each class's labels flip to: `flips`' class where it names one, else the class itself."""
    table = torch.arange(num_classes)
    table[list(flips)] = torch.tensor(list(flips.values()))
    return table


def flip_labels(y: torch.Tensor, kind: str, rate: float, num_classes: int, flips: dict[int, int] | None,
                g: torch.Generator) -> torch.Tensor:
    """`y` with noise of `kind` at `rate`, drawn from `g`: the same draws for the same labels and generator state."""
    drawn = torch.rand(len(y), generator=g) < rate
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (len(y),), generator=g)  # y + shift mod K: uniform over the others
        return torch.where(drawn, (y + shift) % num_classes, y)
    return torch.where(drawn, flip_table(flips, num_classes)[y], y)


def changeable(y: torch.Tensor, kind: str, num_classes: int, flips: dict[int, int] | None) -> torch.Tensor:
    """(N,) bool: the labels of `y` that noise of `kind` may change."""
    if kind == "symmetric":
        return torch.ones(len(y), dtype=torch.bool)
    return flip_table(flips, num_classes)[y] != y


def flip_matrix(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Counts of (true class, label given): row i, column j counts the examples of class i labelled j."""
    pairs = torch.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    return pairs.view(num_classes, num_classes).tolist()


def add_label_noise(cfg: DictConfig, num_classes: int, flips: dict[int, int] | None,
                    clean: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The `clean` labels of the train and val splits with the noise `cfg` (the dataset config) asks for, and the
    record of the draw (see the module's docstring)."""
    kind, rate = cfg.label_noise, cfg.noise_rate
    if kind == "asymmetric" and flips is None:
        mapped = ", ".join(sorted(name for name, task in TASKS.items() if task.flips))
        raise ConfigError(f"dataset.label_noise=asymmetric has no flip map for dataset {cfg.name}, only for {mapped}; "
                          f"use one of those or dataset.label_noise=symmetric.")
    g = torch.Generator().manual_seed(cfg.noise_seed)
    noisy = {split: flip_labels(clean[split], kind, rate, num_classes, flips, g) for split in NOISY_SPLITS}
    realised = {}
    for split in NOISY_SPLITS:
        could = changeable(clean[split], kind, num_classes, flips)
        changed = (noisy[split] != clean[split]).sum().item()
        realised[split] = changed / could.sum().item() if could.any() else None
    record = {"kind": kind, "rate": rate, "seed": cfg.noise_seed, "realised_rate": realised,
              "flip_matrix": {split: flip_matrix(clean[split], noisy[split], num_classes) for split in NOISY_SPLITS}}
    return noisy, record


def as_markdown(record: dict) -> str:
    """The record as TensorBoard's text dashboard shows it: a sentence, then each split's flip matrix as a table."""
    realised = ", ".join(f"{'n/a' if value is None else f'{value:.4f}'} on {split}"
                         for split, value in record["realised_rate"].items())
    lines = [f"{record['kind']} label noise at rate {record['rate']} (dataset.noise_seed={record['seed']}): "
             f"realised rate {realised}; the test labels are the true ones."]
    for split, matrix in record["flip_matrix"].items():
        classes = range(len(matrix))
        lines += ["", f"{split} flip matrix (rows: true class, columns: label given):", "",
                  "| true \\ given | " + " | ".join(map(str, classes)) + " |", "|---" * (len(matrix) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(map(str, row)) + " |" for k, row in zip(classes, matrix)]
    return "\n".join(lines)
