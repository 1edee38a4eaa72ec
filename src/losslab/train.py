"""The training loop: `fit(cfg, run_dir)` reads top to bottom.

Data live on the device as tensors and are batched by index; per-step losses and hits stay on the device
and are read once per evaluation, so the step loop never waits on the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from losslab import config
from losslab.data import augment, load_splits
from losslab.errors import ConfigError, Interrupted, UserError
from losslab.figures import read_rows, start_figures, write_figures
from losslab.fileio import atomic_write, remove_stale_temp_files
from losslab.log import RunLogger, provenance, versions, write_summary
from losslab.metrics import SplitMetrics
from losslab.rundir import exclusive

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


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what Slurm or taskset allow), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def build(cfg: DictConfig, device: torch.device, data=None):
    """Data (unless given, already loaded for `cfg.dataset`), loss, model, optimizer and scheduler for `cfg`;
    the loss decides the head size."""
    data = load_splits(cfg.dataset, device) if data is None else data
    loss_fn = instantiate(cfg.loss).to(device)
    if loss_fn.binary_only and data.num_classes != 2:
        raise ConfigError(
            f"loss={choice('loss', cfg.loss._target_)} needs a binary task but dataset {cfg.dataset.name} has "
            f"{data.num_classes} classes; use loss=ce or loss=mbce, or a binary dataset (mnist_even_odd, mnist_2v3)."
        )
    model = instantiate(
        cfg.model, in_shape=data.shape, num_outputs=loss_fn.head_size(data.num_classes), _convert_="all"
    ).to(device)
    model = model.to(memory_format=memory_format(model, device))
    groups = [{"params": list(model.parameters())}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:  # learnable loss parts (min_ent / mix_ent) get their own lr and no weight decay
        groups.append({"params": loss_params, "lr": loss_fn.param_lr, "weight_decay": 0.0})
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params=groups)
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.scheduler._target_ else None
    return data, loss_fn, model, optimizer, scheduler


def choice(group: str, fallback: str) -> str:
    """The option of a config group this run was composed with (`loss=bce`), else `fallback`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return fallback
    return HydraConfig.get().runtime.choices.get(group) or fallback


def memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last for conv models on CUDA (tensor-core convolutions want NHWC); on the CPU it measured no
    faster here, so the default layout stays."""
    has_convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if device.type == "cuda" and has_convs else torch.contiguous_format


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


def use_float32_math(precision: str, device: torch.device) -> None:
    """fp32 is IEEE float32 in CUDA matmuls and convolutions too (PyTorch lets cuDNN convolutions use TF32 by
    default, which changes results at 1e-3); tf32 allows TF32 in both. Process-wide flags, set per run."""
    tf32 = precision == "tf32"
    if tf32 and device.type != "cuda":
        log.warning("trainer.precision=tf32 needs a CUDA device; on %s the run computes in fp32.", device)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


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


@dataclass
class Progress:
    """Everything the loop needs to continue exactly where it stopped (saved in last.pt)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch
    order: torch.Tensor | None = None  # the current epoch's data order, while an epoch is under way
    samples: int = 0
    best: dict = field(default_factory=lambda: {"val/loss": math.inf})
    best_state: dict | None = None  # model and loss state at the best evaluation
    evals_since_best: int = 0
    pending: list = field(default_factory=list)  # per-step device tensors not yet logged
    pending_sizes: list = field(default_factory=list)
    last_row: dict = field(default_factory=dict)  # the last evaluation (finite by construction)
    outcome: str | None = None  # early_stopped or diverged once the loop has stopped for that reason
    rows: int = 0  # metrics.csv rows written (a resume keeps exactly these)


def stop_signals() -> tuple[int, ...]:
    """Ctrl-C, SIGTERM (kill, scancel, a time limit) and submitit's preemption signal (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL names another), sent before a Slurm time limit or on preemption."""
    preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))
    return signal.SIGINT, signal.SIGTERM, preempt


