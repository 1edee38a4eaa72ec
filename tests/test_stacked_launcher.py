"""`hydra/launcher=stacked` against separate runs of the same jobs (Hydra's basic launcher)."""

import math
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers.commands import metrics_rows, summaries
from helpers.tb_events import read_events

from losslab.commands.cli import compose
from losslab.records.job_dirs import job_dir
from losslab.reporting.run_figures import figure_tag
from losslab.stacking.steppers import group_key

TINY = ["dataset=synthetic", "trainer.progress=log", "trainer.figures=false"]


def both(losslab, tmp_path: Path, *grid: str, stacked_options: tuple[str, ...] = ()):
    """The grid's summaries from the basic and the stacked launcher, and the stacked launcher's output."""
    basic = losslab.sweep(*TINY, *grid, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    stacked = losslab.sweep(*TINY, *grid, "hydra/launcher=stacked", *stacked_options,
                            f"hydra.sweep.dir={tmp_path / 'stacked'}", cwd=tmp_path)
    assert basic.returncode == 0, basic.output
    assert stacked.returncode == 0, stacked.output
    return summaries(tmp_path / "basic"), summaries(tmp_path / "stacked"), stacked.output


def assert_same_runs(tmp_path: Path, separate: dict, stacked: dict, tol: float = 1e-5, argmax_tol: float = 0.0):
    """Same statuses, steps, final metrics and metrics.csv rows (to `tol`, absolute or relative; accuracy and ECE to
    `argmax_tol`: float noise may flip an argmax, which moves acc and ece), and the same files."""

    def close(key: str, value: float):
        return pytest.approx(value, rel=tol, abs=max(tol, argmax_tol) if key.endswith(("/acc", "/ece")) else tol)

    assert sorted(separate) == sorted(stacked)
    for job, alone in separate.items():
        together = stacked[job]
        assert (together["status"], together["steps"], together["overrides"]) == \
               (alone["status"], alone["steps"], alone["overrides"])
        assert together["final"].keys() == alone["final"].keys()
        for key, value in alone["final"].items():
            assert together["final"][key] == close(key, value), (job, key)
        alone_dir, together_dir = job_dir(tmp_path / "basic", job), job_dir(tmp_path / "stacked", job)
        assert alone_dir.name == together_dir.name
        rows_alone, rows_together = metrics_rows(alone_dir), metrics_rows(together_dir)
        assert len(rows_alone) == len(rows_together)
        for a, b in zip(rows_alone, rows_together):
            for key in a:
                if a[key] == "":
                    assert b[key] == ""
                else:
                    assert float(b[key]) == close(key, float(a[key])), (job, key)
        files = [{p.relative_to(run).as_posix() for p in run.rglob("*") if "events" not in p.name}
                 for run in (alone_dir, together_dir)]
        assert files[0] == files[1]
        assert len(list(together_dir.glob("events.out.tfevents.*"))) == 1


def test_stacked_jobs_draw_the_figures_of_separate_runs(tmp_path, losslab):
    """With figures on, the sweep's end draws each member's figures from its run dir: the same PNGs and
    TensorBoard images as separate runs."""
    grid = ["dataset=synthetic", "trainer.progress=log", "trainer.epochs=1", "optimizer.lr=0.3,0.03",
            "trainer.figures=true"]
    for launcher in ("basic", "stacked"):
        proc = losslab.sweep(*grid, f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / launcher}",
                             cwd=tmp_path)
        assert proc.returncode == 0, proc.output
    for job in (0, 1):
        runs = [job_dir(tmp_path / launcher, job) for launcher in ("basic", "stacked")]
        figures = [sorted(p.name for p in (run / "figures").iterdir()) for run in runs]
        assert len(figures[0]) == 4 and figures[0] == figures[1]
        tags = [sorted(read_events(run).Tags()["images"]) for run in runs]
        assert tags[0] == tags[1] == sorted(figure_tag(name.removesuffix(".png")) for name in figures[0])


