"""What a job of a multirun does besides training, and what the multirun does at its end.

- A job whose run dir already holds a finished result (status completed, early_stopped or diverged, for
  the same overrides) is skipped: relaunching a sweep into its `hydra.sweep.dir` reruns only the rest,
  and every other job with a `checkpoints/last.pt` (interrupted, killed, failed after a time-out) resumes from it.
- A job that fails writes summary.json with status `failed` and the error, and the sweep goes on.
- Parallel jobs (joblib) each get their share of the CPU threads and, with several GPUs, one GPU each.
- At the start (a Hydra callback) the job dirs are set to be named by the keys the sweep varies.
- At the end (a Hydra callback) the figures of finished jobs with trainer.figures=true are drawn (unset, they are
  drawn on demand: losslab-report --figures), the sweep report is written and a
  one-line tally printed; the command exits non-zero only if a job failed or was left unfinished, and then
  prints the command that continues the sweep (divergence is a result, not a failure).
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import ValueType
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from losslab.records.job_dirs import job_dirs
from losslab.records.summary import LEFT, read_summary
from losslab.records.sweep_state import causes, continue_command, more_memory, tally, tally_text
from losslab.sweeps.slurm import UNRECORDED

log = logging.getLogger("losslab")
NAMED_GROUPS = ("dataset", "model", "loss")  # the default `name` is <dataset>-<model>-<loss>
DISCRETE_SWEEPS = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)


def sweep_name(config: DictConfig) -> str:
    """The `<name>` of a multirun's dir `outputs/<name>/multirun/<timestamp>`: `name` when the command line or an
    experiment sets it, else dataset-model-loss as the sweep chooses them, a swept group as its options joined by
    `+` (`-m loss=ce,mbce` on MNIST: mnist-linear-ce+mbce)."""
    if not OmegaConf.is_interpolation(config, "name"):
        return str(config.name)
    overrides = sweep_overrides(config)

    def options(group: str) -> str:
        override = overrides.get(group)
        if override is not None and varies(override) and override.value_type in DISCRETE_SWEEPS:
            return "+".join(override.sweep_string_iterator())
        return str(config.hydra.runtime.choices[group])

    return "-".join(options(group) for group in NAMED_GROUPS)


def sweep_overrides(config: DictConfig) -> dict:
    """The sweep's parsed overrides by key (`hydra.sweeper.params`, then the command line; the later of two for one
    key wins, as in Hydra's sweepers)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    return {o.key_or_group: o for o in OverridesParser.create().parse_overrides(lines)}


def varies(override) -> bool:
    """Whether a parsed override gives the jobs more than one value (a list or range of one value does not)."""
    if not override.is_sweep_override():
        return False
    if override.value_type in DISCRETE_SWEEPS:
        return len(set(override.sweep_string_iterator())) > 1
    return True  # a glob of config options or an interval (Optuna)


