"""What a sweep's end says about jobs that a Slurm task left without a result: their cause, the tally, the command
that continues them, and a run dir that cannot be written. Files only; the cluster's own tests are test_slurm.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from losslab.records.summary import read_summary, record_slurm_end
from losslab.records.sweep_state import causes, continue_command, more_memory, tally, tally_text
from losslab.sweeps.slurm import cause_of

OVERRIDES = ["seed=0"]


def sweep_with_memory(sweep_dir: Path, mem_gb: int | None) -> Path:
    sweep_dir.mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": {
        "overrides": {"hydra": ["hydra/launcher=slurm", *([f"hydra.launcher.mem_gb={mem_gb}"] if mem_gb else [])],
                      "task": ["seed=0,1"]},
        "launcher": {"mem_gb": mem_gb}}}), sweep_dir / "multirun.yaml")
    return sweep_dir


def finished(run_dir: Path) -> None:
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "overrides": OVERRIDES}))


def test_a_job_killed_for_memory_is_tallied_so_and_continued_with_twice_the_memory(tmp_path):
    sweep_dir = sweep_with_memory(tmp_path / "sweep", mem_gb=3)
    finished(sweep_dir / "0_seed=0")
    assert record_slurm_end(sweep_dir / "1_seed=1", ["seed=1"], "7_1", "FAILED", None, "out_of_memory") is None
    summary = read_summary(sweep_dir / "1_seed=1")
    assert summary["status"] == "interrupted" and summary["cause"] == "out_of_memory"
    assert summary["run_dir"] == str((sweep_dir / "1_seed=1").absolute())
    assert summary["ended"] == "Slurm task 7_1 ended FAILED (out of memory) before the run finished"
    assert tally_text(tally(sweep_dir), causes(sweep_dir)) == "1 completed, 1 interrupted (1 out of memory)"
    assert more_memory(sweep_dir) == "hydra.launcher.mem_gb=6"
    assert shlex.split(continue_command(sweep_dir)) == [
        "losslab-train", "-m", "hydra/launcher=slurm", "seed=0,1", "hydra.launcher.mem_gb=6",
        f"hydra.sweep.dir={sweep_dir.absolute()}"]


def test_without_a_memory_kill_or_a_mem_gb_the_continue_command_keeps_the_memory(tmp_path):
    sweep_dir = sweep_with_memory(tmp_path / "sweep", mem_gb=None)
    record_slurm_end(sweep_dir / "0_seed=0", OVERRIDES, "7_0", "FAILED", None, "out_of_memory")
    assert more_memory(sweep_dir) is None  # the partition's default: how much that was is unknown
    other = sweep_with_memory(tmp_path / "other", mem_gb=2)
    record_slurm_end(other / "0_seed=0", OVERRIDES, "8_0", "CANCELLED by 0", None, "cancelled")
    assert more_memory(other) is None and "mem_gb=2" in continue_command(other)
    assert tally_text(tally(other), causes(other)) == "1 interrupted (1 cancelled)"


def test_a_run_dir_that_cannot_be_written_is_one_sentence_and_not_an_error(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    sentence = record_slurm_end(blocked / "0_seed=0", OVERRIDES, "7_0", "FAILED", "OSError: disk full", None)
    assert sentence == (f"Slurm task 7_0 ended FAILED before the run finished: OSError: disk full, and its end "
                        f"cannot be recorded in {blocked / '0_seed=0'} (Not a directory)")


def task(tmp_path: Path, stderr: str | None, started: bool) -> SimpleNamespace:
    paths = SimpleNamespace(stderr=tmp_path / "log.err", stdout=tmp_path / "log.out")
    if stderr is not None:
        paths.stderr.write_text(stderr)
    if started:
        paths.stdout.write_text("")
    return SimpleNamespace(paths=paths)


def test_the_cause_of_an_end_comes_from_slurms_state_and_the_tasks_stderr(tmp_path):
    killed = "slurmstepd-node7: error: StepId=149.batch exceeded memory limit (323836928 > 104857600), being killed\n"
    assert cause_of(task(tmp_path, killed, started=True), "FAILED") == "out_of_memory"
    assert cause_of(task(tmp_path, "RuntimeError: CUDA out of memory\n", started=True), "FAILED") is None
    assert cause_of(task(tmp_path, "", started=True), "OUT_OF_MEMORY") == "out_of_memory"
    assert cause_of(task(tmp_path, "", started=True), "CANCELLED by 0") == "cancelled"
    assert cause_of(task(tmp_path / "never", None, started=False), "CANCELLED by 0") == "cancelled_before_start"
    assert cause_of(task(tmp_path, "", started=True), "NODE_FAIL") == "node_failure"