def test_group_key_ignores_only_the_numbers_a_stack_holds():
    base = ["dataset=synthetic"]
    key = group_key(compose(base))
    for numbers in (["optimizer.lr=0.3"], ["seed=7"], ["trainer.l2=0.1"], ["optimizer.momentum=0.9"],
                    ["loss.label_smoothing=0.1"]):
        assert group_key(compose(base + numbers)) == key
    for other in (["model=fnn"], ["loss=mbce"], ["trainer.batch_size=64"], ["optimizer=adam"], ["trainer.epochs=2"]):
        assert group_key(compose(base + other)) != key


def test_sgd_grid_with_seeds_equals_separate_runs(tmp_path, losslab):
    separate, stacked, output = both(losslab, tmp_path, "trainer.epochs=2", "optimizer.momentum=0.9",
                                     "optimizer.lr=0.3,0.03", "trainer.l2=0,0.01", "seed=0,1")
    assert "8 jobs stacked" in output
    assert len(stacked) == 8 and all(s["stacked"]["members"] == 8 for s in stacked.values())
    # the stack holds its members by seed (the jobs alternate seeds), so each seed's four share their batches
    members = next(iter(stacked.values()))["stacked"]["jobs"]
    assert [re.search(r"seed=(\d)", name)[1] for name in members] == ["0"] * 4 + ["1"] * 4
    assert_same_runs(tmp_path, separate, stacked)


def test_label_smoothing_per_member_equals_separate_runs(tmp_path, losslab):
    separate, stacked, output = both(losslab, tmp_path, "trainer.epochs=1", "loss.label_smoothing=0,0.1,0.3")
    assert "3 jobs stacked" in output
    assert_same_runs(tmp_path, separate, stacked)
    assert len({s["final"]["val/loss"] for s in stacked.values()}) == 3


@pytest.mark.parametrize("loss, numbers", [
    ("focal", ["loss.gamma=0,0.5,2"]),
    ("gce", ["loss.q=0.1,0.7,1"]),
    ("sce", ["loss.alpha=0.1,1", "loss.beta=1,0.5", "loss.log_zero=-4,-6"]),
    ("mae", ["seed=0,1,2"]),
    ("confidence_penalty", ["loss.beta=0,0.1,0.5"]),
])
def test_loss_numbers_per_member_equal_separate_runs(tmp_path, losslab, loss, numbers):
    separate, stacked, output = both(losslab, tmp_path, "trainer.epochs=1", f"loss={loss}", *numbers)
    jobs = len(separate)
    assert f"{jobs} jobs stacked" in output
    assert_same_runs(tmp_path, separate, stacked)
    assert len({s["final"]["val/loss"] for s in stacked.values()}) == jobs


