"""The training loop: `fit` trains one config, `fit_group` several configs that differ only in numbers as one
stack; both run `train_group`, which reads top to bottom.

Every run of a group stands at the same step. The data live on the device as tensors and are batched by index;
per-step losses and hits stay on the device and are read once per evaluation (and every DIVERGENCE_CHECK_EVERY
steps), so the step loop never waits on the host. Each run evaluates, stops early or diverges on its own and is
then finished (final evaluation, best.pt, summary.json) while the others go on; how a step is taken is the
stepper's business (losslab.steppers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from losslab import config
from losslab.checkpoint import load_last, rng_states, save_checkpoint, snapshot
from losslab.data import augment, load_splits
from losslab.errors import ConfigError, Interrupted
from losslab.evaluation import evaluate, save_predictions
from losslab.fileio import remove_stale_temp_files
from losslab.log import RunLogger, provenance, versions, write_summary
from losslab.progress import ProgressLines, log_evaluation, progress_bar, rounded
from losslab.rundir import exclusive
from losslab.runtime import (
    catch_stop_signals,
    memory_format,
    pick_device,
    seed_everything,
    stop_point,
    use_float32_math,
)
from losslab.steppers import NotStackable, SingleStepper, StackedStepper, check_stackable

log = logging.getLogger("losslab")
DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the divergence flags (besides every evaluation)


@dataclass
class Job:
    """One config to train: its resolved config, run dir, HParams, command-line overrides, and whether it
    continues from the run dir's checkpoints/last.pt."""

    cfg: DictConfig
    run_dir: Path
    hparams: dict = field(default_factory=dict)
    overrides: list[str] | None = None
    resume: bool = False


