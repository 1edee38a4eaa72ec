"""What a job of a multirun does besides training, and what the multirun does at its end.

- A job whose run dir already holds a finished result (status completed, early_stopped or diverged, for
  the same overrides) is skipped: relaunching a sweep into its `hydra.sweep.dir` reruns only the rest,
  and a job that left `checkpoints/last.pt` (interrupted, killed) resumes from it.
- A job that fails writes summary.json with status `failed` and the error, and the sweep goes on.
- Parallel jobs (joblib) each get their share of the CPU threads and, with several GPUs, one GPU each.
- At the start (a Hydra callback) the job dirs are set to be named by the keys the sweep varies.
- At the end (a Hydra callback) the sweep report is written and a one-line tally printed; the command
  exits non-zero only if a job failed (divergence is a result, not a failure).
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from losslab.fileio import write_json
from losslab.job_dirs import job_dirs

log = logging.getLogger("losslab")
FINISHED = ("completed", "early_stopped", "diverged")


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def previous_result(run_dir: Path, overrides: list[str]) -> dict | None:
    """The finished summary a relaunched job can reuse: same overrides, a finished status."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") in FINISHED and summary.get("overrides") == overrides:
        return summary
    return None


def can_resume(run_dir: Path, overrides: list[str]) -> bool:
    """A job that stopped part-way with the same overrides (interrupted, or killed before any summary)."""
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return False
    summary = read_summary(run_dir)
    return summary is None or (summary.get("status") == "interrupted" and summary.get("overrides") == overrides)


def record_failure(run_dir: Path, cfg: DictConfig, overrides: list[str], error: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text("".join(traceback.format_exception(error)))
    write_json(run_dir / "summary.json", {
        "status": "failed", "name": cfg.get("name"), "seed": cfg.get("seed"), "run_dir": str(run_dir),
        "overrides": overrides, "error": f"{type(error).__name__}: {error}", "best": {}, "final": {},
    })
    log.error("job failed (%s: %s); the sweep goes on. Traceback in %s", type(error).__name__, error,
              run_dir / "error.txt")


def share_resources(cfg: DictConfig, launcher: DictConfig, job_num: int) -> None:
    """Threads per parallel job on CPU, and one GPU per job when there are several."""
    import torch

    from losslab.train import usable_cores

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


def shared_override_keys(config: DictConfig) -> list[str]:
    """The keys of the sweep's overrides (`hydra.sweeper.params`, then the command line, the later of two for one
    key winning, as in Hydra's sweepers) that take one value in every job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    last = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(lines)}
    return [key for key, override in last.items() if not varies(override)]


def varies(override) -> bool:
    """Whether a parsed override gives the jobs more than one value (a list or range of one value does not)."""
    from hydra.core.override_parser.types import ValueType

    if not override.is_sweep_override():
        return False
    if override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP):
        return len(set(override.sweep_string_iterator())) > 1
    return True  # a glob of config options or an interval (Optuna)


class JobDirNames(Callback):
    """Job dirs named `<job number>_<key=value,...>` of the keys the sweep varies (conf/train.yaml's
    hydra.sweep.subdir): Hydra's override_dirname of each job, without the overrides that every job shares. The
    launchers compose each job's config with the multirun's `hydra.overrides.hydra`, so one more override there
    reaches every job, in this process or another."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shared = shared_override_keys(config)
        if not shared:
            return
        excluded = [*config.hydra.job.config.override_dirname.exclude_keys, *shared]
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append("hydra.job.config.override_dirname.exclude_keys=["
                                                + ",".join(f"'{key}'" for key in excluded) + "]")


class SweepEnd(Callback):
    """At the end of a multirun: write the report, print the tally, fail only if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from losslab.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = [(read_summary(d) or {}).get("status", "unfinished")
                    for d in job_dirs(sweep_dir)]
        counts = {s: statuses.count(s) for s in ("completed", "early_stopped", "diverged", "failed", "unfinished")}
        report = write_report(sweep_dir) if counts["completed"] + counts["early_stopped"] else None
        tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("completed", "diverged", "failed"))
        print(f"losslab sweep {sweep_dir}: {tally}" + (f"; report: {sweep_dir / 'report.md'}" if report else ""))
        if counts["failed"]:
            raise SystemExit(1)
