"""A place the user cannot write is a user error: one sentence naming it and the OS's reason, exit status 2, no
traceback and nothing half-written, for a run, a sweep, losslab-report and losslab-eval."""


from helpers.fixtures import unwritable_dir

FAST = ["dataset=synthetic", "trainer.progress=log", "trainer.figures=false", "trainer.max_steps=3"]


def refused(done, prog: str = "losslab-train") -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: cannot write "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


def test_a_run_and_a_sweep_into_a_read_only_dir(tmp_path, losslab):
    with unwritable_dir(tmp_path / "shared") as shared:
        line = refused(losslab.train(*FAST, f"hydra.run.dir={shared / 'run'}", cwd=tmp_path))
        assert f"{shared / 'run'} (" in line and "hydra.run.dir=" in line
        line = refused(losslab.train("-m", *FAST, "seed=0,1", f"hydra.sweep.dir={shared / 'sweep'}", cwd=tmp_path))
        assert str(shared / "sweep") in line and "hydra.sweep.dir=" in line
        assert list(shared.iterdir()) == []


def test_report_and_eval_of_a_read_only_sweep(tmp_path, losslab):
    sweep_dir = tmp_path / "sweep"
    done = losslab.train("-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir / "report.md").unlink()
    run_dir = next(sweep_dir.glob("0_*"))
    before = sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*"))
    with unwritable_dir(sweep_dir):
        line = refused(losslab.run("losslab-report", str(sweep_dir), cwd=tmp_path), "losslab-report")
        assert str(sweep_dir) in line and "copy the sweep dir" in line
        line = refused(losslab.run("losslab-eval", str(run_dir), cwd=tmp_path), "losslab-eval")
        assert str(run_dir / "eval") in line and "copy the run dir" in line
    assert sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*")) == before