def check_grid(task_overrides: list[str]) -> None:
    """Every value a multirun's grid gives its jobs, checked before Hydra starts (so before the first job trains and
    before anything is written): each value of each swept key (a list, a range, a config group's options, from the
    command line or a `sweep=` preset's hydra.sweeper.params) is set in the config of the other keys' first values
    (a config group's option composed) and checked as a job's start checks its config (losslab.config.check). A
    refused value is one sentence naming it. Values a sweeper draws (Optuna's intervals) are checked by each job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from losslab.config import CONF_DIR, check
    from losslab.errors import UserError

    def values_of(override) -> list[tuple[str, Any]] | None:  # (as written, as parsed); None: a sweeper draws them
        if not override.is_sweep_override():
            return [(override.get_value_element_as_str(), override.value())]
        if override.value_type not in DISCRETE_SWEEPS:
            return None
        return list(zip(override.sweep_string_iterator(), override.sweep_iterator()))

    def parsed(lines: list[str]) -> dict:
        return {o.get_key_element(): values_of(o) for o in OverridesParser.create().parse_overrides(lines)}

    given = parsed(task_overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose("train", [f"{k}={v[0][0]}" for k, v in given.items() if v], return_hydra_config=True)
        params = OmegaConf.select(composed, "hydra.sweeper.params") or {}
        grid = {k: v for k, v in {**parsed([f"{k}={v}" for k, v in params.items()]), **given}.items() if v}
        first = {key: values[0][0] for key, values in grid.items()}
        plain = compose("train", [f"{k}={v}" for k, v in first.items()])
        for key, values in grid.items():
            for written, value in values if len(values) > 1 else []:
                if key.lstrip("+~").split("@")[0] in composed.hydra.runtime.choices:  # a config group's option
                    job = compose("train", [f"{k}={v}" for k, v in {**first, key: written}.items()])
                else:
                    job = copy.deepcopy(plain)
                    OmegaConf.update(job, key.lstrip("+~"), value, force_add=key.startswith("+"))
                try:
                    check(job)
                except UserError as e:
                    raise UserError(f"the sweep's {key}={written} is refused before any job trains: {e}") from None
    GlobalHydra.instance().clear()


def pin_sweep_dir(config: DictConfig) -> None:
    """Resolve `hydra.sweep.dir` once, with the sweep's name, and hand it to every job as a Hydra override.

    Hydra resolves the sweep dir again in each job's own config, where `name` names the job (jobs of
    `loss=ce,mbce` would land in two sweep dirs), and the default `name` cannot resolve at all before a job's
    Hydra config is set. A `hydra.sweep.dir=` from the command line is used as given."""
    if any(o.startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra):
        return
    with read_write(config), open_dict(config):
        config.name = sweep_name(config)
        sweep_dir = str(config.hydra.sweep.dir)
        config.hydra.sweep.dir = sweep_dir
        quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{quoted}'")


def share_resources(cfg: DictConfig, launcher: DictConfig, job_num: int) -> None:
    """Threads per parallel job on CPU, and one GPU per job when there are several."""
    import torch

    from losslab.training.runtime import usable_cores

    cores = usable_cores()
    parallel = int(launcher.get("n_jobs") or 1) if "joblib" in str(launcher.get("_target_", "")).lower() else 1
    if parallel == -1 or parallel > cores:
        parallel = cores
    if parallel > 1:
        torch.set_num_threads(max(1, cores // parallel))
    gpus = torch.cuda.device_count()
    if cfg.trainer.device == "auto" and gpus > 1:
        with open_dict(cfg):
            cfg.trainer.device = f"cuda:{job_num % gpus}"


def name_job_dirs(config: DictConfig) -> None:
    """Job dirs named `<job number>_<key=value,...>` of the keys the sweep varies (conf/train.yaml's
    hydra.sweep.subdir): Hydra's override_dirname of each job, without the overrides that every job shares. The
    launchers compose each job's config with the multirun's `hydra.overrides.hydra`, so one more override there
    reaches every job, in this process or another."""
    shared = [key for key, override in sweep_overrides(config).items() if not varies(override)]
    if not shared:
        return
    excluded = [*config.hydra.job.config.override_dirname.exclude_keys, *shared]
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append("hydra.job.config.override_dirname.exclude_keys=["
                                            + ",".join(f"'{key}'" for key in excluded) + "]")


class SweepCallback(Callback):
    """At the start of a multirun: one sweep dir for all jobs, job dirs named by what varies, and where submitit's
    jobs write their output. At the end: write the report, print the tally, fail if a job failed or was left."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pin_sweep_dir(config)
        name_job_dirs(config)
        folder, executor = config.hydra.launcher.get("submitit_folder"), config.hydra.launcher.get("executor")
        # jobs that submitit runs (not hydra/launcher=stacked's in_process ones) write their output to its folder
        if folder and getattr(executor, "name", executor) != "in_process":
            print(f"losslab sweep {config.hydra.sweep.dir}: the jobs' output (stdout, stderr) goes to "
                  f"{str(folder).replace('%j', '<job id>')}/, each job's log to <its run dir>/cli.log", flush=True)
            ANNOUNCERS[str(config.hydra.sweep.dir)] = JobEndAnnouncer(Path(config.hydra.sweep.dir))
        if jobs_in_other_processes(config.hydra.launcher):
            HELD_STOPS[str(config.hydra.sweep.dir)] = StopsHeld()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_idle_workers()
        sweep_dir = Path(config.hydra.sweep.dir)
        if str(config.hydra.sweep.dir) in ANNOUNCERS:
            ANNOUNCERS.pop(str(config.hydra.sweep.dir)).stop()
        held = HELD_STOPS.pop(str(config.hydra.sweep.dir), None)
        signum = held.release() if held else None
        if signum is not None:
            report_stopped(sweep_dir, signum)
            raise SystemExit(128 + signum)
        unrecorded = UNRECORDED.pop(str(config.hydra.sweep.dir), [])
        for sentence in unrecorded:
            print(f"losslab sweep {sweep_dir}: {sentence}", flush=True)
        with missing_figures_drawn(sweep_dir):
            counts = tally(sweep_dir)
            report = report_of_finished(sweep_dir, counts, unrecorded)
        left = max(sum(counts.get(state, 0) for state in LEFT), len(unrecorded))
        memory = "" if more_memory(sweep_dir) is None else " (asking for twice the memory)"
        print(f"losslab sweep {sweep_dir}: {tally_text(counts, causes(sweep_dir))}"
              + (f"; report: {sweep_dir / 'report.md'}" if report else "")
              + (f"; continue the {left} left{memory} with: {continue_command(sweep_dir)}" if left else ""),
              flush=True)
        if left:
            raise SystemExit(1)


