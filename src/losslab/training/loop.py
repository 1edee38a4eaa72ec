"""The training loop: `fit` trains one config, `fit_group` several configs that differ only in numbers as one
stack; both run `train_group`, which reads top to bottom.

Every run of a group stands at the same step. The data live on the device as tensors and are batched by index;
per-step losses and hits stay on the device and are read once per evaluation (and every DIVERGENCE_CHECK_EVERY
steps), so the step loop never waits on the host. Each run evaluates, stops early or diverges on its own and is
then finished (final evaluation, best.pt, summary.json) while the others go on; how a step is taken is the
stepper's business (losslab.stacking.steppers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from losslab import config
from losslab.data import augment
from losslab.errors import Interrupted
from losslab.records.lock import exclusive
from losslab.stacking.steppers import NotStackable, SingleStepper, StackedStepper, check_stackable
from losslab.training.checkpoint import snapshot
from losslab.training.finish import (
    finish_run,
    finish_runs,
    log_train_steps,
    loss_values,
    position_row,
    record_interruption,
    save_last,
)
from losslab.training.hooks import emit
from losslab.training.progress import ProgressLines, log_evaluation, progress_bar
from losslab.training.run_logger import RunLogger
from losslab.training.runs import Group, Job, Progress, Run, build_run, loss_limit, step_counts
from losslab.training.runtime import catch_stop_signals, pick_device, use_float32_math

log = logging.getLogger("losslab")
DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the divergence flags (besides every evaluation)


def fit(cfg: DictConfig, run_dir: Path, hparams: dict | None = None, resume: bool = False,
        overrides: list[str] | None = None, number: int | None = None) -> dict:
    """Train, validate and test one config in `run_dir` (job `number` of a sweep); returns its summary (see
    fit_group)."""
    return fit_group([Job(cfg, run_dir, hparams or {}, overrides, resume, number)])[0]


def fit_group(jobs: list[Job], conv_on_cpu: bool = False) -> list[dict]:
    """Train `jobs` (one, or several whose configs differ only in losslab.stacking.steppers.STACKABLE_KEYS, as one
    stack); each writes events, metrics.csv, checkpoints, predictions_test.npz and summary.json in its run dir.

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
    group.train_started, first_step, numbers = time.perf_counter(), position.step, group.numbers
    while position.step < total_steps and group.running:
        if group.orders is None:
            group.orders = torch.stack([torch.randperm(n_train, device=group.device, generator=run.order_gen)
                                        if settings.shuffle else torch.arange(n_train, device=group.device)
                                        for run in group.runs])
        batches = distinct_batches(group.orders, augmenting)
        for start in range(position.batch * batch_size, n_train, batch_size):
            if received:  # every step before this one is done, its evaluation included
                record_interruption(group, received[0])
                raise Interrupted(received[0])
            x, y, clean_y = batch_at(group, start, batch_size, batches, augmenting)
            values = group.stepper.step(x, y, batches == 1, position.epoch, clean_y)  # (M, 2 + L [+ 1])
            emit("step", position.step + 1, numbers)
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
                emit("eval", position.step, numbers)
                if bar is not None and len(group.runs) > 1:
                    bar.set_postfix({"running": len(group.running)})
            if last_of_run or not group.running:
                break
        if group.running:
            end_epoch(group)
    if bar is not None:
        bar.close()
    if len(group.runs) > 1:
        trained_s, steps = time.perf_counter() - group.train_started, position.step - first_step
        log.info("%d jobs trained %d steps in %.1f s (%.2f ms a step)", len(group.runs), steps, trained_s,
                 1e3 * trained_s / max(steps, 1))
    finish_runs(group, list(group.running), "completed")
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
                               resume_rows=run.progress.rows if run.job.resume else None, resume_step=first.step,
                               loss_columns=tuple(run.loss_fn.logged()), label_noise=data.label_noise)
    log.info("%s%s: %d train / %d val / %d test images of shape %s, %d classes, on %s; %d steps of batch %d%s",
             f"{len(runs)} jobs stacked on {device}: " if len(runs) > 1 else "", jobs[0].cfg.dataset.name,
             len(data.train_y), len(data.val_y), len(data.test_y), data.shape, data.num_classes, device,
             group.counts[2], settings.batch_size, f", resuming at step {first.step}" if jobs[0].resume else "")
    for k, run in enumerate(runs):
        if run.progress.outcome is not None:  # stopped early, killed before its summary was written
            finish_run(group, k, run.progress.outcome)
    return group