@dataclass
class Progress:
    """Where a run stands: everything the loop needs to continue exactly where it stopped (saved in last.pt)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch
    order: torch.Tensor | None = None  # the current epoch's data order, while an epoch is under way
    samples: int = 0
    best: dict = field(default_factory=dict)  # the evaluation row with the best trainer.monitor value
    best_state: dict | None = None  # model and loss state at the best evaluation
    evals_since_best: int = 0
    pending: list = field(default_factory=list)  # per-step values not yet logged (device tensors)
    pending_sizes: list = field(default_factory=list)
    last_row: dict = field(default_factory=dict)  # the last evaluation (finite by construction)
    outcome: str | None = None  # early_stopped once the loop has stopped for that reason
    rows: int = 0  # metrics.csv rows written (a resume keeps exactly these)


@dataclass
class Run:
    """One config being trained: what it trains with, where it stands, what it writes to."""

    job: Job
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    order_gen: torch.Generator
    progress: Progress
    logger: RunLogger | None = None
    summary: dict | None = None


@dataclass
class Group:
    """The runs trained together, what they share, and the position every running run is at."""

    runs: list[Run]
    data: object
    stepper: SingleStepper | StackedStepper
    device: torch.device
    started: float  # when fit began (perf_counter)
    counts: tuple[int, int, int]  # steps per epoch, steps between evaluations, steps in all
    running: list[int]
    position: Progress  # step, epoch, batch, samples, pending values: those of every running run
    orders: torch.Tensor | None = None  # (M, n_train): each run's data order this epoch
    train_started: float = field(default_factory=time.perf_counter)
    samples_at_start: int = 0


def fit(cfg: DictConfig, run_dir: Path, hparams: dict | None = None, resume: bool = False,
        overrides: list[str] | None = None) -> dict:
    """Train, validate and test one config in `run_dir`; returns its summary (see fit_group)."""
    return fit_group([Job(cfg, run_dir, hparams or {}, overrides, resume)])[0]


def fit_group(jobs: list[Job], conv_on_cpu: bool = False) -> list[dict]:
    """Train `jobs` (one, or several whose configs differ only in losslab.steppers.STACKABLE_KEYS, as one stack);
    each writes events, metrics.csv, checkpoints, predictions_test.npz and summary.json in its run dir.

    A job with `resume` continues from its checkpoints/last.pt (model, loss, optimizer, scheduler, early-stopping
    state, RNG states, data order, mid-epoch), so the result equals an uninterrupted run's; a stack resumes as a
    stack when its members stopped at the same step. Ctrl-C, SIGTERM or the preemption signal is honoured between
    two steps: every running run's last.pt holds every step done, its summary says `interrupted`, and Interrupted
    is raised. One that arrives while the runs finish lets them finish, then raises Interrupted. Convolutional
    stacks raise NotStackable on the CPU unless `conv_on_cpu` (see check_stackable)."""
    with contextlib.ExitStack() as held:
        for job in jobs:
            held.enter_context(exclusive(job.run_dir))
        received = held.enter_context(catch_stop_signals())
        summaries = train_group(jobs, received, conv_on_cpu)
    if received:
        log.warning("signal %d arrived while the runs were finishing; they finished first", received[0])
        raise Interrupted(received[0])
    return summaries


def train_group(jobs: list[Job], received: list[int], conv_on_cpu: bool) -> list[dict]:
    """`fit_group`'s training, with the stop signals received so far in `received`."""
    group = start_group(jobs, conv_on_cpu)
    settings, position, data = jobs[0].cfg.trainer, group.position, group.data
    steps_per_epoch, eval_interval, total_steps = group.counts
    n_train, batch_size = len(data.train_y), settings.batch_size
    augmenting = bool(jobs[0].cfg.dataset.hflip or jobs[0].cfg.dataset.crop_padding)
    loss_limits = torch.tensor([loss_limit(run) for run in group.runs], device=group.device)
    blown_up = torch.zeros(len(group.runs), dtype=torch.bool, device=group.device)  # a loss not finite or too big
    bar = progress_bar(settings.progress, total_steps, position.step)
    lines = ProgressLines(bar, steps_per_epoch, eval_interval, total_steps, position.step)
    group.train_started = time.perf_counter()
    while position.step < total_steps and group.running:
        if group.orders is None:
            group.orders = torch.stack([torch.randperm(n_train, device=group.device, generator=run.order_gen)
                                        if settings.shuffle else torch.arange(n_train, device=group.device)
                                        for run in group.runs])
        # runs with the same data order (a stack of one seed) share one batch, gathered once
        shared = len(group.runs) == 1 or not augmenting and all(torch.equal(group.orders[0], order)
                                                                for order in group.orders[1:])
        for start in range(position.batch * batch_size, n_train, batch_size):
            if received:  # every step before this one is done, its evaluation included
                record_interruption(group, received[0])
                raise Interrupted(received[0])
            x, y = batch_at(group, start, batch_size, shared, augmenting)
            values = group.stepper.step(x, y, shared, position.epoch)  # (M, 2 + L)
            stop_point("step", position.step + 1)
            position.pending.append(values)
            position.pending_sizes.append(y.shape[-1])
            blown_up |= ~(values[:, 0].abs() <= loss_limits)  # NaN compares false
            position.step, position.batch, position.samples = position.step + 1, position.batch + 1, \
                position.samples + y.shape[-1]
            if bar is not None:
                bar.update(1)
            lines.at(position.step, f"{len(group.running)} jobs running, " if len(group.runs) > 1 else "")
            last_of_run = position.step == total_steps
            evaluating = position.step % eval_interval == 0 or last_of_run
            if not evaluating and position.step % DIVERGENCE_CHECK_EVERY:
                continue
            finish_diverged(group, blown_up.tolist())  # a host sync, at most every DIVERGENCE_CHECK_EVERY steps
            if evaluating and group.running:
                evaluate_running(group)
                stop_point("eval", position.step)
                if bar is not None and len(group.runs) > 1:
                    bar.set_postfix({"running": len(group.running)})
            if last_of_run or not group.running:
                break
        if group.running:
            end_epoch(group)
    if bar is not None:
        bar.close()
    for k in list(group.running):
        finish_run(group, k, "completed")
    return [run.summary for run in group.runs]


