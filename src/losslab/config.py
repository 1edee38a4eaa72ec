"""Config schemas (registered in Hydra's ConfigStore) and the value checks types cannot express.

Every YAML file under ``conf/<group>/`` starts from one of the schemas below (``defaults: [<x>_schema]``),
so an unknown key or a wrong type fails at compose time with Hydra's own message naming the key.
The schemas hold every default; a group file sets only what its option changes (a file that changes nothing just
names its schema), which tests/test_config_defaults.py checks.
Ranges (lr > 0, 0 <= dropout < 1, ...) are checked by :func:`check` with one sentence per mistake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from losslab.errors import ConfigError, require
from losslab.job_dirs import job_dir_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


def data_root(root: str | None) -> Path:
    """`dataset.root`, else $LOSSLAB_DATA_DIR, else the repo's `data/` (where MNIST ships)."""
    return Path(root or os.environ.get("LOSSLAB_DATA_DIR") or REPO_ROOT / "data").expanduser()


# ---------------------------------------------------------------- dataset
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


@dataclass
class SyntheticConf(DatasetConf):
    name: str = "synthetic"
    shape: list[int] = field(default_factory=lambda: [1, 16, 16])
    num_classes: int = 4
    train_n: int = 2048
    test_n: int = 512
    noise: float = 40.0  # pixel std around each class prototype (0..255 scale)
    val_size: int = 256


# ---------------------------------------------------------------- model
@dataclass
class LinearConf:
    _target_: str = "losslab.models.Linear"
    init: str = "default"  # default | zeros | normal
    init_std: float = 0.01


@dataclass
class FNNConf:
    _target_: str = "losslab.models.FNN"
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"  # relu | tanh | sigmoid | gelu
    dropout: float = 0.0
    init: str = "default"
    init_std: float = 0.01


@dataclass
class LeNetConf:
    _target_: str = "losslab.models.LeNet"
    activation: str = "relu"
    init: str = "default"
    init_std: float = 0.01


@dataclass
class VGG5Conf:
    _target_: str = "losslab.models.VGG5"
    dropout: float = 0.5
    init: str = "default"
    init_std: float = 0.01


@dataclass
class DualLinearConf:
    _target_: str = "losslab.models.DualLinear"
    init: str = "normal"  # zeros would never move: ∂H/∂z = 0 at z = 0
    init_std: float = 0.01


# ---------------------------------------------------------------- loss
@dataclass
class CEConf:
    _target_: str = "losslab.losses.CrossEntropy"
    label_smoothing: float = 0.0  # ε in [0, 1): cross-entropy against the target (1 - ε)·e_y + ε/K


@dataclass
class BCEConf:
    _target_: str = "losslab.losses.BinaryCrossEntropy"


@dataclass
class MBCEConf:
    _target_: str = "losslab.losses.MultiBinaryCrossEntropy"


@dataclass
class EntropyGradientConf:
    """Label-free entropy-gradient rule; step scaled so max|Δz| <= max(delta_min, delta0 * gamma^epoch)."""

    _target_: str = "losslab.losses.entropy_gradient.EntropyGradient"
    delta0: float = 0.1
    gamma: float = 0.9
    delta_min: float = 0.01


@dataclass
class EntropyLossConf:
    """min_ent: beta1*CE_b1 + beta2*H_b2(p);  mix_ent: beta1*CE_b1 + beta2*RCE_b2 (SPEC section 4)."""

    _target_: str = MISSING
    beta1: float = 1.0
    beta2: float = 0.1
    base1: float = 2.718281828459045
    base2: float = 2.718281828459045
    coeffs: str = "fixed"  # fixed | learnable: beta = (beta1 + beta2) * softmax(theta)
    bases: str = "fixed"  # fixed | learnable: b = clamp(1 + softplus(phi), base_min, base_max)
    base_min: float = 1.01
    base_max: float = 100.0
    eps: float = 1e-6
    param_lr: float = 0.01  # the loss parameters' own optimizer param group


@dataclass
class MinEntConf(EntropyLossConf):
    _target_: str = "losslab.losses.MinEntropy"


@dataclass
class MixEntConf(EntropyLossConf):
    _target_: str = "losslab.losses.MixEntropy"