@contextlib.contextmanager
def catch_stop_signals():
    """Turn the stop signals into a flag the loop checks between steps (main thread only)."""
    received: list[int] = []
    previous = {}
    try:
        for signum in stop_signals():
            previous[signum] = signal.signal(signum, lambda n, _frame: received.append(n))
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# tests only: "<action> <point> <step|any> [job=<n>]", several separated by `;`
STOP_AT = [spec.split() for spec in os.environ.get("LOSSLAB_TEST_STOP_AT", "").split(";") if spec.strip()]


def stop_point(point: str, step: int) -> None:
    """Where the tests stop a run at a chosen place: `LOSSLAB_TEST_STOP_AT="SIGKILL eval 8"` sends this process
    SIGKILL when step 8's evaluation has been written; `sleep=0.5 step any` sleeps half a second after every step
    (a run that takes long on any machine); `job=1` restricts a spec to job 1 of a sweep. Points: `step` (after
    the update, before any bookkeeping), `eval` (the evaluation row written), `epoch` (an epoch's end, before
    last.pt), `finish` (the final row written, before best.pt and summary.json; any step)."""
    for action, where, when, *job in STOP_AT:
        if where != point or when not in (str(step), "any") or (job and job[0] != f"job={this_job()}"):
            continue
        if action.startswith("sleep="):
            time.sleep(float(action.removeprefix("sleep=")))
        else:
            os.kill(os.getpid(), getattr(signal, action))


def this_job() -> int | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.num if HydraConfig.initialized() else None


