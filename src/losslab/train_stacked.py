"""Configs that differ only in numbers, trained together as one stacked model: `fit_stacked(jobs)`.

The `hydra/launcher=stacked` launcher groups the jobs of a multirun by their config without `STACKABLE_KEYS`
(seed, learning rate, momentum, weight decay, L2, loss coefficients, ...) and hands each group here. The loop
is `train.fit`'s, for M members at once:

- every member is built by `train.build` from its own config and seed (so its initialisation equals a separate
  run's), then the members' parameters are stacked (`torch.func.stack_module_state`) and each member's model
  keeps *views* into the stack, so evaluation, checkpoints and figures use the ordinary per-member code;
- one step: member m's batch `x[m]` (its own data order and augmentation, from its own generator), one
  `vmap`ped forward and loss (`stacked_forward`), the sum of the members' mean losses backward (member m's
  gradient is its own loss's), L2 / clipping / the optimizer update per member (`losslab.stacked`);
- evaluation, early stopping and divergence are per member: a member that stops is frozen (the optimizer's
  `active` mask) and finished at that evaluation (test, figures, summary.json; members that stop together
  have their figures drawn side by side), and the others go on;
- every member writes its own run dir with the files of a separate run; `last.pt` holds its optimizer state in
  torch.optim's format, so a stopped member resumes as a separate run (`train.fit(resume=True)`).

What a separate run does and a stacked one does not: per-member dropout masks come from the shared global RNG,
so a member with dropout is not bit-for-bit its separate run (it is the same model and recipe). Jobs a stack
cannot express raise `NotStackable` (the launcher runs them one by one and logs why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from losslab import config
from losslab.data import augment
from losslab.errors import Interrupted
from losslab.figures import drawing_pool
from losslab.log import RunLogger, write_summary
from losslab.rundir import exclusive
from losslab.stacked import StackedAdam, StackedOptimizer, StackedSGD, add_l2, stack_models, stacked_forward
from losslab.train import (
    DIVERGENCE_CHECK_EVERY,
    Progress,
    ProgressLines,
    autocast,
    build,
    catch_stop_signals,
    close_run,
    final_evaluation,
    image_counts,
    log_steps,
    pick_device,
    progress_bar,
    report,
    rng_states,
    rounded,
    save_checkpoint,
    seed_everything,
    snapshot,
    squared_norm,
    start_run_figures,
    step_counts,
    stop_point,
    summary_of,
    usable_cores,
    use_float32_math,
    validate,
)

log = logging.getLogger("losslab")

# numbers a stack holds per member; jobs whose configs agree on everything else train together
STACKABLE_KEYS = (
    "seed", "optimizer.lr", "optimizer.momentum", "optimizer.dampening", "optimizer.weight_decay", "optimizer.betas",
    "optimizer.eps", "trainer.l2", "trainer.grad_clip", "trainer.patience", "trainer.divergence_threshold",
    "loss.beta1", "loss.beta2", "loss.base1", "loss.base2",
)


class NotStackable(Exception):
    """These jobs cannot train as one stack; the message says why."""


def group_key(cfg: DictConfig) -> str:
    """The resolved config without `STACKABLE_KEYS` (and the run's name), as a string to group jobs by."""
    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("name", None)
    for key in STACKABLE_KEYS:
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(values, sort_keys=True, default=str)


@dataclass
class Job:
    """One job of a multirun: its resolved config, run dir, HParams and command-line overrides."""

    cfg: DictConfig
    run_dir: Path
    hparams: dict
    overrides: list[str]


@dataclass
class Member:
    job: Job
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer  # never stepped: holds the lr its scheduler sets, and the format of last.pt
    scheduler: object
    order_gen: torch.Generator
    p: Progress = field(default_factory=Progress)
    logger: RunLogger | None = None
    status: str = "running"
    summary: dict | None = None


def fit_stacked(jobs: list[Job], conv_on_cpu: bool = False) -> list[dict]:
    """Train `jobs` (configs equal up to STACKABLE_KEYS) as one stack; returns their summaries, in order.
    Convolutional models raise NotStackable on the CPU unless `conv_on_cpu` (see check_stackable)."""
    with contextlib.ExitStack() as locks:
        for job in jobs:
            locks.enter_context(exclusive(job.run_dir))
        return train_stack(jobs, conv_on_cpu)


def train_stack(jobs: list[Job], conv_on_cpu: bool) -> list[dict]:
    """`fit_stacked`'s training, with every member's run dir locked."""
    started = time.perf_counter()
    for job in jobs:
        config.check(job.cfg)
    tr, dataset_cfg = jobs[0].cfg.trainer, jobs[0].cfg.dataset
    device = pick_device(tr.device)
    use_float32_math(tr.precision, device)
    data = None

    def build_member(job: Job) -> Member:
        nonlocal data
        seed_everything(job.cfg.seed, tr.deterministic)
        data, loss_fn, model, optimizer, scheduler = build(job.cfg, device, data)
        order_gen = torch.Generator(device=device).manual_seed(job.cfg.seed)
        return Member(job, model, loss_fn, optimizer, scheduler, order_gen)

    members = [build_member(jobs[0])]
    check_stackable(members[0], device, conv_on_cpu)  # before the other members are built
    members += [build_member(job) for job in jobs[1:]]
    M = len(members)
    params, buffers, base = stack_models([m.model for m in members])
    share_storage(members, params, buffers)
    _, loss_buffers, loss_base = stack_models([m.loss_fn for m in members])
    optimizer = stacked_optimizer(members, params)
    param_names = [name for name, _ in members[0].model.named_parameters()]
    l2 = [m.job.cfg.trainer.l2 for m in members]
    grad_clip = torch.tensor([m.job.cfg.trainer.grad_clip or math.inf for m in members], device=device)
    clipping = any(m.job.cfg.trainer.grad_clip for m in members)  # decided once: no host read per step
    loss_limits = [math.inf if m.job.cfg.trainer.divergence_threshold is None
                   else m.job.cfg.trainer.divergence_threshold for m in members]
    loss_limit = torch.tensor(loss_limits, device=device)
    loss_tags = list(members[0].loss_fn.logged()) if hasattr(members[0].loss_fn, "logged") else []
    loss_values = [[v.item() for v in m.loss_fn.logged().values()] if loss_tags else [] for m in members]

    def member_loss(state, logits, y):
        return torch.func.functional_call(loss_base, state, (logits, y))

    member_losses = torch.vmap(member_loss)
    probs = members[0].loss_fn.probs  # elementwise over the class dim, so it takes (M, N, K)

    batch_size, shuffle, precision = tr.batch_size, tr.shuffle, tr.precision
    hflip, crop_padding = dataset_cfg.hflip, dataset_cfg.crop_padding
    n_train = len(data.train_y)
    steps_per_epoch, eval_interval, total_steps = step_counts(tr, n_train)
    for m in members:
        m.logger = RunLogger(m.job.run_dir, m.job.cfg, m.job.hparams)
    log.info("%d jobs stacked on %s: %s, %d train / %d val / %d test images, %d steps of batch %d each",
             M, device, jobs[0].cfg.name, n_train, len(data.val_y), len(data.test_y), total_steps, batch_size)

    def position(k: int) -> dict:
        m = members[k]
        weights = [q for q in m.model.parameters() if q.ndim >= 2]
        return {"step": m.p.step, "epoch": round(m.p.step / steps_per_epoch, 4),
                "lr": m.optimizer.param_groups[0]["lr"], "weights/sq_norm": squared_norm(weights)}

    def save_last(k: int) -> None:
        """Member k's last.pt, as a separate run at this point would write it (with the steps not yet logged)."""
        m = members[k]
        m.p.pending = [torch.cat([values[k], torch.tensor(loss_values[k], device=device)]) for values in pending]
        m.p.pending_sizes = list(pending_sizes)
        m.p.rows = m.logger.rows
        if tr.checkpoints:
            save_checkpoint(
                m.job.run_dir / "checkpoints" / "last.pt", **snapshot(m.model, m.loss_fn),
                optimizer=torch_optimizer_state(m.optimizer, optimizer, param_names, k),
                scheduler=m.scheduler.state_dict() if m.scheduler else None, rng=rng_states(m.order_gen),
                progress=dict(vars(m.p)),
            )

    def end_epoch(k: int) -> None:
        m = members[k]
        m.p.epoch, m.p.batch, m.p.order = m.p.epoch + 1, 0, None
        if m.scheduler is not None and not isinstance(m.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            with warnings.catch_warnings():  # the member's own optimizer is never stepped (the stack's is)
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
                m.scheduler.step()

    def stop(k: int, status: str, diverged_at: int | None = None) -> None:
        """Freeze member k, evaluate it and start its figures; `close_stopped` writes its files. Members that
        stop together are evaluated one after another while the workers draw their figures."""
        m = members[k]
        optimizer.active[k] = False
        m.status = status
        final = final_evaluation(m.job.cfg.trainer, m.model, m.loss_fn, data, m.p, m.logger, status, diverged_at,
                                 lambda: position(k))
        figures = start_run_figures(m.job.run_dir, m.job.cfg.trainer, m.model, m.loss_fn, data, figure_pool)
        stopped.append((k, final, diverged_at, figures, time.perf_counter() - train_started))

    def close_stopped() -> None:
        """Finish the runs of the members stopped since the last call: figures, best.pt, summary.json."""
        while stopped:
            k, final, diverged_at, figures, train_s = stopped.pop(0)
            m = members[k]
            close_run(m.job.run_dir, m.job.cfg.trainer, m.p, m.logger, figures)
            m.summary = summary_of(m.job.cfg, m.job.run_dir, m.job.overrides, m.p, steps_per_epoch, started, device,
                                   m.status, final, images=image_counts(data), train_s=train_s,
                                   samples_per_s=m.p.samples / train_s,
                                   stacked={"members": M, "jobs": [n.job.run_dir.name for n in members],
                                            "samples_per_s": sum(n.p.samples for n in members) / train_s})
            if diverged_at is not None:
                m.summary["diverged_at_step"] = diverged_at
            write_summary(m.job.run_dir, m.summary)
            log.info("job %s %s after %d steps: test/acc %s", m.job.run_dir.name, m.status, m.p.step,
                     rounded(final.get("test/acc")))

    def interrupt(signum: int) -> Interrupted:
        """A stop signal: every running member writes a mid-epoch last.pt and an `interrupted` summary."""
        for k in running:
            m = members[k]
            save_last(k)
            m.logger.close()
            write_summary(m.job.run_dir, summary_of(
                m.job.cfg, m.job.run_dir, m.job.overrides, m.p, steps_per_epoch, started, device, "interrupted",
                dict(m.p.last_row), images=image_counts(data), resume=f"losslab-train trainer.resume={m.job.run_dir}"))
        log.warning("interrupted by signal %d; relaunch the sweep, or resume a job on its own with "
                    "losslab-train trainer.resume=<its run dir>", signum)
        return Interrupted(signum)

    running, stopped = list(range(M)), []
    bar = progress_bar(tr.progress, total_steps)
    lines = ProgressLines(bar, steps_per_epoch, eval_interval, total_steps, 0)
    step, epoch, batch = 0, 0, 0
    pending, pending_sizes, first_pending = [], [], 1  # per step: (M, 2) loss and hits, on the device
    blown_up = torch.zeros(M, dtype=torch.bool, device=device)
    train_started = time.perf_counter()
    with catch_stop_signals() as stop_signals, drawing_workers(tr.figures, M) as figure_pool:
        while step < total_steps and running:
            orders = torch.stack([torch.randperm(n_train, device=device, generator=m.order_gen) if shuffle
                                  else torch.arange(n_train, device=device) for m in members])
            for k in running:
                members[k].p.order = orders[k].clone()
            # members with the same seed draw the same data order: then the batch is gathered once and shared
            same_batches = not (hflip or crop_padding) and all(torch.equal(orders[0], order) for order in orders[1:])
            for start in range(0, n_train, batch_size):
                if stop_signals:  # every step before this one is done, its evaluation included
                    raise interrupt(stop_signals[0])
                if same_batches:  # one batch read once, every member sees it
                    idx = orders[0, start:start + batch_size]
                    x, y = data.train_x[idx], data.train_y[idx].expand(M, -1)
                else:
                    idx = orders[:, start:start + batch_size]
                    x, y = data.train_x[idx], data.train_y[idx]
                    if hflip or crop_padding:
                        x = torch.stack([augment(x[k], hflip, crop_padding, m.order_gen)
                                         for k, m in enumerate(members)])
                with autocast(device, precision):
                    logits = stacked_forward(base, params, buffers, x, shared_input=same_batches)
                logits = logits.float()
                losses = member_losses(loss_buffers, logits, y)
                losses.sum().backward()
                grads = {name: q.grad for name, q in params.items()}
                if any(l2):
                    grads = add_l2(grads, params, l2)
                if clipping:
                    grads = clip_per_member(grads, grad_clip)
                optimizer.step(grads)
                for q in params.values():
                    q.grad = None
                stop_point("step", step + 1)

                hits = (probs(logits.detach()).argmax(-1) == y).sum(-1)
                pending.append(torch.stack([losses.detach(), hits.float()], dim=1))
                pending_sizes.append(y.shape[1])
                blown_up |= ~(losses.detach().abs() <= loss_limit)  # NaN compares false
                step += 1
                batch += 1
                for k in running:
                    members[k].p.step, members[k].p.batch = step, batch
                    members[k].p.samples += y.shape[1]
                if bar is not None:
                    bar.update(1)
                lines.at(step, f"{len(running)} jobs running, ")
                last_of_run = step == total_steps
                evaluating = step % eval_interval == 0 or last_of_run
                if not evaluating and step % DIVERGENCE_CHECK_EVERY:
                    continue
                blown = blown_up.tolist()  # a host sync, at most every DIVERGENCE_CHECK_EVERY steps
                per_step = torch.stack(pending).tolist() if evaluating or any(blown[k] for k in running) else None
                for k in [k for k in running if blown[k]]:
                    m = members[k]
                    rows = [values[k] + loss_values[k] for values in per_step]
                    diverged_at = log_steps(m.logger, rows, pending_sizes, first_pending, loss_tags, loss_limits[k])
                    running.remove(k)
                    stop(k, "diverged", diverged_at)
                close_stopped()
                if not evaluating:
                    continue

                # ---- evaluation of every running member: log its pending step values, validate, early-stop
                sizes, first = pending_sizes, first_pending
                pending, pending_sizes, first_pending = [], [], step + 1
                for k in list(running):
                    m = members[k]
                    rows = [values[k] + loss_values[k] for values in per_step]
                    row = position(k) | log_steps(m.logger, rows, sizes, first, loss_tags)
                    outcome = validate(m.job.run_dir, m.job.cfg.trainer, m.model, m.loss_fn, data, m.p, m.logger,
                                       row, m.scheduler, loss_limits[k], eval_interval)
                    if outcome != "diverged":
                        report(row, f"job {m.job.run_dir.name} ")
                    if outcome is not None:
                        running.remove(k)
                        if outcome == "early_stopped":  # what a separate run does after its loop
                            m.p.outcome = outcome
                            end_epoch(k)
                            save_last(k)
                        stop(k, outcome, step if outcome == "diverged" else None)
                stop_point("eval", step)
                close_stopped()
                optimizer.hparams["lr"] = current_lrs(members, optimizer)  # a plateau scheduler may have cut it
                if bar is not None and running:
                    bar.set_postfix({"running": len(running)}, refresh=False)
                if last_of_run or not running:
                    break
            epoch, batch = epoch + 1, 0
            for k in running:
                end_epoch(k)
            stop_point("epoch", epoch)
            for k in running:
                save_last(k)
            optimizer.hparams["lr"] = current_lrs(members, optimizer)
        if bar is not None:
            bar.close()
        for k in running:
            stop(k, "completed")
        close_stopped()
    if stop_signals:
        log.warning("signal %d arrived while the stack was finishing; it finished first", stop_signals[0])
        raise Interrupted(stop_signals[0])
    return [m.summary for m in members]


def drawing_workers(figures: bool, members: int):
    """A pool of processes that draw the members' figures side by side (4 per member, up to 8 workers and
    one per core), or None (`with` gives it): worth its start, about a second per worker while the stack
    trains, with several members and cores."""
    workers = min(8, 4 * members, usable_cores())
    return drawing_pool(workers) if figures and workers > 1 else contextlib.nullcontext()


def check_stackable(first: Member, device: torch.device, conv_on_cpu: bool = False) -> None:
    """Raise NotStackable with the reason when members like `first` (their configs differ only in
    STACKABLE_KEYS) cannot train as one stack, or would train slower as one: vmap runs the members'
    convolutions as one grouped convolution, which oneDNN computes on the CPU in the plain memory format (vmap
    has no channels_last) at about half the speed of separate convolutions (LeNet-5, 8 members: 0.83x the
    basic launcher's wall time, scripts/bench_sweep.py)."""
    if device.type == "cpu" and not conv_on_cpu and any(isinstance(m, torch.nn.Conv2d) for m in first.model.modules()):
        raise NotStackable("stacked convolutions run slower than separate ones on the CPU "
                           "(hydra.launcher.conv_on_cpu=true stacks them anyway)")
    if any(q.requires_grad for q in first.loss_fn.parameters()):
        raise NotStackable("the loss has learnable parameters (loss.coeffs or loss.bases = learnable)")
    if hasattr(first.loss_fn, "constrain_step"):
        raise NotStackable("the entropy-gradient rule rescales every step from the batch (loss=entropy_gradient)")
    if first.job.cfg.trainer.compile:
        raise NotStackable("trainer.compile is on")
    kind = type(first.optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise NotStackable(f"there is no stacked {kind.__name__}")
    group = first.optimizer.param_groups[0]
    if group.get("maximize") or group.get("amsgrad"):
        raise NotStackable("optimizer.maximize and optimizer.amsgrad have no stacked version")


def share_storage(members: list[Member], params: dict, buffers: dict) -> None:
    """Point every member's parameters and buffers at its slice of the stack (views: no copies to keep in sync)."""
    for k, m in enumerate(members):
        for name, q in m.model.named_parameters():
            q.data = params[name].data[k]
        for name, _ in m.model.named_buffers():
            module, _, leaf = name.rpartition(".")
            m.model.get_submodule(module)._buffers[leaf] = buffers[name][k]


def stacked_optimizer(members: list[Member], params: dict) -> StackedOptimizer:
    """The members' torch optimizers (one class, their own numbers) as one stacked optimizer."""
    groups = [m.optimizer.param_groups[0] for m in members]

    def each(key):
        return [g[key] for g in groups]

    if isinstance(members[0].optimizer, torch.optim.SGD):
        return StackedSGD(params, lr=each("lr"), momentum=each("momentum"), weight_decay=each("weight_decay"),
                          dampening=each("dampening"), nesterov=groups[0]["nesterov"])
    return StackedAdam(params, lr=each("lr"), betas=([b[0] for b in each("betas")], [b[1] for b in each("betas")]),
                       eps=each("eps"), weight_decay=each("weight_decay"),
                       decoupled=isinstance(members[0].optimizer, torch.optim.AdamW))


def current_lrs(members: list[Member], optimizer: StackedOptimizer) -> torch.Tensor:
    """The lr each member's scheduler has set on its own torch optimizer."""
    return torch.tensor([m.optimizer.param_groups[0]["lr"] for m in members], dtype=optimizer.hparams["lr"].dtype,
                        device=optimizer.hparams["lr"].device)


def clip_per_member(grads: dict, max_norm: torch.Tensor) -> dict:
    """torch.nn.utils.clip_grad_norm_ per member: scale member m's gradients by min(1, c_m / (‖g_m‖ + 1e-6))."""
    present = [g for g in grads.values() if g is not None]
    norms = torch.stack([g.flatten(1).float().square().sum(1) for g in present]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {name: None if g is None else g * scale.view(-1, *[1] * (g.ndim - 1)).to(g.dtype)
            for name, g in grads.items()}


def torch_optimizer_state(optimizer: torch.optim.Optimizer, stacked: StackedOptimizer, names: list[str],
                          k: int) -> dict:
    """Member k's optimizer state in its torch optimizer's own format (what a separate run's last.pt holds)."""
    group = optimizer.param_groups[0]
    for name, param in zip(names, group["params"]):
        state = stacked.state.get(name)
        if state is None:
            continue
        if isinstance(optimizer, torch.optim.SGD):
            if group["momentum"] != 0 and "momentum_buffer" in state:
                optimizer.state[param] = {"momentum_buffer": state["momentum_buffer"][k].clone()}
        else:
            optimizer.state[param] = {"step": torch.tensor(float(state["step"][k])),
                                      "exp_avg": state["exp_avg"][k].clone(),
                                      "exp_avg_sq": state["exp_avg_sq"][k].clone()}
    return optimizer.state_dict()