# ---------------------------------------------------------------- optimizer
@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


# ---------------------------------------------------------------- scheduler
@dataclass
class NoSchedulerConf:
    _target_: str | None = None


@dataclass
class PlateauConf:
    """Decays the lr when val loss stalls; stepped after every evaluation."""

    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    _partial_: bool = True
    factor: float = 0.1
    patience: int = 5
    min_lr: float = 0.0


@dataclass
class StepConf:
    """Multiplies the lr by `gamma` every `step_size` epochs."""

    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class CosineConf:
    """Cosine annealing over `T_max` epochs (default: all of them)."""

    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = "${trainer.epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


# ---------------------------------------------------------------- trainer
@dataclass
class TrainerConf:
    epochs: int = 5
    batch_size: int = 128
    eval_every: float = 1.0  # evaluate every this fraction of an epoch
    eval_batch_size: int = 2048
    limit_eval_batches: int | None = None  # evaluate on the first N batches only (debug)
    max_steps: int | None = None  # stop after N optimiser steps (debug)
    patience: int | None = None  # early stopping after N evaluations without a better `monitor`
    # the metric that picks the best evaluation: early stopping, the plateau scheduler, best.pt, the report's best
    # row and the sweeper objective; val/nll equals val/loss for bce and for ce without label smoothing, and is one
    # rule for every loss
    monitor: str = "val/nll"
    monitor_mode: str = "min"  # min | max
    l2: float = 0.0  # lambda * sum(w^2) over weight matrices, added to the objective
    grad_clip: float | None = None  # clip the global gradient norm to this value
    # a loss that is not finite, or larger than this, ends the run with status `diverged` (null: only non-finite)
    divergence_threshold: float | None = 1.0e4
    shuffle: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 (IEEE) | tf32 (CUDA matmuls and convolutions in TF32) | bf16 (autocast)
    compile: bool = False
    deterministic: bool = False
    checkpoints: bool = True
    figures: bool = True  # weight templates, confidence histogram, reliability diagram, curves, after training
    progress: str = "auto"  # auto (bar on a terminal, log lines otherwise) | bar | log
    resume: Any = None  # null | true (the run dir is the cwd) | <run dir>: continue from checkpoints/last.pt


@dataclass
class TrainConf:
    name: str = MISSING
    seed: int = 0
    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)