def rng_states(order_gen: torch.Generator) -> dict:
    """All RNG states, as types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
              "torch": torch.get_rng_state(), "order": order_gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, order_gen: torch.Generator) -> None:
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    # generators take their state as a CPU byte tensor, wherever the checkpoint was loaded to
    torch.set_rng_state(states["torch"].cpu())
    order_gen.set_state(states["order"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def fit(cfg: DictConfig, run_dir: Path, hparams: dict | None = None, resume: bool = False,
        overrides: list[str] | None = None) -> dict:
    """Train, validate and test one config; write events, metrics.csv, checkpoints and summary.json.

    `resume=True` continues the run in `run_dir` from checkpoints/last.pt: model, loss, optimizer,
    scheduler, early-stopping state, RNG states and data order, so the result equals an uninterrupted run.

    Ctrl-C or SIGTERM is honoured between two steps: last.pt holds every step done with its evaluation, the
    summary says `interrupted`, and Interrupted is raised. One that arrives while the run finishes (final
    evaluation, figures, summary) lets it finish, then raises Interrupted.
    """
    with exclusive(run_dir), catch_stop_signals() as stop_signals:
        summary = train_run(cfg, run_dir, hparams or {}, resume, overrides, stop_signals)
    if stop_signals:
        log.warning("signal %d arrived while the run was finishing; it finished first (%s)", stop_signals[0], run_dir)
        raise Interrupted(stop_signals[0])
    return summary


def train_run(cfg: DictConfig, run_dir: Path, hparams: dict, resume: bool, overrides: list[str] | None,
              stop_signals: list[int]) -> dict:
    """`fit`'s run, with the stop signals received so far in `stop_signals`."""
    started = time.perf_counter()
    config.check(cfg)
    tr = cfg.trainer
    device = pick_device(tr.device)
    use_float32_math(tr.precision, device)
    seed_everything(cfg.seed, tr.deterministic)
    data, loss_fn, model, optimizer, scheduler = build(cfg, device)
    step_fn = torch.compile(model) if tr.compile else model
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    weights = [p for p in model.parameters() if p.ndim >= 2]  # L2 acts on weight matrices, not biases
    order_gen = torch.Generator(device=device).manual_seed(cfg.seed)

    # plain Python values: DictConfig lookups cost microseconds each, too much for the step loop
    batch_size, shuffle, l2, precision = tr.batch_size, tr.shuffle, tr.l2, tr.precision
    hflip, crop_padding, grad_clip = cfg.dataset.hflip, cfg.dataset.crop_padding, tr.grad_clip
    loss_limit = math.inf if tr.divergence_threshold is None else tr.divergence_threshold
    n_train = len(data.train_y)
    steps_per_epoch, eval_interval, total_steps = step_counts(tr, n_train)
    # per-step values stay on the device until the next evaluation: loss, hits, then the loss's own (loss/...)
    loss_tags = list(loss_fn.logged()) if hasattr(loss_fn, "logged") else []
    constrained = hasattr(loss_fn, "constrain_step")  # the entropy-gradient rule scales each step

    ckpt_dir = run_dir / "checkpoints"
    if resume:
        for folder in (run_dir, ckpt_dir):
            remove_stale_temp_files(folder)
    p = Progress()  # a run killed before its first last.pt resumes from the start
    if resume and (ckpt_dir / "last.pt").exists():
        p = load_for_resume(ckpt_dir / "last.pt", model, loss_fn, optimizer, scheduler, order_gen, device)
    logger = RunLogger(run_dir, cfg, hparams, resume_rows=p.rows if resume else None, resume_step=p.step)
    log.info(
        "%s: %d train / %d val / %d test images of shape %s, %d classes, on %s; %d steps of batch %d%s",
        cfg.dataset.name, n_train, len(data.val_y), len(data.test_y), data.shape, data.num_classes,
        device, total_steps, batch_size, f", resuming at step {p.step}" if resume else "",
    )

    def save_last() -> None:
        p.rows = logger.rows
        if tr.checkpoints:
            save_checkpoint(
                ckpt_dir / "last.pt", **snapshot(model, loss_fn), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict() if scheduler else None, rng=rng_states(order_gen),
                progress=dict(vars(p)),
            )

    def position() -> dict:
        """The columns that say where the run is: step, epoch, lr, ‖w‖²."""
        return {"step": p.step, "epoch": round(p.step / steps_per_epoch, 4), "lr": optimizer.param_groups[0]["lr"],
                "weights/sq_norm": squared_norm(weights)}

    def run_summary(status: str, final: dict, **extra) -> dict:
        return summary_of(cfg, run_dir, overrides, p, steps_per_epoch, started, device, status, final,
                          images=image_counts(data), **extra)

    bar = progress_bar(tr.progress, total_steps, p.step)
    lines = ProgressLines(bar, steps_per_epoch, eval_interval, total_steps, p.step)
    diverged_at = None
    blown_up = torch.zeros((), dtype=torch.bool, device=device)  # a step's loss was not finite or > loss_limit
    train_started, samples_at_start = time.perf_counter(), p.samples
    while p.step < total_steps and p.outcome is None:
        if p.order is None:
            p.order = (torch.randperm(n_train, device=device, generator=order_gen) if shuffle
                       else torch.arange(n_train, device=device))
        for start in range(p.batch * batch_size, n_train, batch_size):
            if stop_signals:  # every step before this one is done, its evaluation included
                raise interrupt(stop_signals[0], p.step, run_dir, save_last, logger,
                                run_summary("interrupted", dict(p.last_row),
                                            resume=f"losslab-train trainer.resume={run_dir}"))
            idx = p.order[start:start + batch_size]
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
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
            if constrained:
                before = [q.detach().clone() for q in model.parameters()]
            optimizer.step()
            if constrained:
                loss_fn.constrain_step(model, x, logits.detach(), before, p.epoch)
            stop_point("step", p.step + 1)

            hits = (loss_fn.probs(logits.detach()).argmax(-1) == y).sum()
            p.pending.append(torch.stack([loss.detach(), hits.float(), *logged]))
            p.pending_sizes.append(len(y))
            blown_up |= ~(loss.detach().abs() <= loss_limit)  # NaN compares false
            p.step += 1
            p.batch += 1
            p.samples += len(y)
            if bar is not None:
                bar.update(1)
            lines.at(p.step)
            last_of_run = p.step == total_steps
            evaluating = p.step % eval_interval == 0 or last_of_run
            if not evaluating and p.step % DIVERGENCE_CHECK_EVERY:
                continue
            if blown_up.item():  # a host sync, at most every DIVERGENCE_CHECK_EVERY steps
                p.outcome, diverged_at = "diverged", log_pending(logger, p, loss_tags, loss_limit)
                break
            if not evaluating:
                continue

            # ---- evaluation: log the pending step values once, validate, early-stop
            row = position() | log_pending(logger, p, loss_tags)
            outcome = validate(run_dir, tr, model, loss_fn, data, p, logger, row, scheduler, loss_limit,
                               eval_interval)
            stop_point("eval", p.step)
            if outcome == "diverged":
                p.outcome, diverged_at = "diverged", p.step
                break
            report(row)
            if outcome == "early_stopped" or last_of_run:
                p.outcome = outcome
                break
        if p.outcome == "diverged":
            break
        if constrained:
            logger.scalars(loss_fn.epoch_stats(p.epoch), p.step)
        p.epoch, p.batch, p.order = p.epoch + 1, 0, None
        if scheduler is not None and not plateau:
            scheduler.step()
        stop_point("epoch", p.epoch)
        save_last()
    train_s = time.perf_counter() - train_started
    if bar is not None:
        bar.close()

    status = p.outcome or "completed"
    final = finish(run_dir, tr, model, loss_fn, data, p, logger, status, diverged_at, position)
    summary = run_summary(status, final, train_s=train_s,
                          samples_per_s=(p.samples - samples_at_start) / train_s if train_s > 0 else None)
    if diverged_at is not None:
        summary["diverged_at_step"] = diverged_at
    write_summary(run_dir, summary)
    log.info("%s after %d steps: test/acc %s (%s)", status, p.step, rounded(final.get("test/acc")), run_dir)
    return summary


