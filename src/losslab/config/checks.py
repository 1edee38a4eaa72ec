"""The value checks types cannot express: ranges (lr > 0, 0 <= dropout < 1, ...) and choices, one sentence per
mistake (ConfigError)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from losslab.errors import ConfigError, require


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
    _choice("dataset.label_noise", ds.label_noise, ("none", "symmetric", "asymmetric"))
    require(0 <= ds.noise_rate < 1, f"dataset.noise_rate must be in [0, 1), got {ds.noise_rate}; it is the "
                                    f"probability that a label is flipped.")
    require(ds.label_noise != "none" or ds.noise_rate == 0,
            f"dataset.noise_rate={ds.noise_rate} flips nothing with dataset.label_noise=none; set "
            f"dataset.label_noise=symmetric or asymmetric, or leave the rate at 0.")

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
