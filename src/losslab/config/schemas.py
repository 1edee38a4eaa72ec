"""The schemas of the groups that are not components: optimizer, scheduler, trainer, and the root config
(`train_schema`).

The schemas hold every default; a group file sets only what its option changes (a file that changes nothing just
names its schema), which tests/test_config_defaults.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from losslab.config.registry import schema


# ---------------------------------------------------------------- optimizer
@schema("optimizer", "sgd")
@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@schema("optimizer", "adam")
@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@schema("optimizer", "adamw")
@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


# ---------------------------------------------------------------- scheduler
@schema("scheduler", "none")
@dataclass
class NoSchedulerConf:
    _target_: str | None = None


@schema("scheduler", "plateau")
@dataclass
class PlateauConf:
    """Decays the lr when val loss stalls; stepped after every evaluation."""

    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    _partial_: bool = True
    factor: float = 0.1
    patience: int = 5
    min_lr: float = 0.0


@schema("scheduler", "step")
@dataclass
class StepConf:
    """Multiplies the lr by `gamma` every `step_size` epochs."""

    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = 10
    gamma: float = 0.1


@schema("scheduler", "cosine")
@dataclass
class CosineConf:
    """Cosine annealing over `T_max` epochs (default: all of them)."""

    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = "${trainer.epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


# ---------------------------------------------------------------- trainer
@schema("trainer", "trainer")
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
    # also evaluate the test split with the best weights by `monitor` (best.pt's): final's best/test/acc, ... beside
    # the final weights' test/acc (they differ when training goes on past the best evaluation, without patience)
    test_best: bool = False
    # a run's figures (weight templates, confidence histogram, reliability diagram, curves), drawn after training:
    # null (default) draws them for a single run, and for a sweep's jobs on demand (losslab-report --figures), so a
    # grid's time goes to training; true draws them at a sweep's end too; false never
    figures: bool | None = None
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