def group_options() -> str:
    """`group: option, ...` per line for the config groups of conf/ (`losslab-train --help`)."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra")
    return "\n".join(f"{d.name}: {', '.join(sorted(f.stem for f in d.glob('*.yaml')))}" for d in groups)


def register() -> None:
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)
    if not OmegaConf.has_resolver("losslab_options"):
        OmegaConf.register_new_resolver("losslab_options", group_options)
    if not OmegaConf.has_resolver("losslab.job_dir"):
        OmegaConf.register_new_resolver("losslab.job_dir", job_dir_name)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    schemas = {
        "dataset": {"dataset": DatasetConf, "synthetic": SyntheticConf},
        "model": {"linear": LinearConf, "fnn": FNNConf, "lenet": LeNetConf, "vgg5": VGG5Conf,
                  "dual_linear": DualLinearConf},
        "loss": {"ce": CEConf, "bce": BCEConf, "mbce": MBCEConf, "min_ent": MinEntConf, "mix_ent": MixEntConf,
                 "entropy_gradient": EntropyGradientConf},
        "optimizer": {"sgd": SGDConf, "adam": AdamConf, "adamw": AdamWConf},
        "scheduler": {"none": NoSchedulerConf, "plateau": PlateauConf, "step": StepConf, "cosine": CosineConf},
        "trainer": {"trainer": TrainerConf},
    }
    for group, nodes in schemas.items():
        for name, node in nodes.items():
            cs.store(group=group, name=f"{name}_schema", node=node)


# ---------------------------------------------------------------- range checks
def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}; pick one of those.")


MONITORED = ("train/loss", "train/acc", *(f"val/{m}" for m in ("loss", "acc", "nll", "brier", "ece", "entropy")))


def check(cfg: DictConfig) -> None:
    """Range and choice checks that a dataclass type cannot express; raise ConfigError on the first."""
    ds, model, opt, tr = cfg.dataset, cfg.model, cfg.optimizer, cfg.trainer
    _choice("dataset.normalize", ds.normalize, ("unit", "symmetric", "standard", "per_pixel"))
    _choice("dataset.train_pick", ds.train_pick, ("random", "first"))
    _choice("dataset.val_from", ds.val_from, ("train", "test"))
    _choice("dataset.val_pick", ds.val_pick, ("random", "first", "last"))
    require(ds.val_size >= 1, f"dataset.val_size must be >= 1, got {ds.val_size}.")
    require(ds.val_offset >= 0, f"dataset.val_offset must be >= 0, got {ds.val_offset}.")
    require(
        ds.train_size is None or ds.train_size >= 1,
        f"dataset.train_size must be >= 1 or null, got {ds.train_size}.",
    )
    require(ds.crop_padding >= 0, f"dataset.crop_padding must be >= 0, got {ds.crop_padding}.")
    for key in ("mean", "std"):
        require(
            ds[key] is None or ds.normalize == "standard",
            f"dataset.{key} is only used with dataset.normalize=standard; set it to null or use standard.",
        )
    require(
        (ds.mean is None) == (ds.std is None),
        "dataset.mean and dataset.std go together: set both (one value per channel) or neither "
        "(then both are computed on the train split).",
    )
    require(ds.std is None or all(s > 0 for s in ds.std), f"dataset.std must be > 0, got {ds.std}.")

    _choice("model.init", model.init, ("default", "zeros", "normal"))
    require(model.init_std > 0, f"model.init_std must be > 0, got {model.init_std}.")
    if "dropout" in model:
        require(0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}.")
    if "activation" in model:
        _choice("model.activation", model.activation, ("relu", "tanh", "sigmoid", "gelu"))
    if "hidden" in model:
        require(all(h >= 1 for h in model.hidden), f"model.hidden sizes must be >= 1, got {model.hidden}.")

    require(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}; pass a positive learning rate.")
    require(opt.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}.")
    if "momentum" in opt:
        require(0 <= opt.momentum < 1, f"optimizer.momentum must be in [0, 1), got {opt.momentum}.")
    if "betas" in opt:
        require(
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            f"optimizer.betas must be two numbers in [0, 1), got {list(opt.betas)}.",
        )

    require(tr.epochs >= 1, f"trainer.epochs must be >= 1, got {tr.epochs}.")
    require(tr.batch_size >= 1, f"trainer.batch_size must be >= 1, got {tr.batch_size}.")
    require(tr.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {tr.eval_batch_size}.")
    require(0 < tr.eval_every <= 1, f"trainer.eval_every must be in (0, 1] (of an epoch), got {tr.eval_every}.")
    require(tr.patience is None or tr.patience >= 1, f"trainer.patience must be >= 1 or null, got {tr.patience}.")
    _choice("trainer.monitor", tr.monitor, MONITORED)
    _choice("trainer.monitor_mode", tr.monitor_mode, ("min", "max"))
    require(tr.max_steps is None or tr.max_steps >= 1, f"trainer.max_steps must be >= 1 or null, got {tr.max_steps}.")
    require(
        tr.limit_eval_batches is None or tr.limit_eval_batches >= 1,
        f"trainer.limit_eval_batches must be >= 1 or null, got {tr.limit_eval_batches}.",
    )
    require(tr.l2 >= 0, f"trainer.l2 must be >= 0, got {tr.l2}.")
    require(
        tr.divergence_threshold is None or tr.divergence_threshold > 0,
        f"trainer.divergence_threshold must be > 0 or null, got {tr.divergence_threshold}.",
    )
    require(tr.grad_clip is None or tr.grad_clip > 0, f"trainer.grad_clip must be > 0 or null, got {tr.grad_clip}.")
    _choice("trainer.precision", tr.precision, ("fp32", "tf32", "bf16"))
    _choice("trainer.progress", tr.progress, ("auto", "bar", "log"))
    require(
        tr.device in ("auto", "cpu", "mps") or tr.device.startswith("cuda"),
        f"trainer.device={tr.device!r} is not auto, cpu, cuda, cuda:N or mps.",
    )