def start_group(jobs: list[Job], conv_on_cpu: bool) -> Group:
    """Build every run (its own seed, so a stack member starts as its separate run does), load its last.pt
    when it resumes, choose the stepper and open the loggers; a run that had already stopped early is finished."""
    started = time.perf_counter()
    for job in jobs:
        config.check(job.cfg)
    settings = jobs[0].cfg.trainer
    device = pick_device(settings.device)
    use_float32_math(settings.precision, device)
    runs, data = [], None
    for job in jobs:
        run, data = build_run(job, device, data)
        if len(jobs) > 1 and not runs:
            check_stackable(run, device, conv_on_cpu)  # before the other members are built
        runs.append(run)
    if len({run.progress.step for run in runs}) > 1:
        raise NotStackable("the jobs stopped at different steps, so they resume one by one")
    stepper = SingleStepper(runs[0]) if len(runs) == 1 else StackedStepper(runs)
    first = runs[0].progress
    position = Progress(step=first.step, epoch=first.epoch, batch=first.batch, samples=first.samples,
                        pending=[torch.stack(values) for values in zip(*(run.progress.pending for run in runs))],
                        pending_sizes=list(first.pending_sizes))
    orders = None if first.order is None else torch.stack([run.progress.order for run in runs])
    group = Group(runs, data, stepper, device, started, step_counts(settings, len(data.train_y)),
                  list(range(len(runs))), position, orders, samples_at_start=first.samples)
    for run in runs:
        run.logger = RunLogger(run.job.run_dir, run.job.cfg, run.job.hparams,
                               resume_rows=run.progress.rows if run.job.resume else None, resume_step=first.step)
    log.info("%s%s: %d train / %d val / %d test images of shape %s, %d classes, on %s; %d steps of batch %d%s",
             f"{len(runs)} jobs stacked on {device}: " if len(runs) > 1 else "", jobs[0].cfg.dataset.name,
             len(data.train_y), len(data.val_y), len(data.test_y), data.shape, data.num_classes, device,
             group.counts[2], settings.batch_size, f", resuming at step {first.step}" if jobs[0].resume else "")
    for k, run in enumerate(runs):
        if run.progress.outcome is not None:  # stopped early, killed before its summary was written
            finish_run(group, k, run.progress.outcome)
    return group


def build_run(job: Job, device: torch.device, data=None) -> tuple[Run, object]:
    """A run of `job`, seeded, with its last.pt loaded when it resumes; the data are loaded unless given."""
    seed_everything(job.cfg.seed, job.cfg.trainer.deterministic)
    data, loss_fn, model, optimizer, scheduler = build(job.cfg, device, data)
    order_gen = torch.Generator(device=device).manual_seed(job.cfg.seed)
    run = Run(job, model, loss_fn, optimizer, scheduler, order_gen, Progress())
    last = job.run_dir / "checkpoints" / "last.pt"
    if job.resume:
        for folder in (job.run_dir, last.parent):
            remove_stale_temp_files(folder)
        if last.exists():  # a run killed before its first last.pt resumes from the start
            run.progress = Progress(**load_last(last, model, loss_fn, optimizer, scheduler, order_gen))
    return run, data


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
    loss_params = [q for q in loss_fn.parameters() if q.requires_grad]
    if loss_params:  # learnable loss parts (min_ent / mix_ent) get their own lr and no weight decay
        groups.append({"params": loss_params, "lr": loss_fn.param_lr, "weight_decay": 0.0})
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params=groups)
    scheduler = None
    if cfg.scheduler._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau":  # follows trainer.monitor
        scheduler = instantiate(cfg.scheduler)(optimizer, mode=cfg.trainer.monitor_mode)
    elif cfg.scheduler._target_:
        scheduler = instantiate(cfg.scheduler)(optimizer)
    return data, loss_fn, model, optimizer, scheduler


