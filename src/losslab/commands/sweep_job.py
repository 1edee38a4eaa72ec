"""One job of a multirun run by Hydra's launchers (basic, joblib, submitit, Slurm): reuse a finished result, resume a
stopped one, and never stop the sweep."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from losslab.errors import Interrupted, RunDirBusy

log = logging.getLogger("losslab")


def run_sweep_job(cfg: DictConfig, hc, run_dir: Path, overrides: list[str]) -> float | None:
    """One job of a multirun: reuse a finished result, resume a stopped one, and never stop the sweep."""
    from losslab.records.lock import wait_for_lock
    from losslab.records.provenance import provenance
    from losslab.records.run_dir import remove_unstarted_run
    from losslab.records.summary import can_resume, objective, previous_result, record_failure
    from losslab.sweeps.sweep import jobs_in_other_processes, report_stopped, share_resources
    from losslab.training.loop import fit
    from losslab.training.run_logger import hparams_of
    from losslab.training.runtime import keep_stop_signals

    share_resources(cfg, hc.launcher, hc.job.num)
    stops = keep_stop_signals() if jobs_in_other_processes(hc.launcher) else None
    if stops:  # this process was stopped before the job began: it does not start; the relaunch trains it
        log.info("job %s not started: the sweep was stopped by signal %d", hc.job.num, stops[0])
        remove_unstarted_run(run_dir)
        return math.nan
    while True:  # another launch of this sweep may train the job: wait for it, then take its result or go on
        wait_for_lock(run_dir, poll_s=1.0)
        done = previous_result(run_dir, overrides)
        if done is not None:
            log.info("job %s already %s in %s: skipped", hc.job.num, done["status"], run_dir)
            return objective(done)
        (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's
        try:
            summary = fit(cfg, run_dir, hparams_of(cfg, dict(hc.runtime.choices), overrides),
                          resume=can_resume(run_dir, overrides), overrides=overrides, number=hc.job.num)
            break
        except RunDirBusy:  # the other launch took it between the wait and here
            continue
        except Interrupted as e:
            if stops is not None:  # the launcher's process reports the stop once every job has returned
                return math.nan
            report_stopped(Path(hc.sweep.dir), e.signum)
            raise
        except Exception as e:  # a user mistake or a bug in one job must not cost the other jobs
            record_failure(run_dir, cfg, overrides, e, provenance())
            return math.inf
    return objective(summary)