def distinct_batches(orders: torch.Tensor, augmenting: bool) -> int:
    """G, the number of distinct batches the runs' data orders (M, n) give at each step, with member m's batch the
    [m // (M/G)]th: runs with one data order (one seed) share a batch, gathered once, when they stand in G equal
    blocks of consecutive runs (the stacked launcher orders a stack's members by seed); else, or when the runs
    augment (each draws its own flips and crops), G = M."""
    members = len(orders)
    if augmenting:
        return members
    size = next((m for m in range(1, members) if not torch.equal(orders[m], orders[0])), members)
    blocks = members % size == 0 and all(torch.equal(orders[m], orders[m - m % size]) for m in range(members))
    return members // size if blocks else members


def batch_at(group: Group, start: int, batch_size: int, batches: int, augmenting: bool):
    """The batch at `start` of every run's data order: (N, ...) images for one run or a batch the runs share,
    else (G, N, ...) with member m's batch at [m // (M/G)] (see distinct_batches); labels (N,) for one run, else
    (M, N); the true labels alike where the dataset has label noise, else None."""
    data, dataset, runs = group.data, group.runs[0].job.cfg.dataset, group.runs
    if batches == 1:
        index = group.orders[0, start:start + batch_size]
        x = data.train_x.index_select(0, index)
        if augmenting:  # one run (a stack that augments shares no batch)
            x = augment(x, dataset.hflip, dataset.crop_padding, runs[0].order_gen)
    else:
        index = group.orders[::len(runs) // batches, start:start + batch_size]
        # index_select gathers whole images, several times faster than indexing with a 2-d index
        x = data.train_x.index_select(0, index.flatten()).unflatten(0, index.shape)
        if augmenting:
            x = torch.stack([augment(x[k], dataset.hflip, dataset.crop_padding, run.order_gen)
                             for k, run in enumerate(runs)])
    clean_y = None if data.train_clean_y is None else labels_at(data.train_clean_y, index, len(runs))
    return x, labels_at(data.train_y, index, len(runs)), clean_y


def labels_at(labels: torch.Tensor, index: torch.Tensor, members: int) -> torch.Tensor:
    """`labels` at a batch's `index` for each of the `members` runs: (N,) for one run; (M, N) from an (N,) index the
    runs share or a (G, N) one, member m's row [m // (M/G)]."""
    y = labels[index]
    if members == 1:
        return y
    return y.expand(members, -1) if index.ndim == 1 else y.repeat_interleave(members // len(index), dim=0)


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
        log_train_steps(run, values[:finite], sizes[:finite], first, group.data.label_noise is not None)
        finish_run(group, k, "diverged", diverged_at=first + finite)


def evaluate_running(group: Group) -> None:
    """Log every running run's pending step values, validate it, and finish the runs that stop here."""
    position = group.position
    per_step, sizes = torch.stack(position.pending).tolist(), position.pending_sizes
    first = position.step - len(per_step) + 1
    position.pending, position.pending_sizes = [], []
    settings, data = group.runs[0].job.cfg.trainer, group.data
    evaluations = group.stepper.evaluate(data.val_x, data.val_y, settings, group.running)
    for k in list(group.running):
        run = group.runs[k]
        row = position_row(group, run) | loss_values(run) | log_train_steps(
            run, [step_values[k] for step_values in per_step], sizes, first, data.label_noise is not None)
        outcome = validate(run, evaluations[k].metrics, row)
        if outcome != "diverged":
            log_evaluation(row, f"job {run.job.run_dir.name} " if len(group.runs) > 1 else "")
        if outcome == "early_stopped":  # the end of its epoch, as for a run that trains to the end
            run.progress.outcome = outcome
            end_epoch_of(run, position)
            save_last(group, k, epoch_done=True)
        if outcome is not None:
            finish_run(group, k, outcome, diverged_at=position.step if outcome == "diverged" else None)
        else:
            run.logger.flush()
    group.stepper.sync_lrs()  # a plateau scheduler may have cut an lr


def validate(run: Run, val: dict, row: dict) -> str | None:
    """`run`'s evaluation `val` of the val split, added to `row` and logged; steps a plateau scheduler, keeps the
    best state by trainer.monitor and counts patience. Returns "diverged" (the val loss is not finite or above
    the limit; nothing is logged), "early_stopped" or None."""
    settings, progress = run.job.cfg.trainer, run.progress
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
    emit("epoch", position.epoch, group.numbers)
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
