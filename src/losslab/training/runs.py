"""What a run is: the job it trains (config, run dir, resume), the objects it trains with, where it stands
(`Progress`, saved in last.pt), and the `Group` of runs the loop trains together; built here from a config."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig

from losslab.data import load_splits
from losslab.errors import ConfigError, UserError
from losslab.fileio import remove_stale_temp_files
from losslab.stacking.steppers import SingleStepper, StackedStepper
from losslab.training.checkpoint import load_last
from losslab.training.run_logger import RunLogger
from losslab.training.runtime import memory_format, seed_everything


@dataclass
class Job:
    """One config to train: its resolved config, run dir, HParams, command-line overrides, whether it
    continues from the run dir's checkpoints/last.pt, and its job number in a sweep (None outside one)."""

    cfg: DictConfig
    run_dir: Path
    hparams: dict = field(default_factory=dict)
    overrides: list[str] | None = None
    resume: bool = False
    number: int | None = None



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

    @property
    def numbers(self) -> tuple[int | None, ...]:
        """The job numbers of its runs, as losslab.training.hooks passes them on."""
        return tuple(run.job.number for run in self.runs)


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


def instantiate(config, *args, **kwargs):
    """Hydra's instantiate; a component's own refusal of its config (a UserError) is raised as itself, not inside
    Hydra's InstantiationException, so the user reads that one sentence."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


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
    model = model.to(memory_format=memory_format(model))
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


def step_counts(settings, n_train: int) -> tuple[int, int, int]:
    """Steps per epoch, steps between evaluations and steps in all for `n_train` images."""
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    return steps_per_epoch, max(1, round(settings.eval_every * steps_per_epoch)), total_steps


def loss_limit(run: Run) -> float:
    threshold = run.job.cfg.trainer.divergence_threshold
    return math.inf if threshold is None else threshold
