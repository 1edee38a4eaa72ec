"""The end of a run: its final evaluation (every split, the test predictions saved), best.pt and summary.json;
or, stopped by a signal, its last.pt and an `interrupted` summary. The group's other runs go on."""

from __future__ import annotations

import logging
import time

from losslab.evaluation.evaluate import save_predictions
from losslab.records.provenance import provenance, versions
from losslab.records.summary import write_summary
from losslab.training.checkpoint import rng_states, save_checkpoint, snapshot
from losslab.training.hooks import emit
from losslab.training.progress import rounded
from losslab.training.runs import Group, Run

log = logging.getLogger("losslab")
SPLITS = ("train", "val", "test")


def finish_runs(group: Group, ks: list[int], status: str) -> None:
    """Stop the runs `ks` with `status` (not diverged) at once: their final evaluations in one pass per split."""
    for k in ks:
        restore_final_weights(group.runs[k])
    settings, data = group.runs[0].job.cfg.trainer, group.data
    splits = {split: group.stepper.evaluate(*data.split(split), settings, ks) for split in final_splits(group)} \
        if ks else {}
    for k in ks:
        finish_run(group, k, status, evaluations={split: evaluations[k] for split, evaluations in splits.items()})


def finish_run(group: Group, k: int, status: str, diverged_at: int | None = None,
               evaluations: dict | None = None) -> None:
    """Stop run k: its final evaluation (`evaluations` of its final weights by split, when given), best.pt and
    summary.json; the group's other runs go on."""
    run, position = group.runs[k], group.position
    group.running.remove(k)
    group.stepper.freeze(k)
    train_s = time.perf_counter() - group.train_started
    final = final_evaluation(group, k, status, diverged_at, evaluations)
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


def final_evaluation(group: Group, k: int, status: str, diverged_at: int | None, evaluations: dict | None) -> dict:
    """`final`: every split evaluated with the best weights under early stopping, else the last ones (logged, and
    the test split's predictions saved); after a divergence, the last finite evaluation."""
    run = group.runs[k]
    settings, progress = run.job.cfg.trainer, run.progress
    if status == "diverged":
        message = (f"diverged: the loss at step {diverged_at} is not finite or above trainer.divergence_threshold="
                   f"{settings.divergence_threshold}; `final` holds the last evaluation before it")
        run.logger.text("status", message, diverged_at)
        log.warning(message)
        return dict(progress.last_row)
    if evaluations is None:
        restore_final_weights(run)
        evaluations = {split: group.stepper.evaluate(*group.data.split(split), settings, [k])[k]
                       for split in final_splits(group)}
    final = position_row(group, run) | loss_values(run)
    for split in SPLITS:
        final.update({f"{split}/{key}": value for key, value in evaluations[split].metrics.items()})
    if "train_clean" in evaluations:
        final["train/clean_acc"] = evaluations["train_clean"].metrics["acc"]
    if settings.test_best:
        final.update(best_test(group, k))
    save_predictions(run.job.run_dir / "predictions_test.npz", evaluations["test"])
    # train/loss, train/acc and train/clean_acc are per-step tags; the full train split's other metrics are logged
    # once here
    run.logger.scalars({k: v for k, v in final.items() if k.startswith(("test/", "best/test/")) or (
        k.startswith("train/") and k not in ("train/loss", "train/acc", "train/clean_acc"))}, group.position.step)
    run.logger.row(final)
    emit("finish", group.position.step, group.numbers)
    return final


def best_test(group: Group, k: int) -> dict:
    """`best/test/<metric>`: the test split evaluated with the best weights by trainer.monitor (those of best.pt),
    the final weights put back after; beside the final weights' test metrics it shows what training past the best
    evaluation cost (memorisation of noisy labels)."""
    run = group.runs[k]
    if run.progress.best_state is None:
        return {}
    final_state = snapshot(run.model, run.loss_fn)
    load_state(run, run.progress.best_state)
    evaluation = group.stepper.evaluate(*group.data.split("test"), run.job.cfg.trainer, [k])[k]
    load_state(run, final_state)
    return {f"best/test/{key}": value for key, value in evaluation.metrics.items()}


def final_splits(group: Group) -> tuple[str, ...]:
    """The splits a final evaluation evaluates: train, val, test, and, with label noise, train_clean (the training
    images against their true labels: `train/clean_acc`)."""
    return SPLITS + (("train_clean",) if group.data.label_noise is not None else ())


def restore_final_weights(run: Run) -> None:
    """The final model is the best one under early stopping (trainer.patience), else the last one."""
    settings, progress = run.job.cfg.trainer, run.progress
    if settings.patience is not None and progress.best_state is not None:
        load_state(run, progress.best_state)


def load_state(run: Run, state: dict) -> None:
    """Put a snapshot's model and loss state into the run's model and loss (a stack member's views included)."""
    run.model.load_state_dict(state["model"])
    run.loss_fn.load_state_dict(state["loss"])


def record_interruption(group: Group, signum: int) -> None:
    """A stop signal: every running run writes a mid-epoch last.pt and an `interrupted` summary."""
    for k in group.running:
        run = group.runs[k]
        save_last(group, k)
        run.logger.close()
        resume = f"losslab-train trainer.resume={run.job.run_dir}"
        write_summary(run.job.run_dir, summary_of(group, run, "interrupted", dict(run.progress.last_row),
                                                  resume=resume, signal=signum))
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
            "images": {split: len(group.data.split(split)[1]) for split in ("train", "val", "test")},
            "label_noise": group.data.label_noise, **extra}


def position_row(group: Group, run: Run) -> dict:
    """The columns that say where a run is: step, epoch, lr, ‖w‖² over the weight matrices (what trainer.l2 acts on)."""
    weights = [w for w in run.model.parameters() if w.ndim >= 2]
    return {"step": group.position.step, "epoch": round(group.position.step / group.counts[0], 4),
            "lr": run.optimizer.param_groups[0]["lr"],
            "weights/sq_norm": sum(w.detach().double().square().sum() for w in weights).item() if weights else 0.0}


def loss_values(run: Run) -> dict[str, float]:
    """The loss's logged values as they stand (after the last step): its learnable coefficients and bases."""
    return {k: v.item() for k, v in run.loss_fn.logged().items()}


def log_train_steps(run: Run, values: list[list[float]], sizes: list[int], first: int, noisy: bool) -> dict:
    """Log per-step [loss, hits, *loss values] (and, for a dataset with label noise (`noisy`), the hits on the true
    labels last) from step `first` on; returns their mean train/loss, train/acc (and train/clean_acc)."""
    tags = list(run.loss_fn.logged())
    for i, (step_values, n) in enumerate(zip(values, sizes)):
        clean = {"train/clean_acc": step_values[-1] / n} if noisy else {}
        run.logger.scalars({"train/loss": step_values[0], "train/acc": step_values[1] / n, **clean,
                            **dict(zip(tags, step_values[2:]))}, first + i)
    seen = sum(sizes)
    if not seen:
        return {}
    means = {"train/loss": sum(v[0] * n for v, n in zip(values, sizes)) / seen,
             "train/acc": sum(v[1] for v in values) / seen}
    return means | ({"train/clean_acc": sum(v[-1] for v in values) / seen} if noisy else {})


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