def step_counts(tr, n_train: int) -> tuple[int, int, int]:
    """Steps per epoch, steps between evaluations and steps in all for `n_train` images."""
    steps_per_epoch = math.ceil(n_train / tr.batch_size)
    total_steps = tr.epochs * steps_per_epoch
    if tr.max_steps is not None:
        total_steps = min(total_steps, tr.max_steps)
    return steps_per_epoch, max(1, round(tr.eval_every * steps_per_epoch)), total_steps

def image_counts(data) -> dict[str, int]:
    return {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)}


def summary_of(cfg, run_dir: Path, overrides, p: Progress, steps_per_epoch: int, started: float, device, status: str,
               final: dict, **extra) -> dict:
    """summary.json: the same keys for a finished and an interrupted run, plus `extra`."""
    return {"status": status, "name": cfg.name, "seed": cfg.seed, "run_dir": str(run_dir), "overrides": overrides,
            "best": p.best if p.best_state is not None else {}, "final": final, "steps": p.step,
            "epochs": round(p.step / steps_per_epoch, 4), "wall_s": time.perf_counter() - started,
            "device": str(device), "versions": versions(), **provenance(), **extra}

def validate(run_dir: Path, tr, model, loss_fn, data, p: Progress, logger: RunLogger, row: dict, scheduler,
             loss_limit: float, eval_interval: int) -> str | None:
    """One evaluation: validate, log the row, step a plateau scheduler, keep the best state, count patience.

    Returns "diverged" (the val loss is not finite or above the limit; nothing is logged), "early_stopped"
    or None."""
    val = evaluate(model, loss_fn, data.val_x, data.val_y, tr.eval_batch_size, tr.limit_eval_batches, tr.precision)
    row.update({f"val/{k}": v for k, v in val.items()})
    if not abs(val["loss"]) <= loss_limit:
        return "diverged"
    logger.scalars({"lr": row["lr"], "weights/sq_norm": row["weights/sq_norm"],
                    "pred/entropy": val["entropy"], **{f"val/{k}": v for k, v in val.items()}}, p.step)
    logger.row(row)
    p.last_row = row
    if tr.figures and tr.figures_every and (p.step // eval_interval) % tr.figures_every == 0:
        write_figures(run_dir / "figures", model, loss_fn, data, read_rows(run_dir / "metrics.csv"),
                      logger.writer, p.step, split="val")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val["loss"])
    if val["loss"] < p.best["val/loss"]:
        p.best, p.best_state, p.evals_since_best = dict(row), snapshot(model, loss_fn), 0
    else:
        p.evals_since_best += 1
        if tr.patience is not None and p.evals_since_best >= tr.patience:
            return "early_stopped"
    return None


