"""The training loop: `fit(cfg, run_dir)` reads top to bottom.

Data live on the device as tensors and are batched by index; per-step losses and hits stay on the device
and are read once per evaluation, so the step loop never waits on the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from losslab import config
from losslab.data import augment, load_splits
from losslab.errors import ConfigError
from losslab.fileio import atomic_write
from losslab.log import RunLogger, versions, write_summary
from losslab.metrics import SplitMetrics

log = logging.getLogger("losslab")


def pick_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but this machine has no CUDA device; use trainer.device=auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available here; use trainer.device=auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def build(cfg: DictConfig, device: torch.device):
    """Data, loss, model, optimizer and scheduler for `cfg`; the loss decides the head size."""
    data = load_splits(cfg.dataset, device)
    loss_fn = instantiate(cfg.loss).to(device)
    if loss_fn.binary_only and data.num_classes != 2:
        raise ConfigError(
            f"loss={type(loss_fn).__name__} needs a binary task but dataset {cfg.dataset.name} has "
            f"{data.num_classes} classes; use loss=ce or loss=mbce, or a binary dataset (mnist_even_odd, mnist_2v3)."
        )
    model = instantiate(
        cfg.model, in_shape=data.shape, num_outputs=loss_fn.head_size(data.num_classes), _convert_="all"
    ).to(device)
    if device.type == "cuda" and model_has_convs(model):
        model = model.to(memory_format=torch.channels_last)
    groups = [{"params": list(model.parameters())}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:  # learnable loss parts (min_ent / mix_ent) get their own lr and no weight decay
        groups.append({"params": loss_params, "lr": loss_fn.param_lr, "weight_decay": 0.0})
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params=groups)
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.scheduler._target_ else None
    return data, loss_fn, model, optimizer, scheduler


def model_has_convs(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@torch.no_grad()
def evaluate(model, loss_fn, x, y, batch_size: int, limit: int | None, precision: str) -> dict[str, float]:
    """The metrics of losslab.metrics over a split (its first `limit` batches if set), in eval mode."""
    was_training = model.training
    model.eval()
    metrics = SplitMetrics(x.device)
    for i, start in enumerate(range(0, len(y), batch_size)):
        if limit is not None and i >= limit:
            break
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with autocast(x.device, precision):
            logits = model(xb)
        logits = logits.float()
        metrics.update(loss_fn.probs(logits), yb, loss_fn(logits, yb))
    model.train(was_training)
    return metrics.result()


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def squared_norm(weights: list[torch.Tensor]) -> float:
    """‖w‖² over the weight matrices (the tensors trainer.l2 acts on)."""
    return sum(w.detach().double().square().sum() for w in weights).item() if weights else 0.0


def snapshot(model: torch.nn.Module, loss_fn: torch.nn.Module) -> dict:
    """Copies of the model's and the loss's state (the loss holds learnable coefficients and bases)."""
    return {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in (("model", model), ("loss", loss_fn))}


def save_checkpoint(path: Path, **state) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def fit(cfg: DictConfig, run_dir: Path, hparams: dict | None = None) -> dict:
    """Train, validate and test one config; write events, metrics.csv, checkpoints and summary.json."""
    started = time.perf_counter()
    config.check(cfg)
    tr = cfg.trainer
    device = pick_device(tr.device)
    seed_everything(cfg.seed, tr.deterministic)
    data, loss_fn, model, optimizer, scheduler = build(cfg, device)
    step_fn = torch.compile(model) if tr.compile else model
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    weights = [p for p in model.parameters() if p.ndim >= 2]  # L2 acts on weight matrices, not biases
    order_gen = torch.Generator(device=device).manual_seed(cfg.seed)

    # plain Python values: DictConfig lookups cost microseconds each, too much for the step loop
    batch_size, eval_batch, shuffle, l2, precision = tr.batch_size, tr.eval_batch_size, tr.shuffle, tr.l2, tr.precision
    hflip, crop_padding = cfg.dataset.hflip, cfg.dataset.crop_padding
    n_train = len(data.train_y)
    steps_per_epoch = math.ceil(n_train / batch_size)
    eval_interval = max(1, round(tr.eval_every * steps_per_epoch))
    total_steps = tr.epochs * steps_per_epoch
    if tr.max_steps is not None:
        total_steps = min(total_steps, tr.max_steps)

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    logger = RunLogger(run_dir, cfg, hparams or {})
    log.info(
        "%s: %d train / %d val / %d test images of shape %s, %d classes, on %s; %d steps of batch %d",
        cfg.dataset.name, n_train, len(data.val_y), len(data.test_y), data.shape, data.num_classes,
        device, total_steps, tr.batch_size,
    )
    bar = progress_bar(tr.progress, total_steps)

    step, epoch, status = 0, 0, "completed"
    best = {"val/loss": math.inf}
    best_state, evals_since_best = None, 0
    # per-step values stay on the device until the next evaluation: loss, hits, then the loss's own (loss/...)
    loss_tags = list(loss_fn.logged()) if hasattr(loss_fn, "logged") else []
    constrained = hasattr(loss_fn, "constrain_step")  # the entropy-gradient rule scales each step
    pending, pending_sizes = [], []
    train_started = time.perf_counter()
    samples = 0
    while step < total_steps and status == "completed":
        order = (torch.randperm(n_train, device=device, generator=order_gen) if shuffle
                 else torch.arange(n_train, device=device))
        for start in range(0, n_train, batch_size):
            idx = order[start:start + batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            if hflip or crop_padding:
                x = augment(x, hflip, crop_padding, order_gen)
            with autocast(device, precision):
                logits = step_fn(x)
            logits = logits.float()
            loss = loss_fn(logits, y)
            logged = loss_fn.logged().values() if loss_tags else ()  # the values this step's loss used
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if l2:  # d/dw of l2 * sum(w^2)
                torch._foreach_add_([w.grad for w in weights], weights, alpha=2 * l2)
            if constrained:
                before = [p.detach().clone() for p in model.parameters()]
            optimizer.step()
            if constrained:
                loss_fn.constrain_step(model, x, logits.detach(), before, epoch)

            hits = (loss_fn.probs(logits.detach()).argmax(-1) == y).sum()
            pending.append(torch.stack([loss.detach(), hits.float(), *logged]))
            pending_sizes.append(len(y))
            step += 1
            samples += len(y)
            if bar is not None:
                bar.update(1)
            last_of_run = step == total_steps
            if step % eval_interval and not last_of_run:
                continue

            # ---- evaluation: read the pending step values once, validate, early-stop
            per_step, first, seen = torch.stack(pending).tolist(), step - len(pending) + 1, sum(pending_sizes)
            for i, (values, n) in enumerate(zip(per_step, pending_sizes)):
                logger.scalars({"train/loss": values[0], "train/acc": values[1] / n,
                                **dict(zip(loss_tags, values[2:]))}, first + i)
            row = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "lr": optimizer.param_groups[0]["lr"],
                "weights/sq_norm": squared_norm(weights),
                "train/loss": sum(v[0] * n for v, n in zip(per_step, pending_sizes)) / seen,
                "train/acc": sum(v[1] for v in per_step) / seen,
            }
            pending, pending_sizes = [], []
            val = evaluate(model, loss_fn, data.val_x, data.val_y, eval_batch, tr.limit_eval_batches, precision)
            row.update({f"val/{k}": v for k, v in val.items()})
            logger.scalars({"lr": row["lr"], "weights/sq_norm": row["weights/sq_norm"], "pred/entropy": val["entropy"],
                            **{f"val/{k}": v for k, v in val.items()}}, step)
            logger.row(row)
            report(bar, row)
            if plateau:
                scheduler.step(val["loss"])
            if val["loss"] < best["val/loss"]:
                best, evals_since_best = dict(row), 0
                best_state = snapshot(model, loss_fn)
            else:
                evals_since_best += 1
                if tr.patience is not None and evals_since_best >= tr.patience:
                    status = "early_stopped"
                    break
            if last_of_run:
                break
        if constrained:
            logger.scalars(loss_fn.epoch_stats(epoch), step)
        epoch += 1
        if scheduler is not None and not plateau:
            scheduler.step()
        if tr.checkpoints:
            save_checkpoint(ckpt_dir / "last.pt", **snapshot(model, loss_fn), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict() if scheduler else None, step=step, epoch=epoch)
    train_s = time.perf_counter() - train_started
    if bar is not None:
        bar.close()

    # ---- test: with the best weights when early stopping is on, else the last ones
    if tr.patience is not None and best_state is not None:
        model.load_state_dict(best_state["model"])
        loss_fn.load_state_dict(best_state["loss"])
    if tr.checkpoints and best_state is not None:
        save_checkpoint(ckpt_dir / "best.pt", **best_state, step=best["step"], metrics=best)
    final = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": optimizer.param_groups[0]["lr"],
             "weights/sq_norm": squared_norm(weights)}
    if loss_tags:
        final.update({k: v.item() for k, v in loss_fn.logged().items()})
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        metrics = evaluate(model, loss_fn, x, y, eval_batch, tr.limit_eval_batches, precision)
        final.update({f"{split}/{k}": v for k, v in metrics.items()})
    # train/loss and train/acc are per-step tags; the full train split's other metrics are logged once here
    logger.scalars({k: v for k, v in final.items() if k.startswith("test/")
                    or (k.startswith("train/") and k not in ("train/loss", "train/acc"))}, step)
    logger.row(final)
    logger.close()

    summary = {
        "status": status,
        "name": cfg.name,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "best": best if best_state is not None else {},
        "final": final,
        "steps": step,
        "epochs": round(step / steps_per_epoch, 4),
        "wall_s": time.perf_counter() - started,
        "train_s": train_s,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        "device": str(device),
        "versions": versions(),
    }
    write_summary(run_dir, summary)
    log.info("%s after %d steps: test/acc %.4f, test/loss %.4f (%s)", status, step, final["test/acc"],
             final["test/loss"], run_dir)
    return summary


def progress_bar(mode: str, total: int):
    """A tqdm bar on a terminal (or when asked for), else None and plain log lines per evaluation."""
    if mode == "log" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


def report(bar, row: dict) -> None:
    text = {k: f"{row[k]:.4g}" for k in ("train/loss", "val/loss", "val/acc")}
    if bar is not None:
        bar.set_postfix(text, refresh=False)
    else:
        log.info("step %d epoch %.2f | %s", row["step"], row["epoch"], " ".join(f"{k} {v}" for k, v in text.items()))
