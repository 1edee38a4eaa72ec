"""Sweeps on the real Hydra launchers: grids, seeds, failures, relaunching into the same sweep dir."""

import itertools
import json
import os
import signal
import statistics
import time

import pytest
from helpers.commands import report_rows, summaries
from helpers.tb_events import hparams

from losslab.records.job_dirs import MAX_NAME, job_dir, job_dir_name, job_dirs, job_number
from losslab.records.summary import objective

GRID = ["dataset=synthetic", "trainer.epochs=1", "trainer.progress=log", "optimizer.lr=0.5,0.05", "trainer.l2=0,0.1"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_two_by_two_grid_with_two_seeds(launcher, tmp_path, losslab):
    extra = [] if launcher == "basic" else ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = losslab.sweep(*GRID, "seed=0,1", *extra, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    returned = time.time()
    assert proc.returncode == 0, proc.output
    runs = summaries(tmp_path / "s")
    last_summary = max((job / "summary.json").stat().st_mtime for job in job_dirs(tmp_path / "s"))
    assert returned - last_summary < 30, "the command stayed alive after its jobs were done (idle workers)"
    assert len(runs) == 8 and all(r["status"] == "completed" for r in runs.values())
    assert f"losslab sweep {tmp_path / 's'}: 8 completed; report: " in proc.output
    # each job dir says what its job varies (joblib's workers name them in their own processes)
    grid = itertools.product(("0.5", "0.05"), ("0", "0.1"), ("0", "1"))
    assert [d.name for d in job_dirs(tmp_path / "s")] == [
        f"{job}_optimizer.lr={lr},seed={seed},trainer.l2={l2}" for job, (lr, l2, seed) in enumerate(grid)]
    configs = [r for r in report_rows(tmp_path / "s") if r["status"] == "aggregate"]
    assert len(configs) == 4 and all(r["n"] == "2" for r in configs)
    for row in configs:  # mean and sample std over the two seeds, recomputed from the summaries
        values = [r["final"]["test/nll"] for r in runs.values()
                  if f"optimizer.lr={row['optimizer.lr']}" in r["overrides"]
                  and f"trainer.l2={row['trainer.l2']}" in r["overrides"]]
        assert len(values) == 2
        assert float(row["test/nll mean"]) == pytest.approx(statistics.mean(values), rel=1e-9)
        assert float(row["test/nll std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
    # one TensorBoard logdir for the sweep: every job's own event file has HParams with the same key set
    key_sets = {tuple(sorted(hparams(job))) for job in job_dirs(tmp_path / "s")}
    assert len(key_sets) == 1 and {"optimizer.lr", "trainer.l2", "seed", "loss"} <= set(next(iter(key_sets)))


def test_submitit_local_runs_a_sweep(tmp_path, losslab):
    proc = losslab.sweep("dataset=synthetic", "trainer.epochs=1", "trainer.progress=log", "optimizer.lr=0.5,0.05",
                         "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    runs = summaries(tmp_path / "s")
    assert sorted(runs) == [0, 1] and all(r["status"] == "completed" for r in runs.values())
    assert [d.name for d in job_dirs(tmp_path / "s")] == ["0_optimizer.lr=0.5", "1_optimizer.lr=0.05"]
    assert (tmp_path / "s" / "report.md").exists()


def test_optuna_sweeper_minimises_the_objective_the_jobs_return(tmp_path, losslab):
    proc = losslab.sweep("hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "optimizer.lr=interval(0.001,0.5)",
                         "dataset=synthetic", "trainer.epochs=1", "trainer.progress=log",
                         f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    runs = summaries(tmp_path / "s")
    assert len(runs) == 3 and all(r["status"] == "completed" for r in runs.values())
    for job in job_dirs(tmp_path / "s"):  # named by the lr Optuna chose
        lr = next(o for o in runs[job_number(job)]["overrides"] if o.startswith("optimizer.lr="))
        assert job.name == f"{job_number(job)}_{lr}"
    best = min(objective(r) for r in runs.values())
    assert f"Best value: {best}" in proc.output  # the objective each job returns: its monitored metric
    assert "alembic" not in proc.output  # Optuna's storage plugins' start-up lines are not the user's business


def test_a_presets_grid_names_the_job_dirs_and_an_unsafe_value_is_made_safe(tmp_path, losslab):
    proc = losslab.sweep("dataset=synthetic", "trainer.max_steps=1", "trainer.figures=false", "trainer.progress=log",
                         "sweep=seeds", "name=a/b,c", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == [
        f"{job}_name={name},seed={seed}" for job, (seed, name) in enumerate(itertools.product((0, 1, 2), ("a_b", "c")))]
    assert "6 completed" in proc.output
    # a command-line value replaces the preset's grid of that key, as in Hydra's sweepers: seed no longer varies
    proc = losslab.sweep("dataset=synthetic", "trainer.max_steps=1", "trainer.figures=false", "trainer.progress=log",
                         "sweep=seeds", "seed=1", "optimizer.lr=0.5,0.05", f"hydra.sweep.dir={tmp_path / 'one_seed'}",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert [d.name for d in job_dirs(tmp_path / "one_seed")] == ["0_optimizer.lr=0.5", "1_optimizer.lr=0.05"]


def test_a_failing_and_a_diverging_job_do_not_stop_the_others(tmp_path, losslab):
    # train_size=100000 fails inside the job (the synthetic set has fewer images: found when its data is read);
    # lr=1e6 with an L2 term diverges
    proc = losslab.sweep("dataset=synthetic", "trainer.epochs=1", "trainer.progress=log", "trainer.l2=1",
                         "optimizer.lr=0.5,1e6", "dataset.train_size=1000,100000",
                         f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.output  # a job failed
    assert "1 completed, 1 diverged, 2 failed" in proc.output
    runs = summaries(tmp_path / "s")
    assert [runs[i]["status"] for i in range(4)] == ["completed", "failed", "diverged", "failed"]
    assert "dataset.train_size=100000 is more than" in runs[1]["error"]
    assert (job_dir(tmp_path / "s", 1) / "error.txt").exists()
    listed = {r["jobs"]: r["status"] for r in report_rows(tmp_path / "s") if r["status"] != "aggregate"}
    assert listed == {"1_dataset.train_size=100000,optimizer.lr=0.5": "failed",
                      "2_dataset.train_size=1000,optimizer.lr=1000000.0": "diverged",
                      "3_dataset.train_size=100000,optimizer.lr=1000000.0": "failed"}


def test_relaunching_a_killed_sweep_runs_only_the_unfinished_jobs(tmp_path, losslab):
    grid = [*GRID, "trainer.epochs=3", "trainer.deterministic=true"]
    reference = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.output

    killed = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "s" / "1_optimizer.lr=0.5,trainer.l2=0.1" / "summary.json").exists():
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    finished = sum(1 for d in job_dirs(tmp_path / "s") if (d / "summary.json").exists())
    assert 2 <= finished < 4

    relaunch = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.output
    assert relaunch.output.count(": skipped") == finished  # only the unfinished jobs ran again
    assert "4 completed" in relaunch.output

    def numbers(sweep_dir):
        return [{k: v for k, v in row.items() if k not in ("jobs", "note")} for row in report_rows(sweep_dir)]

    assert numbers(tmp_path / "s") == numbers(tmp_path / "reference")


def test_a_relaunch_resumes_a_job_with_a_checkpoint_whatever_its_status_and_clears_its_old_error(tmp_path, losslab):
    """Job 1 is killed at step 21's evaluation (its last.pt is step 14's) and then marked failed with an error.txt,
    as a job that timed out too often on a cluster was; the relaunch resumes it from last.pt, not from step 0."""
    grid = ["dataset=synthetic", "trainer.epochs=3", "trainer.eval_every=0.5", "trainer.deterministic=true",
            "trainer.progress=log", "trainer.figures=false", "seed=0,1"]
    reference = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.output
    killed = losslab.train("-m", *grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
                           stop_at="SIGKILL eval 21 job=1")
    assert killed.returncode == -signal.SIGKILL
    job = job_dir(tmp_path / "s", 1)
    assert (job / "checkpoints" / "last.pt").exists()
    (job / "summary.json").write_text(json.dumps({"status": "failed", "overrides": ["seed=1"], "error": "timed out"}))
    (job / "error.txt").write_text("Job not requeued because: timed-out too many times.")

    relaunch = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.output
    assert "resuming at step 14" in (job / "cli.log").read_text() and not (job / "error.txt").exists()
    for number in (0, 1):
        ours, theirs = job_dir(tmp_path / "s", number), job_dir(tmp_path / "reference", number)
        assert (ours / "metrics.csv").read_text() == (theirs / "metrics.csv").read_text()
        assert json.loads((ours / "summary.json").read_text())["final"] == \
            json.loads((theirs / "summary.json").read_text())["final"]


def test_parallel_jobs_share_the_cores_this_process_may_use_not_the_machines(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from losslab.sweeps.sweep import share_resources

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine, e.g. a cluster node
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)  # this job's share
    cfg = OmegaConf.create({"trainer": {"device": "cpu"}})
    for n_jobs in (2, 3, -1, 100):
        share_resources(cfg, OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher",
                                               "n_jobs": n_jobs}), 0)
    share_resources(cfg, OmegaConf.create({"_target_": "hydra._internal.core_plugins.BasicLauncher"}), 0)
    assert threads == [3, 2, 1, 1]  # 6 cores over 2, 3, 6 and 6 (at most one job per core) jobs; basic: untouched


def test_job_dir_names_are_safe_short_and_in_job_order(tmp_path):
    assert job_dir_name(3, "optimizer.lr=0.1,trainer.l2=0") == "3_optimizer.lr=0.1,trainer.l2=0"
    assert job_dir_name(0, "") == "0"  # a multirun that varies nothing
    assert job_dir_name(2, "dataset.root=/data/x,name='a b'") == "2_dataset.root=_data_x,name=_a_b_"
    long = job_dir_name(7, ",".join(f"model.layer{i}=[{i},{i}]" for i in range(40)))
    assert len(long) == len("7_") + MAX_NAME and long.startswith("7_model.layer0=_0,0_,model.layer1=")
    for name in ("10_seed=1", "9_seed=0", "2", "report.md", ".submitit", "1_x"):
        (tmp_path / name).mkdir()
    assert [d.name for d in job_dirs(tmp_path)] == ["1_x", "2", "9_seed=0", "10_seed=1"]
    assert job_dir(tmp_path, 10).name == "10_seed=1"