def finish(run_dir: Path, tr, model, loss_fn, data, p: Progress, logger: RunLogger, status: str,
           diverged_at: int | None, position) -> dict:
    """The end of a run: the final evaluation on every split (with the best weights under early stopping,
    none after a divergence), figures, best.pt; closes the logger and returns `final`."""
    final = final_evaluation(tr, model, loss_fn, data, p, logger, status, diverged_at, position)
    close_run(run_dir, tr, p, logger, start_run_figures(run_dir, tr, model, loss_fn, data))
    return final


def final_evaluation(tr, model, loss_fn, data, p: Progress, logger: RunLogger, status: str,
                     diverged_at: int | None, position) -> dict:
    """`final`: every split evaluated with the best weights under early stopping, else the last ones (and
    logged); after a divergence, the last finite evaluation."""
    if status == "diverged":
        final = dict(p.last_row)  # the last finite evaluation
        message = (f"diverged: the loss at step {diverged_at} is not finite or above trainer.divergence_threshold="
                   f"{tr.divergence_threshold}; `final` holds the last evaluation before it")
        logger.text("status", message, diverged_at)
        log.warning(message)
        return final
    if tr.patience is not None and p.best_state is not None:
        model.load_state_dict(p.best_state["model"])
        loss_fn.load_state_dict(p.best_state["loss"])
    final = position()
    if hasattr(loss_fn, "logged"):
        final.update({k: v.item() for k, v in loss_fn.logged().items()})
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        metrics = evaluate(model, loss_fn, x, y, tr.eval_batch_size, tr.limit_eval_batches, tr.precision)
        final.update({f"{split}/{k}": v for k, v in metrics.items()})
    # train/loss and train/acc are per-step tags; the full train split's other metrics are logged once here
    logger.scalars({k: v for k, v in final.items() if k.startswith("test/")
                    or (k.startswith("train/") and k not in ("train/loss", "train/acc"))}, p.step)
    logger.row(final)
    stop_point("finish", p.step)
    return final


def start_run_figures(run_dir: Path, tr, model, loss_fn, data, pool=None):
    """The run's final figures, started (see figures.start_figures); None with trainer.figures=false."""
    return start_figures(model, loss_fn, data, read_rows(run_dir / "metrics.csv"), pool=pool) if tr.figures else None


def close_run(run_dir: Path, tr, p: Progress, logger: RunLogger, figures) -> None:
    """Write the started figures (PNGs and TensorBoard) and best.pt, and close the logger."""
    if figures is not None:
        figures.save(run_dir / "figures", logger.writer, p.step)
    if tr.checkpoints and p.best_state is not None:
        save_checkpoint(run_dir / "checkpoints" / "best.pt", **p.best_state, step=p.best["step"], metrics=p.best)
    logger.close()


DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the divergence flag (besides every evaluation)


def log_pending(logger: RunLogger, p: Progress, loss_tags: list[str], loss_limit: float | None = None):
    """Log the per-step values held on the device since the last evaluation (one host sync); see log_steps."""
    per_step, sizes, first = torch.stack(p.pending).tolist(), p.pending_sizes, p.step - len(p.pending) + 1
    p.pending, p.pending_sizes = [], []
    return log_steps(logger, per_step, sizes, first, loss_tags, loss_limit)