def choice(group: str, fallback: str) -> str:
    """The option of a config group this run was composed with (`loss=bce`), else `fallback`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return fallback
    return HydraConfig.get().runtime.choices.get(group) or fallback


def batch_at(group: Group, start: int, batch_size: int, shared: bool, augmenting: bool):
    """The batch at `start` of every run's data order: (N, ...) images for one run or a batch the runs share,
    else (M, N, ...); labels (N,) for one run, else (M, N)."""
    data, dataset, runs = group.data, group.runs[0].job.cfg.dataset, group.runs
    if shared:
        index = group.orders[0, start:start + batch_size]
        x, y = data.train_x[index], data.train_y[index]
        if augmenting:  # one run (a stack that augments shares no batch)
            x = augment(x, dataset.hflip, dataset.crop_padding, runs[0].order_gen)
        return x, y if len(runs) == 1 else y.expand(len(runs), -1)
    index = group.orders[:, start:start + batch_size]
    x, y = data.train_x[index], data.train_y[index]
    if augmenting:
        x = torch.stack([augment(x[k], dataset.hflip, dataset.crop_padding, run.order_gen)
                         for k, run in enumerate(runs)])
    return x, y


def finish_diverged(group: Group, blown: list[bool]) -> None:
    """Finish the running runs whose loss was not finite, or above their limit, at a step since the last check:
    the steps before that one are logged, and their `final` is their last evaluation."""
    diverged = [k for k in group.running if blown[k]]
    if not diverged:
        return
    per_step, sizes = torch.stack(group.position.pending).tolist(), group.position.pending_sizes
    first = group.position.step - len(per_step) + 1
    for k in diverged:
        run, values = group.runs[k], [step_values[k] for step_values in per_step]
        finite = next(i for i, step_values in enumerate(values) if not abs(step_values[0]) <= loss_limit(run))
        log_train_steps(run, values[:finite], sizes[:finite], first)
        finish_run(group, k, "diverged", diverged_at=first + finite)


def evaluate_running(group: Group) -> None:
    """Log every running run's pending step values, validate it, and finish the runs that stop here."""
    position = group.position
    per_step, sizes = torch.stack(position.pending).tolist(), position.pending_sizes
    first = position.step - len(per_step) + 1
    position.pending, position.pending_sizes = [], []
    for k in list(group.running):
        run = group.runs[k]
        row = position_row(group, run) | log_train_steps(run, [step_values[k] for step_values in per_step], sizes,
                                                         first)
        outcome = validate(group, run, row)
        if outcome != "diverged":
            log_evaluation(row, f"job {run.job.run_dir.name} " if len(group.runs) > 1 else "")
        if outcome == "early_stopped":  # the end of its epoch, as for a run that trains to the end
            run.progress.outcome = outcome
            end_epoch_of(run, position)
            save_last(group, k, epoch_done=True)
        if outcome is not None:
            finish_run(group, k, outcome, diverged_at=position.step if outcome == "diverged" else None)
    group.stepper.sync_lrs()  # a plateau scheduler may have cut an lr


def validate(group: Group, run: Run, row: dict) -> str | None:
    """One evaluation of `run` on the val split, added to `row` and logged; steps a plateau scheduler, keeps the
    best state by trainer.monitor and counts patience. Returns "diverged" (the val loss is not finite or above
    the limit; nothing is logged), "early_stopped" or None."""
    settings, progress, data = run.job.cfg.trainer, run.progress, group.data
    val = evaluate(run.model, run.loss_fn, data.val_x, data.val_y, settings.eval_batch_size,
                   settings.limit_eval_batches, settings.precision).metrics
    row.update({f"val/{k}": v for k, v in val.items()})
    if not abs(val["loss"]) <= loss_limit(run):
        return "diverged"
    run.logger.scalars({"lr": row["lr"], "weights/sq_norm": row["weights/sq_norm"], "pred/entropy": val["entropy"],
                        **{f"val/{k}": v for k, v in val.items()}}, row["step"])
    run.logger.row(row)
    progress.last_row = row
    value = row[settings.monitor]
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(value)
    if improved(value, progress.best.get(settings.monitor), settings.monitor_mode):
        progress.best, progress.best_state, progress.evals_since_best = dict(row), snapshot(run.model, run.loss_fn), 0
        return None
    progress.evals_since_best += 1
    return "early_stopped" if settings.patience is not None and progress.evals_since_best >= settings.patience \
        else None


def improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def end_epoch(group: Group) -> None:
    """The end of an epoch for every running run: its epoch values and scheduler step, then last.pt."""
    position = group.position
    for k in group.running:
        end_epoch_of(group.runs[k], position)
    position.epoch, position.batch, group.orders = position.epoch + 1, 0, None
    stop_point("epoch", position.epoch)
    for k in group.running:
        save_last(group, k)
    group.stepper.sync_lrs()


def end_epoch_of(run: Run, position: Progress) -> None:
    epoch_values = run.loss_fn.epoch_stats(position.epoch)
    if epoch_values:
        run.logger.scalars(epoch_values, position.step)
    if run.scheduler is not None and not isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        with warnings.catch_warnings():  # a stack member's own optimizer is never stepped (the stack's is)
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()`")
            run.scheduler.step()


def save_last(group: Group, k: int, epoch_done: bool = False) -> None:
    """Run k's last.pt, as a separate run at this point writes it (with the steps not yet logged); `epoch_done`:
    the run's epoch has ended here although the group's goes on."""
    run, position, progress = group.runs[k], group.position, group.runs[k].progress
    progress.step, progress.samples, progress.rows = position.step, position.samples, run.logger.rows
    progress.epoch, progress.batch = (position.epoch + 1, 0) if epoch_done else (position.epoch, position.batch)
    progress.order = None if epoch_done or group.orders is None else group.orders[k].clone()
    progress.pending = [values[k].clone() for values in position.pending]
    progress.pending_sizes = list(position.pending_sizes)
    if run.job.cfg.trainer.checkpoints:
        save_checkpoint(run.job.run_dir / "checkpoints" / "last.pt", **snapshot(run.model, run.loss_fn),
                        optimizer=group.stepper.optimizer_state(k),
                        scheduler=run.scheduler.state_dict() if run.scheduler else None,
                        rng=rng_states(run.order_gen), progress=dict(vars(progress)))


def finish_run(group: Group, k: int, status: str, diverged_at: int | None = None) -> None:
    """Stop run k: its final evaluation, best.pt and summary.json; the group's other runs go on."""
    run, position = group.runs[k], group.position
    group.running.remove(k)
    group.stepper.freeze(k)
    train_s = time.perf_counter() - group.train_started
    final = final_evaluation(group, run, status, diverged_at)
    best = run.progress.best
    if run.job.cfg.trainer.checkpoints and run.progress.best_state is not None:
        save_checkpoint(run.job.run_dir / "checkpoints" / "best.pt", **run.progress.best_state, step=best["step"],
                        metrics=best)
    run.logger.close()
    extra = {"train_s": train_s, "samples_per_s": (position.samples - group.samples_at_start) / max(train_s, 1e-9)}
    if len(group.runs) > 1:
        extra["stacked"] = {"members": len(group.runs), "jobs": [r.job.run_dir.name for r in group.runs],
                            "samples_per_s": len(group.runs) * (position.samples - group.samples_at_start) / train_s}
    if diverged_at is not None:
        extra["diverged_at_step"] = diverged_at
    run.summary = summary_of(group, run, status, final, **extra)
    write_summary(run.job.run_dir, run.summary)
    log.info("%s%s after %d steps: test/acc %s (%s)", f"job {run.job.run_dir.name} " if len(group.runs) > 1 else "",
             status, position.step, rounded(final.get("test/acc")), run.job.run_dir)


def final_evaluation(group: Group, run: Run, status: str, diverged_at: int | None) -> dict:
    """`final`: every split evaluated with the best weights under early stopping, else the last ones (logged, and
    the test split's predictions saved); after a divergence, the last finite evaluation."""
    settings, progress = run.job.cfg.trainer, run.progress
    if status == "diverged":
        message = (f"diverged: the loss at step {diverged_at} is not finite or above trainer.divergence_threshold="
                   f"{settings.divergence_threshold}; `final` holds the last evaluation before it")
        run.logger.text("status", message, diverged_at)
        log.warning(message)
        return dict(progress.last_row)
    if settings.patience is not None and progress.best_state is not None:
        run.model.load_state_dict(progress.best_state["model"])
        run.loss_fn.load_state_dict(progress.best_state["loss"])
    final = position_row(group, run) | {k: v.item() for k, v in run.loss_fn.logged().items()}
    for split in ("train", "val", "test"):
        evaluation = evaluate(run.model, run.loss_fn, *group.data.split(split), settings.eval_batch_size,
                              settings.limit_eval_batches, settings.precision)
        final.update({f"{split}/{k}": v for k, v in evaluation.metrics.items()})
    save_predictions(run.job.run_dir / "predictions_test.npz", evaluation)
    # train/loss and train/acc are per-step tags; the full train split's other metrics are logged once here
    run.logger.scalars({k: v for k, v in final.items() if k.startswith("test/")
                        or (k.startswith("train/") and k not in ("train/loss", "train/acc"))}, group.position.step)
    run.logger.row(final)
    stop_point("finish", group.position.step)
    return final


def record_interruption(group: Group, signum: int) -> None:
    """A stop signal: every running run writes a mid-epoch last.pt and an `interrupted` summary."""
    for k in group.running:
        run = group.runs[k]
        save_last(group, k)
        run.logger.close()
        write_summary(run.job.run_dir, summary_of(group, run, "interrupted", dict(run.progress.last_row),
                                                  resume=f"losslab-train trainer.resume={run.job.run_dir}"))
    if len(group.runs) == 1:
        log.warning("interrupted by signal %d at step %d; resume with: losslab-train trainer.resume=%s", signum,
                    group.position.step, group.runs[0].job.run_dir)
    else:
        log.warning("interrupted by signal %d at step %d; relaunch the sweep (the stack resumes as a stack), or "
                    "resume a job on its own with losslab-train trainer.resume=<its run dir>", signum,
                    group.position.step)


def summary_of(group: Group, run: Run, status: str, final: dict, **extra) -> dict:
    """summary.json: the same keys for a finished and an interrupted run, plus `extra`."""
    cfg, progress, step = run.job.cfg, run.progress, group.position.step
    return {"status": status, "name": cfg.name, "seed": cfg.seed, "run_dir": str(run.job.run_dir),
            "overrides": run.job.overrides,
            "monitor": {"metric": cfg.trainer.monitor, "mode": cfg.trainer.monitor_mode},
            "best": progress.best if progress.best_state is not None else {}, "final": final, "steps": step,
            "epochs": round(step / group.counts[0], 4), "wall_s": time.perf_counter() - group.started,
            "device": str(group.device), "versions": versions(), **provenance(),
            "images": {split: len(group.data.split(split)[1]) for split in ("train", "val", "test")}, **extra}


def position_row(group: Group, run: Run) -> dict:
    """The columns that say where a run is: step, epoch, lr, ‖w‖² over the weight matrices (what trainer.l2 acts on)."""
    weights = [w for w in run.model.parameters() if w.ndim >= 2]
    return {"step": group.position.step, "epoch": round(group.position.step / group.counts[0], 4),
            "lr": run.optimizer.param_groups[0]["lr"],
            "weights/sq_norm": sum(w.detach().double().square().sum() for w in weights).item() if weights else 0.0}


def log_train_steps(run: Run, values: list[list[float]], sizes: list[int], first: int) -> dict:
    """Log per-step [loss, hits, *loss values] from step `first` on; returns their mean train/loss and train/acc."""
    tags = list(run.loss_fn.logged())
    for i, (step_values, n) in enumerate(zip(values, sizes)):
        run.logger.scalars({"train/loss": step_values[0], "train/acc": step_values[1] / n,
                            **dict(zip(tags, step_values[2:]))}, first + i)
    seen = sum(sizes)
    return {"train/loss": sum(v[0] * n for v, n in zip(values, sizes)) / seen,
            "train/acc": sum(v[1] for v in values) / seen} if seen else {}


def loss_limit(run: Run) -> float:
    threshold = run.job.cfg.trainer.divergence_threshold
    return math.inf if threshold is None else threshold


def step_counts(settings, n_train: int) -> tuple[int, int, int]:
    """Steps per epoch, steps between evaluations and steps in all for `n_train` images."""
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    return steps_per_epoch, max(1, round(settings.eval_every * steps_per_epoch)), total_steps