def test_lenet_adamw_with_step_schedule_and_early_stopping_equals_separate_runs(tmp_path, losslab):
    # per-member early stopping (different patience) and a step schedule: members stop at different steps
    separate, stacked, output = both(losslab, tmp_path, "model=lenet", "optimizer=adamw", "scheduler=step",
                                     "trainer.epochs=3", "trainer.eval_every=0.5", "dataset.train_n=768",
                                     "dataset.noise=90", "optimizer.lr=0.03,0.001", "optimizer.weight_decay=0.1",
                                     "trainer.patience=1,3", "trainer.deterministic=true", "trainer.device=cpu",
                                     stacked_options=("hydra.launcher.conv_on_cpu=true",))
    assert "4 jobs stacked" in output
    assert {s["status"] for s in stacked.values()} >= {"early_stopped", "completed"}
    assert len({s["steps"] for s in stacked.values()}) > 1
    # lr=0.03 Adam amplifies float noise enough to flip an image or two of the 256 val images (on CUDA, where
    # the grouped convolution is another cuDNN algorithm, to 2e-4 in ‖w‖²: see the CUDA test below)
    assert_same_runs(tmp_path, separate, stacked, tol=1e-4, argmax_tol=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: stacked convolutions on the GPU")
def test_lenet_stacked_on_cuda_equals_separate_runs(tmp_path, losslab):
    separate, stacked, output = both(losslab, tmp_path, "model=lenet", "trainer.device=cuda",
                                     "trainer.deterministic=true", "trainer.epochs=2", "dataset.train_n=1024",
                                     "optimizer.momentum=0.9", "optimizer.lr=0.05,0.01", "seed=0,1")
    assert "4 jobs stacked on cuda" in output
    assert_same_runs(tmp_path, separate, stacked, tol=1e-4, argmax_tol=0.01)


def test_a_diverging_member_stops_alone(tmp_path, losslab):
    separate, stacked, _ = both(losslab, tmp_path, "trainer.epochs=1", "trainer.l2=1", "optimizer.lr=0.5,1e6,0.05")
    assert [stacked[i]["status"] for i in range(3)] == ["completed", "diverged", "completed"]
    assert stacked[1]["diverged_at_step"] == separate[1]["diverged_at_step"]
    assert_same_runs(tmp_path, separate, stacked)


def test_jobs_a_stack_cannot_hold_run_one_by_one_and_say_why(tmp_path, losslab):
    proc = losslab.sweep(*TINY, "trainer.epochs=1", "loss=min_ent", "loss.coeffs=learnable", "optimizer.lr=0.1,0.05",
                         "model=fnn,linear", "hydra/launcher=stacked", f"hydra.sweep.dir={tmp_path / 's'}",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert proc.output.count("run one by one: the loss has learnable parameters") == 2  # one line per group
    assert [s["status"] for s in summaries(tmp_path / "s").values()] == ["completed"] * 4
    assert all("stacked" not in s for s in summaries(tmp_path / "s").values())


def test_conv_models_run_one_by_one_on_the_cpu_unless_asked(tmp_path, losslab):
    proc = losslab.sweep(*TINY, "trainer.device=cpu", "trainer.max_steps=2", "model=lenet", "optimizer.lr=0.1,0.05",
                         "hydra/launcher=stacked", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert "run one by one: stacked convolutions run no faster than separate ones on the CPU" in proc.output
    assert [s["status"] for s in summaries(tmp_path / "s").values()] == ["completed"] * 2
    assert all("stacked" not in s for s in summaries(tmp_path / "s").values())


def test_a_failing_group_records_each_job_failure(tmp_path, losslab):
    proc = losslab.sweep(*TINY, "trainer.epochs=1", "loss=bce", "optimizer.lr=0.1,0.05", "hydra/launcher=stacked",
                         f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 1
    runs = summaries(tmp_path / "s")
    assert [r["status"] for r in runs.values()] == ["failed", "failed"]
    assert all("needs a binary task" in r["error"] for r in runs.values())


def test_a_stack_sigtermed_mid_epoch_relaunches_as_a_stack_to_the_uninterrupted_files(tmp_path, losslab):
    grid = [*TINY, "trainer.epochs=4", "dataset.train_n=4096", "optimizer.momentum=0.9", "optimizer.lr=0.3,0.03",
            "seed=0,1", "hydra/launcher=stacked"]
    reference = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.output

    stopped = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, wait=False)
    deadline = time.time() + 300
    first = tmp_path / "s" / "0_optimizer.lr=0.3,seed=0"
    while not (first / "checkpoints" / "last.pt").exists():  # the first epoch is done
        assert stopped.poll() is None and time.time() < deadline
        time.sleep(0.02)
    stopped.send_signal(signal.SIGTERM)
    output = stopped.communicate(timeout=300)[0]
    assert stopped.returncode == 128 + signal.SIGTERM, output
    interrupted = summaries(tmp_path / "s")
    assert [r["status"] for r in interrupted.values()] == ["interrupted"] * 4
    state = torch.load(first / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9 and state["optimizer"]["state"]

    relaunch = losslab.sweep(*grid, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.output
    assert "4 completed" in relaunch.output
    assert re.search(r"4 jobs stacked on \w+: .*, resuming at step \d+", relaunch.output), relaunch.output
    resumed, expected = summaries(tmp_path / "s"), summaries(tmp_path / "reference")
    for job in expected:
        assert resumed[job]["final"] == expected[job]["final"]
        name = job_dir(tmp_path / "s", job).name
        assert (tmp_path / "s" / name / "metrics.csv").read_bytes() == \
            (tmp_path / "reference" / name / "metrics.csv").read_bytes()


def test_relaunching_a_finished_stacked_sweep_skips_every_job(tmp_path, losslab):
    args = [*TINY, "trainer.epochs=1", "optimizer.lr=0.3,0.03", "hydra/launcher=stacked",
            f"hydra.sweep.dir={tmp_path / 's'}"]
    assert losslab.sweep(*args, cwd=tmp_path).returncode == 0
    again = losslab.sweep(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.output.count(": skipped") == 2, again.output
    assert all(math.isfinite(r["final"]["test/loss"]) for r in summaries(tmp_path / "s").values())


def test_per_member_clipping_is_clip_grad_norm_of_each_member():
    from losslab.stacking.steppers import FlatLayout, clip_per_member

    torch.manual_seed(0)
    grads = {"w": torch.randn(3, 4, 5), "b": torch.randn(3, 4)}
    layout = FlatLayout(grads)
    max_norm = torch.tensor([0.5, math.inf, 100.0])
    clipped = layout.views(clip_per_member(layout.flatten(grads).detach(), max_norm))
    for k in range(3):
        w, b = torch.nn.Parameter(torch.zeros(4, 5)), torch.nn.Parameter(torch.zeros(4))
        w.grad, b.grad = grads["w"][k].clone(), grads["b"][k].clone()
        torch.nn.utils.clip_grad_norm_([w, b], max_norm[k].item())
        assert torch.allclose(clipped["w"][k], w.grad) and torch.allclose(clipped["b"][k], b.grad)
    assert not torch.allclose(clipped["w"][0], grads["w"][0])  # member 0 was clipped


SWEEP_JOBS = [  # the overrides of a sweep's jobs, in the order a sweeper validates them
    ["optimizer=adam", "optimizer.lr=0.3", "optimizer.betas=[0.9,0.999]", "trainer.l2=0"],
    ["optimizer=adam", "optimizer.lr=0.1", "optimizer.betas=[0.8,0.99]", "trainer.l2=0.01"],
    ["optimizer=adam", "optimizer.lr=${trainer.l2}", "optimizer.betas=[0.8,0.99]", "trainer.l2=0.001"],
    ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9", "trainer.l2=0"],  # another group: composed
    ["optimizer=sgd", "optimizer.lr=0.1", "+optimizer.extra=1", "trainer.l2=0"],  # an added key: composed
]


def test_the_launcher_takes_the_sweepers_composition_of_each_job_and_derives_value_overrides_as_hydra_composes():
    """Each job's composition through the launcher's layer equals Hydra's own, while Hydra composes only the jobs
    whose overrides change a config group or add a key; the launcher takes what the sweeper composed."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.losslab_launcher.stacked_launcher import remember_compositions
    from losslab.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["hydra/launcher=stacked"], RunMode.MULTIRUN)
        expected = [OmegaConf.to_yaml(loader.load_sweep_config(master, job)) for job in SWEEP_JOBS]
        hydra_composes = loader.load_sweep_config
        calls = []
        loader.load_sweep_config = lambda master_config, overrides: calls.append(overrides) or hydra_composes(
            master_config, overrides)
        composed = remember_compositions(loader)
        assert remember_compositions(loader) is composed  # set up twice (a second multirun): still one layer
        validated = [loader.load_sweep_config(master, SWEEP_JOBS[0])]
        OmegaConf.set_readonly(validated[0].hydra, True)  # as running the job leaves it (HydraConfig.set_config)
        validated += [loader.load_sweep_config(master, job) for job in SWEEP_JOBS[1:]]
        OmegaConf.set_readonly(validated[0].hydra, False)
        wrong = ["optimizer=adam", "optimizer.lr=0.3", "optimizer.betas=[0.9,0.999]", "trainer.l2=abc"]
        with pytest.raises(ConfigCompositionException, match="Error merging override trainer.l2=abc"):
            loader.load_sweep_config(master, wrong)  # derived, and refused as Hydra refuses it
    assert calls == [SWEEP_JOBS[0], SWEEP_JOBS[3], SWEEP_JOBS[4]]
    assert [OmegaConf.to_yaml(config) for config in validated] == expected
    assert validated[2].optimizer.lr == 0.001 and validated[1].optimizer.betas == [0.8, 0.99]
    assert composed.validated.pop((id(master), tuple(SWEEP_JOBS[1]))) is validated[1]
    assert composed.validated.pop((id(master), ("seed=2",)), None) is None  # never validated: the launcher composes it


def test_a_jobs_set_up_writes_and_returns_what_hydras_run_job_does_with_describe_job(tmp_path):
    """`StackedLauncher.set_up` (the set-up pass, on a job derived from an earlier job's composition) against
    Hydra's composition of the job run by Hydra's run_job with describe_job as the task function: the same .hydra/
    bytes and log file, the same JobReturn (overrides, config, hydra config, working dir, task name, status) and
    losslab Job, HydraConfig as it was."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import OmegaConf, open_dict

    from hydra_plugins.losslab_launcher.stacked_launcher import StackedLauncher, describe_job
    from losslab.config import CONF_DIR, register

    register()
    overrides = ["optimizer.lr=0.3", "seed=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        masters = {way: loader.load_configuration("train", ["hydra/launcher=stacked", *TINY,
                                                            f"hydra.sweep.dir={tmp_path / way}"], RunMode.MULTIRUN)
                   for way in ("run_job", "set_up")}
        contexts = {way: HydraContext(config_loader=loader, callbacks=Callbacks(master))
                    for way, master in masters.items()}
        composed = loader.load_sweep_config(masters["run_job"], overrides)
        launcher = StackedLauncher()
        launcher.setup(hydra_context=contexts["set_up"], task_function=describe_job, config=masters["set_up"])
        returns, dirs = {}, {}
        for way in ("run_job", "set_up"):
            before = HydraConfig.instance().cfg
            if way == "run_job":
                with open_dict(composed):
                    composed.hydra.job.num, composed.hydra.job.id = 3, 3
                returns[way] = run_job(task_function=describe_job, config=composed, job_dir_key="hydra.sweep.dir",
                                       job_subdir_key="hydra.sweep.subdir", hydra_context=contexts[way])
            else:
                launcher.set_up(2, ["optimizer.lr=0.1", "seed=1"])  # composed by Hydra; the next job derived
                returns[way] = launcher.set_up(3, overrides).ret
                assert len(launcher.compositions.templates) == 1  # Hydra composed job 2 only
            assert HydraConfig.instance().cfg is before
            [dirs[way]] = [d for d in (tmp_path / way).iterdir() if d.name.startswith("3_")]
    ran, set_up = returns["run_job"], returns["set_up"]
    ran_name = ran.task_name  # the job's log file is named after it (hydra.job.name)
    assert dirs["run_job"].name == dirs["set_up"].name
    files = [sorted(p.relative_to(dirs[way]).as_posix() for p in dirs[way].rglob("*")) for way in returns]
    assert files[0] == files[1] == [".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                                    f"{ran_name}.log"]
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"):
        texts = [(dirs[way] / name).read_text().replace(str(tmp_path / way), "<sweep dir>") for way in returns]
        assert texts[0] == texts[1], name
    assert "lr: 0.3" in (dirs["set_up"] / ".hydra/config.yaml").read_text()
    assert str(dirs["set_up"]) in (dirs["set_up"] / ".hydra/hydra.yaml").read_text()  # the output dir it set
    assert set_up.status == ran.status == JobStatus.COMPLETED
    assert (set_up.overrides, set_up.task_name, set_up.working_dir) == \
           (ran.overrides, ran.task_name, ran.working_dir)
    assert OmegaConf.to_yaml(set_up.cfg) == OmegaConf.to_yaml(ran.cfg)
    assert OmegaConf.is_struct(set_up.cfg) and OmegaConf.is_struct(ran.cfg)
    assert OmegaConf.to_yaml(set_up.hydra_cfg).replace(str(tmp_path / "set_up"), "") == \
           OmegaConf.to_yaml(ran.hydra_cfg).replace(str(tmp_path / "run_job"), "")
    jobs = [ret.return_value for ret in (ran, set_up)]
    assert [job.run_dir for job in jobs] == [dirs["run_job"], dirs["set_up"]]
    assert jobs[0].hparams == jobs[1].hparams and jobs[0].overrides == jobs[1].overrides
    assert OmegaConf.to_yaml(jobs[0].cfg) == OmegaConf.to_yaml(jobs[1].cfg)


def test_hydras_basic_sweeper_validates_each_job_through_the_launchers_compositions():
    """What the one reliance on Hydra's inner workings (losslab.sweeps.hydra_adapter) needs of Hydra: its basic
    sweeper, set up with the stacked launcher, composes each job of a batch through the launcher's layer on the
    config loader, so the launcher takes those compositions (each as Hydra composes it) instead of composing again."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.losslab_launcher.stacked_launcher import describe_job
    from losslab.config import CONF_DIR, register

    register()
    batch = [["optimizer.lr=0.3", "seed=0"], ["optimizer.lr=0.1", "seed=1"], ["optimizer.lr=0.1", "seed=2"]]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["hydra/launcher=stacked"], RunMode.MULTIRUN)
        expected = [OmegaConf.to_yaml(loader.load_sweep_config(master, job)) for job in batch]
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(master)  # as Hydra sets it before it instantiates the sweeper
        try:
            sweeper = Plugins.instance().instantiate_sweeper(
                config=master, hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)),
                task_function=describe_job)
        finally:
            HydraConfig.instance().cfg = previous
        assert type(sweeper).__name__ == "BasicSweeper" and type(sweeper.launcher).__name__ == "StackedLauncher"
        sweeper.validate_batch_is_legal(batch)
        compositions = sweeper.launcher.compositions
        assert sorted(compositions.validated) == sorted((id(master), tuple(job)) for job in batch)
        assert len(compositions.templates) == 1  # Hydra composed the first job; the others were derived from it
        taken = [compositions.take(master, job) for job in batch]
    assert [OmegaConf.to_yaml(config) for config in taken] == expected
    assert not compositions.validated


def test_where_the_loader_takes_no_layer_the_launcher_composes_every_job_as_hydra_does():
    """The adapter's fallback: a config loader whose attributes cannot be set gets no layer, the sweeper's
    compositions are not kept, and the launcher composes each job itself, as Hydra composes it (with
    hydra.job.config.override_dirname's separators and excluded keys)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from losslab.config import CONF_DIR, register
    from losslab.sweeps.hydra_adapter import remember_compositions

    class Sealed:
        """A config loader whose attributes cannot be set."""

        def __init__(self, loader):
            object.__setattr__(self, "loader", loader)

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def __setattr__(self, name, value):
            raise AttributeError(f"cannot set {name}")

    register()
    dirname = ["hydra.job.config.override_dirname.kv_sep=-", "hydra.job.config.override_dirname.item_sep=_",
               "hydra.job.config.override_dirname.exclude_keys=[trainer.l2]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["hydra/launcher=stacked", *dirname], RunMode.MULTIRUN)
        expected = [OmegaConf.to_yaml(loader.load_sweep_config(master, job)) for job in SWEEP_JOBS]
        sealed = Sealed(loader)
        compositions = remember_compositions(sealed)
        for job in SWEEP_JOBS:
            sealed.load_sweep_config(master, job)  # what a sweeper's validation calls: Hydra's own, not kept
        assert not compositions.validated
        taken = [compositions.take(master, job) for job in SWEEP_JOBS]
    assert [OmegaConf.to_yaml(config) for config in taken] == expected
    assert taken[1].hydra.job.override_dirname == "optimizer.betas-[0.8,0.99]_optimizer.lr-0.1_optimizer-adam"
    assert len(compositions.templates) == 3  # the jobs that change a config group or add a key