def log_steps(logger: RunLogger, per_step: list[list[float]], sizes: list[int], first: int, loss_tags: list[str],
              loss_limit: float | None = None):
    """Log per-step [loss, hits, *loss values] from step `first` on.

    Returns the train loss/acc averaged over those steps; with `loss_limit`, the first step whose loss is
    not finite or above the limit (only the steps before it are logged)."""
    if loss_limit is not None:
        bad = next(i for i, values in enumerate(per_step) if not abs(values[0]) <= loss_limit)
        per_step, sizes = per_step[:bad], sizes[:bad]
    for i, (values, n) in enumerate(zip(per_step, sizes)):
        logger.scalars({"train/loss": values[0], "train/acc": values[1] / n, **dict(zip(loss_tags, values[2:]))},
                       first + i)
    if loss_limit is not None:
        return first + len(per_step)
    seen = sum(sizes)
    return {"train/loss": sum(v[0] * n for v, n in zip(per_step, sizes)) / seen,
            "train/acc": sum(v[1] for v in per_step) / seen}


def interrupt(signum: int, step: int, run_dir: Path, save_last, logger: RunLogger, summary: dict) -> Interrupted:
    """Write last.pt (mid-epoch) and summary.json with status interrupted; the caller raises the result."""
    save_last()
    logger.close()
    write_summary(run_dir, summary)
    log.warning("interrupted by signal %d at step %d; resume with: %s", signum, step, summary["resume"])
    return Interrupted(signum)


def load_for_resume(path: Path, model, loss_fn, optimizer, scheduler, order_gen, device) -> Progress:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"], order_gen)
        return Progress(**state["progress"])
    except (KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} cannot be resumed from ({str(e).splitlines()[0]}); it is not a checkpoint of "
                        f"this config, or it is damaged.") from e


def progress_bar(mode: str, total: int, done: int = 0):
    """A ProgressBar on a terminal (or when asked for), else None and plain log lines."""
    if mode == "log" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    return ProgressBar(total, done)


class ProgressBar:
    """tqdm's bar, with the log lines printed above it while it runs (tqdm.contrib.logging: the console handlers
    write through tqdm, the log files as ever); its final state stays on the screen."""

    def __init__(self, total: int, done: int):
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.closing = contextlib.ExitStack()
        self.closing.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        self.bar = self.closing.enter_context(tqdm(total=total, initial=done, unit="step", dynamic_ncols=True))

    def update(self, steps: int) -> None:
        self.bar.update(steps)

    def set_postfix(self, values: dict) -> None:
        self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self.closing.close()


PROGRESS_LINES_PER_EPOCH = 10  # without a bar: a line at least every tenth of an epoch


class ProgressLines:
    """Without a bar, a log line every tenth of an epoch between evaluations (when they are further apart):
    the step, the speed and the time left, so a log file shows a long epoch moving."""

    def __init__(self, bar, steps_per_epoch: int, eval_interval: int, total: int, step: int):
        every = math.ceil(steps_per_epoch / PROGRESS_LINES_PER_EPOCH)
        self.every = 0 if bar is not None or eval_interval <= every else every
        self.eval_interval, self.steps_per_epoch, self.total = eval_interval, steps_per_epoch, total
        self.first_step, self.started = step, time.perf_counter()

    def at(self, step: int, running: str = "") -> None:
        """After `step`; `running` is added to the line (a stack's jobs)."""
        if not self.every or step % self.every or not step % self.eval_interval or step == self.total:
            return
        rate = (step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        log.info("step %d/%d epoch %.2f | %s%.3g steps/s, %s left", step, self.total, step / self.steps_per_epoch,
                 running, rate, duration((self.total - step) / rate))


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def rounded(value: float | None) -> str:
    """A metric in a log line: 4 significant digits, `-` when there is none."""
    return "-" if value is None else f"{value:.4g}"


def report(row: dict, job: str = "") -> None:
    """One evaluation's line, always logged: in cli.log, and above the bar on a terminal; `job` names a stack's
    member."""
    text = " ".join(f"{k} {rounded(row[k])}" for k in ("train/loss", "val/loss", "val/acc"))
    log.info("%sstep %d epoch %.2f | %s", job, row["step"], row["epoch"], text)
