"""The dataset group's schema: every option of conf/dataset/ starts from `dataset_schema` (synthetic data from
`synthetic_schema`, losslab.data.synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from losslab.config.registry import schema


@schema("dataset", "dataset")
@dataclass
class DatasetConf:
    name: str = MISSING  # task id: mnist, mnist_even_odd, mnist_2v3, cifar10, emnist_letters, synthetic
    root: str | None = None
    download: bool = True
    # Subset of the source training set, taken before the task filters/relabels (course protocols).
    train_size: int | None = None
    train_pick: str = "random"  # random | first
    # Validation: carved from train (seeded) or taken from the test set (course protocols).
    val_size: int = 5000
    val_from: str = "train"  # train | test
    val_pick: str = "random"  # random | first | last
    val_offset: int = 0  # the first val_offset images of that set are never picked (CIFAR-10 batch 2: 10000)
    split_seed: int = 0  # fixed across training seeds, so seeds measure training noise only
    normalize: str = "unit"  # unit | symmetric | standard | per_pixel
    mean: list[float] | None = None  # for `standard`; null = computed on the train split
    std: list[float] | None = None
    hflip: bool = False  # device-side augmentation of training batches
    crop_padding: int = 0
    # Label noise on the train and val labels, never on test (losslab.data.label_noise).
    label_noise: str = "none"  # none | symmetric | asymmetric
    noise_rate: float = 0.0  # the probability that a label the noise can change is changed, in [0, 1)
    noise_seed: int = 0  # fixed across training seeds, as split_seed is
