"""Datasets as device-resident tensors: tasks derived from sources, splits, normalisation, batching.

Order of operations (all sizes count *source* images, before a task filters them, which is what the
course protocols specify: "the first 20,000 training images, filtered to 2s and 3s"):

1. read the source (torchvision classes, uint8 cache);
2. validation: `val_size` images carved from train (seeded by `dataset.split_seed`, or the first/last
   ones), or taken from the test set (`val_from=test`), never among the first `val_offset` of them;
3. `train_size`: the first or a seeded random subset of what is left of train;
4. the task filters and relabels each split (even/odd, 2 vs 3, letters 1..26 -> 0..25);
5. normalisation with statistics of the train split, then float32 on the device;
6. label noise on the train and val labels, never on test (`dataset.label_noise`, losslab.data.label_noise).

May import: losslab.config, losslab.records and the bottom layer; not another component package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from losslab.config import data_root
from losslab.data.label_noise import add_label_noise
from losslab.data.sources import read_source
from losslab.data.synthetic import synthetic_source
from losslab.data.tasks import TASKS
from losslab.errors import ConfigError


@dataclass
class Splits:
    train_x: torch.Tensor  # float32 (N, C, H, W) on the device
    train_y: torch.Tensor  # int64 (N,) on the device
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    train_clean_y: torch.Tensor | None = None  # the training labels before label noise; None without noise
    label_noise: dict | None = None  # the record of the noise drawn (losslab.data.label_noise); None without noise

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of train, val, test or train_clean (the training images with their true labels)."""
        if name == "train_clean":
            return self.train_x, self.train_clean_y
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def _pick(n: int, k: int, how: str, g: torch.Generator) -> torch.Tensor:
    """Indices of k out of n items: the first, the last, or a seeded random set (kept in order)."""
    if how == "first":
        return torch.arange(min(k, n))
    if how == "last":
        return torch.arange(max(n - k, 0), n)
    return torch.randperm(n, generator=g)[:k].sort().values


def _without(n: int, taken: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[taken] = False
    return keep.nonzero().squeeze(1)


def normalize(cfg: DictConfig, train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """uint8 -> float32: unit [0,1], symmetric [-1,1], standard (per channel), per_pixel (per dimension)."""
    xs = [t.float().div_(255) for t in (train, *others)]
    if cfg.normalize == "unit":
        return xs
    if cfg.normalize == "symmetric":
        return [x.mul_(2).sub_(1) for x in xs]
    if cfg.normalize == "standard":
        channels = train.shape[1]
        if cfg.mean is not None:
            if len(cfg.mean) != channels or len(cfg.std) != channels:
                raise ConfigError(
                    f"dataset.mean and dataset.std need {channels} value(s), one per channel, "
                    f"got {list(cfg.mean)} and {list(cfg.std)}."
                )
            mean, std = torch.tensor(list(cfg.mean)), torch.tensor(list(cfg.std))
        else:
            mean, std = xs[0].mean(dim=(0, 2, 3)), xs[0].std(dim=(0, 2, 3))
        mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1).clamp_min(1 / 255)
    else:  # per_pixel
        mean, std = xs[0].mean(dim=0, keepdim=True), xs[0].std(dim=0, keepdim=True).clamp_min(1 / 255)
    return [x.sub_(mean).div_(std) for x in xs]


def load_splits(cfg: DictConfig, device: torch.device) -> Splits:
    """Build train/val/test tensors on `device` for the dataset config `cfg`."""
    if cfg.name not in TASKS:
        raise ConfigError(f"dataset.name={cfg.name!r} is unknown; use one of {', '.join(TASKS)}.")
    source_name, num_classes, derive, flips = TASKS[cfg.name]
    if source_name == "synthetic":
        if cfg.num_classes < 2:
            raise ConfigError(f"dataset.num_classes must be >= 2, got {cfg.num_classes}.")
        src, num_classes = synthetic_source(cfg), cfg.num_classes
    else:
        src = read_source(source_name, data_root(cfg.root), cfg.download)

    g = torch.Generator().manual_seed(cfg.split_seed)
    n_train = len(src.train_y)
    n_val_source = n_train if cfg.val_from == "train" else len(src.test_y)
    if cfg.val_offset >= n_val_source:
        raise ConfigError(f"dataset.val_offset={cfg.val_offset} skips all {n_val_source} {cfg.val_from} images; "
                          f"make it smaller.")
    val_idx = cfg.val_offset + _pick(n_val_source - cfg.val_offset, cfg.val_size, cfg.val_pick, g)
    if cfg.val_from == "train":
        if cfg.val_size >= n_train:
            raise ConfigError(
                f"dataset.val_size={cfg.val_size} leaves no training images out of {n_train}; make it smaller."
            )
        train_idx = _without(n_train, val_idx)
        val_x, val_y = src.train_x[val_idx], src.train_y[val_idx]
    else:
        train_idx = torch.arange(n_train)
        val_x, val_y = src.test_x[val_idx], src.test_y[val_idx]
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            held = f" after the {len(val_idx)} of dataset.val_size" if cfg.val_from == "train" else ""
            raise ConfigError(f"dataset.train_size={cfg.train_size} is more than the {len(train_idx)} training images "
                              f"{cfg.name} has{held}; make it at most {len(train_idx)} (or null for all of them).")
        train_idx = train_idx[_pick(len(train_idx), cfg.train_size, cfg.train_pick, g)]

    splits = [
        derive(src.train_x[train_idx], src.train_y[train_idx]),
        derive(val_x, val_y),
        derive(src.test_x, src.test_y),
    ]
    for (x, _), split in zip(splits, ("train", "validation", "test")):
        if len(x) == 0:
            raise ConfigError(f"the {split} split of {cfg.name} is empty; raise dataset.train_size or val_size.")
    xs = normalize(cfg, *(x for x, _ in splits))
    ys = dict(zip(("train", "val", "test"), (y for _, y in splits)))
    clean_train_y, noise = None, None
    if cfg.label_noise != "none":
        clean_train_y = ys["train"].to(device)
        noisy, noise = add_label_noise(cfg, num_classes, flips, ys)
        ys |= noisy
    tensors = []
    for x, y in zip(xs, ys.values()):
        tensors += [x.to(device), y.to(device)]
    return Splits(*tensors, num_classes=num_classes, train_clean_y=clean_train_y, label_noise=noise)


def augment(x: torch.Tensor, hflip: bool, crop_padding: int, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop (zero padding), batched on x's device."""
    n, _, h, w = x.shape
    if hflip:
        flip = torch.rand(n, device=x.device, generator=g) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if crop_padding:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device, generator=g)
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device, generator=g)
        rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, channel, rows, cols]
    return x


def _register_datasets() -> None:
    """Import every dataset module of this package, each registering its tasks and readers: a new dataset is its
    module, its YAML under conf/dataset/ and its test."""
    from losslab.config.registry import import_components

    import_components(__name__)


_register_datasets()