def report_stopped(sweep_dir: Path, signum: int) -> None:
    """A stop signal in a multirun: the report of the jobs finished so far, and a line with the tally and the
    command that relaunches the sweep into its dir."""
    counts = tally(sweep_dir)
    report = report_of_finished(sweep_dir, counts)
    print(f"losslab sweep {sweep_dir} stopped by signal {signum}: {tally_text(counts, causes(sweep_dir))}"
          + (f"; report: {sweep_dir / 'report.md'}" if report else "")
          + f"; run the rest with: {continue_command(sweep_dir)}", flush=True)


def report_of_finished(sweep_dir: Path, counts: dict[str, int], unrecorded: list[str] = ()):
    """The sweep's report (losslab.reporting.report.write_report) when a job has completed or stopped early (the
    tally `counts` says), else None."""
    from losslab.reporting.report import write_report

    if not counts.get("completed", 0) + counts.get("early_stopped", 0):
        return None
    return write_report(sweep_dir, unrecorded=unrecorded)


def jobs_in_other_processes(launcher: DictConfig) -> bool:
    """Whether the launcher runs the jobs in processes of their own on this machine (hydra/launcher=joblib's
    workers, submitit_local's jobs) rather than in its own (basic, stacked) or on a cluster (slurm)."""
    target = str(launcher.get("_target_", ""))
    return "hydra_joblib_launcher" in target or target.endswith(".LocalLauncher")


HELD_STOPS = {}  # sweep dir -> its StopsHeld, while its jobs run in processes of their own


class StopsHeld:
    """While a sweep's jobs run in processes of their own on this machine, its launcher's process blocks Ctrl-C,
    SIGTERM and SIGHUP, and so do the processes it starts (joblib's workers, submitit's controllers and jobs inherit
    the block): none of the launchers' machinery dies of a signal and kills a job that is writing its last.pt. A
    signal sent to the process group (Ctrl-C in a terminal) waits in each job until its start takes it
    (losslab.training.runtime.keep_stop_signals): a running job stops at its next step and writes last.pt and an
    `interrupted` summary, a later one does not start. The launcher's own signal is caught (or left pending), and
    `release` says which it was once every job has returned."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received = []
        self.previous = {signum: signal.signal(signum, lambda n, _frame: self.received.append(n))
                         for signum in self.SIGNALS}  # for a thread that does not block them (one started before)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def release(self) -> int | None:
        """The first stop signal the launcher's process got, if any (a pending one is taken, not acted on); the
        signals' handling as it was before."""
        pending = sorted(signal.sigpending() & set(self.SIGNALS), key=self.SIGNALS.index)
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # a pending signal is discarded as it is unblocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return (self.received + pending + [None])[0]


def release_idle_workers() -> None:
    """joblib's worker processes (hydra/launcher=joblib) wait 300 s for more work after the sweep, holding the
    command's output open and its process alive: the sweep's jobs are done, so they are shut down now."""
    if "joblib" in sys.modules:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def missing_figures_drawn(sweep_dir: Path, unset_draws: bool = False):
    """The figures of every job that has none yet (a job skipped as finished by a relaunch has its own), drawn
    after all jobs, whichever launcher ran them, while the caller writes the report: at a sweep's end those of
    jobs with trainer.figures=true only; with `unset_draws` (losslab-report --figures) also those left unset.
    losslab.reporting.run_figures leaves out runs that did not finish."""
    from losslab.reporting.run_figures import runs_figures_drawn
    from losslab.training.runtime import usable_cores

    jobs = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    return runs_figures_drawn([job for job in jobs if not (job / "figures").exists()], usable_cores(), unset_draws)


ANNOUNCERS = {}  # sweep dir -> its JobEndAnnouncer (not on the callback, which submitit pickles)


class JobEndAnnouncer:
    """For jobs that run elsewhere (submitit): a line on this screen as each job's summary.json appears, read every
    few seconds; `stop` reads once more, so every finished job has its line."""

    def __init__(self, sweep_dir: Path, every_s: float = 2.0):
        self.sweep_dir, self.seen, self.stopping = sweep_dir, set(), threading.Event()
        self.thread = threading.Thread(target=self.watch, args=(every_s,), daemon=True)
        self.thread.start()

    def watch(self, every_s: float) -> None:
        while not self.stopping.wait(every_s):
            self.announce()

    def announce(self) -> None:
        for job in sorted(self.sweep_dir.iterdir()) if self.sweep_dir.is_dir() else []:
            summary = read_summary(job) if job.name not in self.seen else None
            if summary and summary.get("status") != "interrupted":
                self.seen.add(job.name)
                accuracy = summary.get("final", {}).get("test/acc")
                result = "" if accuracy is None else f": test/acc {accuracy:.4g}"
                print(f"job {job.name} {summary['status']}{result}", flush=True)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.announce()
