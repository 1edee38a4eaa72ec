"""No result is ever lost: divergence, interruption and resume, crash-safe files, concurrent runs,
determinism."""

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers.commands import summary
from helpers.tb_events import read_events

from losslab.commands.cli import compose
from losslab.errors import UserError
from losslab.fileio import write_json
from losslab.records.job_dirs import job_dir
from losslab.training.checkpoint import save_checkpoint
from losslab.training.loop import fit
from losslab.training.run_logger import append_csv_row


def test_divergence_is_a_result_and_the_sweep_goes_on(tmp_path, losslab):
    sweep = tmp_path / "sweep"
    proc = losslab.start("-m", "optimizer.lr=0.1,1e6,0.05", "trainer.epochs=1", "dataset.train_size=5000",
                         "trainer.progress=log", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    statuses = [summary(job_dir(sweep, i))["status"] for i in range(3)]
    assert statuses == ["completed", "diverged", "completed"]
    diverged = summary(job_dir(sweep, 1))
    assert diverged["diverged_at_step"] >= 1 and diverged["final"] == {}  # no finite evaluation before it
    text = read_events(job_dir(sweep, 1)).Tensors("status/text_summary")
    assert b"diverged" in text[0].tensor_proto.string_val[0]


def test_non_finite_loss_mid_run_keeps_the_last_finite_evaluation(tmp_path):
    # a finite run first, then an lr that overflows: trainer.divergence_threshold=null counts only non-finite
    cfg = compose(["dataset=synthetic", "trainer.progress=log", "trainer.epochs=3", "trainer.l2=1.0",
                   "optimizer.lr=1e4", "trainer.divergence_threshold=null", "trainer.eval_every=0.25"])
    result = fit(cfg, tmp_path)
    assert result["status"] == "diverged"
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    if rows:  # every logged evaluation is finite, and `final` is the last of them
        assert "nan" not in "".join(rows) and result["final"]["step"] == int(rows[-1].split(",")[0])


def _write_forever(folder: str, payload: torch.Tensor) -> None:
    path, step = Path(folder), 0
    while True:
        save_checkpoint(path / "checkpoints" / "last.pt", model={"w": payload}, step=step)
        write_json(path / "summary.json", {"status": "running", "step": step, "padding": "x" * 200_000})
        append_csv_row(path / "metrics.csv", [step, 0.5, "y" * 2000])
        step += 1


def test_crash_injection_leaves_every_file_complete_or_absent(tmp_path, forks):
    payload = torch.randn(1000, 1000)  # a 4 MB checkpoint: a kill lands inside a write most of the time
    for attempt in range(25):
        folder = tmp_path / str(attempt)
        writer = forks.Process(target=_write_forever, args=(str(folder), payload))
        writer.start()
        time.sleep(random.uniform(0.0, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        if (folder / "checkpoints" / "last.pt").exists():
            state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
            assert torch.equal(state["model"]["w"], payload)
        if (folder / "summary.json").exists():
            assert json.loads((folder / "summary.json").read_text())["status"] == "running"
        if (folder / "metrics.csv").exists():
            for line in (folder / "metrics.csv").read_text().splitlines(keepends=True):
                assert line.endswith("\n") and len(line.split(",")) == 3


def test_eight_runs_started_at_once_get_eight_run_dirs(tmp_path, losslab):
    procs = [losslab.start("dataset=synthetic", "trainer=debug", "trainer.progress=log", cwd=tmp_path)
             for _ in range(8)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 8
    assert all(summary(d)["status"] == "completed" for d in run_dirs)


def test_same_seed_deterministic_runs_write_identical_metrics(tmp_path, trains):
    overrides = ["dataset=synthetic", "model=fnn", "model.dropout=0.3", "dataset.hflip=true", "dataset.crop_padding=2",
                 "trainer.epochs=3", "trainer.eval_every=0.5", "trainer.deterministic=true", "trainer.progress=log"]
    for name in ("a", "b"):
        trains(compose(overrides), tmp_path / name)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()
    other = compose([*overrides, "seed=1"])
    trains(other, tmp_path / "c")
    assert (tmp_path / "c" / "metrics.csv").read_bytes() != (tmp_path / "a" / "metrics.csv").read_bytes()


def test_resume_needs_a_readable_checkpoint_and_without_one_starts_again(tmp_path):
    cfg = compose(["dataset=synthetic", "trainer.progress=log", "trainer.epochs=1", "trainer.figures=false"])
    fresh = fit(cfg, tmp_path / "fresh")
    restarted = fit(cfg, tmp_path / "killed_early", resume=True)  # killed before its first last.pt
    assert restarted["final"] == fresh["final"]
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    whole = (tmp_path / "fresh" / "checkpoints" / "last.pt").read_bytes()
    for damaged in (b"not a checkpoint", whole[: len(whole) // 2]):  # a stray file; one cut short by a full disk
        (broken / "checkpoints" / "last.pt").write_bytes(damaged)
        with pytest.raises(UserError, match="cannot be read: it is damaged or cut short") as refused:
            fit(cfg, broken, resume=True)
        assert "weights_only" not in str(refused.value) and "start the run afresh" in str(refused.value)
