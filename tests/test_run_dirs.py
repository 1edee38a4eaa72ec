"""A run dir holds one run: never overwritten, resumed only as it was configured, one process at a time; a
sweep dir holds one sweep; every summary says where its result comes from."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from helpers.commands import REPO

from losslab.records.job_dirs import job_dirs
from losslab.records.lock import exclusive

FAST = ["dataset=synthetic", "trainer.progress=log", "trainer.figures=false"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losslab-train: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, losslab) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = losslab.train(*FAST, "model=fnn", "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_a_finished_run_is_never_overwritten(tmp_path, finished_run, losslab):
    before = files(finished_run)
    line = one_error_line(losslab.train(f"hydra.run.dir={finished_run}", "model=linear", "trainer.epochs=1",
                                        cwd=tmp_path))
    assert "already holds a run (status completed)" in line and "trainer.resume=" in line and "fresh" in line
    assert files(finished_run) == before


def test_resuming_a_finished_run_changes_nothing(tmp_path, finished_run, losslab):
    before = files(finished_run)
    line = one_error_line(losslab.train(f"trainer.resume={finished_run}", cwd=tmp_path))
    assert "has finished (status completed)" in line and "nothing to resume" in line
    assert files(finished_run) == before


def test_resume_names_only_run_dirs_and_creates_nothing(tmp_path, losslab):
    missing = tmp_path / "outputs" / "nonexistent"
    line = one_error_line(losslab.train(f"trainer.resume={missing}", cwd=tmp_path))
    assert "is not a losslab run dir" in line and not missing.exists()
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    one_error_line(losslab.train(f"trainer.resume={not_a_run}", cwd=tmp_path))
    assert list(not_a_run.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_resume_applies_a_longer_run_and_refuses_other_changes(tmp_path, losslab):
    run = [*FAST, "trainer.deterministic=true", "scheduler=step", "scheduler.step_size=1", "trainer.eval_every=0.5"]
    stopped, longer = tmp_path / "stopped", tmp_path / "longer"
    done = losslab.train(*run, "trainer.epochs=2", f"hydra.run.dir={stopped}", cwd=tmp_path, stop_at="SIGTERM step 20")
    assert done.returncode == 143, done.stderr[-3000:]

    line = one_error_line(losslab.train(f"trainer.resume={stopped}", "optimizer.lr=0.5", cwd=tmp_path))
    assert "(optimizer.lr was 0.1, now 0.5)" in line and "only trainer.epochs" in line

    # the user's own command with trainer.resume= added (up-arrow and append): its values are the run's own
    same = losslab.train(*run, "trainer.epochs=2", f"hydra.run.dir={stopped}", f"trainer.resume={stopped}",
                         "model=linear", cwd=tmp_path, stop_at="SIGTERM step 25")
    assert same.returncode == 143, same.stderr[-3000:]
    line = one_error_line(losslab.train(*run, "trainer.epochs=2", "scheduler.step_size=2",
                                        f"trainer.resume={stopped}", cwd=tmp_path))
    assert "(scheduler.step_size was 1, now 2)" in line

    # inside the run dir, `trainer.resume=true` with hydra.run.dir naming it; no log file left in the cwd
    resumed = losslab.train(f"hydra.run.dir={stopped}", "trainer.resume=true", "trainer.epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(tmp_path.glob("*.log"))
    done = losslab.train(*run, "trainer.epochs=3", f"hydra.run.dir={longer}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (stopped / "metrics.csv").read_bytes() == (longer / "metrics.csv").read_bytes()
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "completed" and "trainer.epochs=3" in summary["overrides"]
    assert "epochs: 3" in (stopped / ".hydra" / "config.yaml").read_text()


def test_a_run_dir_being_trained_is_left_to_its_process(tmp_path, finished_run, losslab):
    run_dir = tmp_path / "run"
    done = losslab.train(*FAST, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, stop_at="SIGTERM step 3")
    assert done.returncode == 143
    before = files(run_dir)
    assert ".lock" not in before  # released by the stopped run
    with exclusive(run_dir):  # as a training process holds it
        line = one_error_line(losslab.train(f"trainer.resume={run_dir}", cwd=tmp_path))
        assert f"pid {os.getpid()} on {socket.gethostname()}" in line and "being trained by another process" in line
    assert files(run_dir) == before


def test_a_sweep_dir_holds_one_sweep_named_after_it(tmp_path, losslab):
    grid = ["-m", *FAST, "loss=ce,mbce", "trainer.max_steps=3"]
    done = losslab.train(*grid, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "synthetic-linear-ce+mbce" / "multirun").iterdir()
    assert [d.name for d in job_dirs(sweep_dir)] == ["0_loss=ce", "1_loss=mbce"]
    before = files(sweep_dir)

    other = [*grid[:-1], "trainer.max_steps=4", f"hydra.sweep.dir={sweep_dir}"]
    line = one_error_line(losslab.train(*other, cwd=tmp_path))
    assert "holds a sweep of other overrides" in line and "fresh hydra.sweep.dir" in line
    assert files(sweep_dir) == before
    relaunched = losslab.train(*grid, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert relaunched.returncode == 0 and "2 completed" in relaunched.stdout
    assert files(sweep_dir)["0_loss=ce/metrics.csv"] == before["0_loss=ce/metrics.csv"]


def test_a_summary_says_where_its_result_comes_from(tmp_path, finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["command"].startswith("losslab-train ") and f"hydra.run.dir={finished_run}" in summary["command"]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode:
        pytest.skip("losslab does not run from a git checkout here")
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert summary["git"] == {"commit": commit.stdout.strip(), "dirty": bool(dirty.strip())}


def test_a_refused_command_leaves_no_run_so_the_corrected_one_runs_in_its_dir(tmp_path, losslab):
    run_dir = tmp_path / "D"
    line = one_error_line(losslab.train(*FAST, "optimizer.lr=-1", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    assert "optimizer.lr must be > 0" in line and not run_dir.exists()
    corrected = losslab.train(*FAST, "optimizer.lr=0.1", "trainer.max_steps=3", f"hydra.run.dir={run_dir}",
                              cwd=tmp_path)
    assert corrected.returncode == 0, corrected.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_under_a_group_writable_output_root_what_a_run_creates_is_group_writable(tmp_path, losslab):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outputs.chmod(0o2775)  # a team's shared outputs/: group-writable, new dirs keep its group
    user_umask = os.umask(0o022)  # the usual default, which the command inherits
    try:
        done = losslab.train(*FAST, "trainer.max_steps=3", cwd=tmp_path)
    finally:
        os.umask(user_umask)
    assert done.returncode == 0, done.stderr[-3000:]
    created = [p for p in outputs.rglob("*") if not p.is_symlink()]
    assert any(p.name == "summary.json" for p in created)
    assert all(p.stat().st_mode & 0o020 for p in created), [(str(p), oct(p.stat().st_mode)) for p in created
                                                            if not p.stat().st_mode & 0o020]


def test_a_missing_data_root_and_a_train_size_beyond_the_source_are_refused_and_write_nothing(tmp_path, losslab):
    missing = tmp_path / "nonexistent" / "data"
    line = one_error_line(losslab.train("dataset.root=" + str(missing), f"hydra.run.dir={tmp_path / 'a'}",
                                        cwd=tmp_path))
    assert f"the data root {missing} (dataset.root, or $LOSSLAB_DATA_DIR) does not exist" in line
    assert "git checkout" not in line and not (tmp_path / "nonexistent").exists() and not (tmp_path / "a").exists()
    line = one_error_line(losslab.train("dataset.train_size=100000", f"hydra.run.dir={tmp_path / 'b'}",
                                        cwd=tmp_path))
    assert ("dataset.train_size=100000 is more than the 55000 training images mnist has after the 5000 of "
            "dataset.val_size; make it at most 55000") in line
    assert not (tmp_path / "b").exists()


def test_two_launches_of_one_sweep_share_its_jobs_and_both_end_with_the_true_tally(tmp_path):
    """The second launch starts while the first trains job 0, which holds at its first step until the second says
    it waits for the job: it then takes its result, and each job is trained once, by one of them."""
    from helpers.slurm import finish, launch, wait_until

    sweep_dir, cue = tmp_path / "s", tmp_path / "second_waits"
    args = [*FAST, "trainer.max_steps=10", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    first = launch(args, tmp_path, stop_at=f"until={cue} step 1 job=0")
    wait_until(lambda: (sweep_dir / "0_seed=0" / ".lock").exists(), proc=first)
    second = launch(args, tmp_path)
    said = ""
    while "waiting for it to end" not in said:
        line = second.stdout.readline()
        assert line, said + finish(first)
        said += line
    cue.touch()
    outputs = finish(first), said + finish(second)
    for proc, output in zip((first, second), outputs):
        assert proc.returncode == 0 and f"losslab sweep {sweep_dir}: 2 completed; report: " in output, output
    assert "waiting for it to end" in outputs[1]
    assert [len(list(d.glob("events.out.tfevents.*"))) for d in job_dirs(sweep_dir)] == [1, 1]  # trained once


@pytest.mark.parametrize("grid", [["optimizer.lr=0.1,-1", "seed=0,1"], ["sweep=seeds", "trainer.precision=fp32,fp16"]])
def test_a_bad_value_anywhere_in_a_grid_is_refused_before_any_job_trains_or_anything_is_written(grid, tmp_path,
                                                                                              losslab):
    line = one_error_line(losslab.train("-m", *FAST, *grid, cwd=tmp_path))
    bad = "optimizer.lr=-1" if "seed=0,1" in grid else "trainer.precision=fp16"
    assert f"the sweep's {bad} is refused before any job trains: " in line
    assert list(tmp_path.iterdir()) == []
