"""Figures: the plotting functions on fixed inputs, and draw_run_figures on run dirs built by hand (and, at the
end, after real MNIST runs of `losslab-train`, which draws them after training)."""

import csv
import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from helpers.tb_events import compare_tag_names, read_events, time_series_groups
from omegaconf import OmegaConf

from losslab.commands.cli import compose
from losslab.evaluation.metrics import ECE_BINS, SplitMetrics
from losslab.models import DualLinear, Linear
from losslab.reporting import drawing
from losslab.reporting.drawing import confidence_figure, curves_figure, reliability_figure, templates_figure
from losslab.reporting.run_figures import (
    FIGURE_TAG_PREFIX,
    MIN_RUNS_FOR_POOL,
    draw_run_figures,
    figure_tag,
    image_shape,
    read_run_plots,
    run_templates,
    runs_figures_drawn,
)
from losslab.sweeps.sweep import missing_figures_drawn
from losslab.training.run_logger import COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KINDS = ("weight_templates", "confidence_histogram_test", "reliability_test", "curves")
STEPS = 40


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk of a PNG file."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def predictions(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident predictions: confidence near 0.9, right 70 % of the time."""
    rng = np.random.default_rng(seed)
    confidence = np.clip(rng.normal(0.85, 0.1, n), 0.1, 1.0).astype(np.float32)
    return confidence, rng.random(n) < 0.7


def make_run(run_dir, overrides=(), status: str = "completed", model=None, best=None, seed: int = 0) -> dict:
    """A finished run's files as the training loop leaves them: config, summary.json, metrics.csv (two
    evaluations and the final row), predictions_test.npz and checkpoints/last.pt (and best.pt if given).
    Returns the arrays and weights written."""
    cfg = compose(["dataset=synthetic", "model=linear", "trainer.device=cpu", *overrides])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "steps": STEPS, "final": {}}))
    rows = [{"step": 20, "train/loss": 1.2, "val/loss": 1.1, "train/acc": 0.5, "val/acc": 0.55},
            {"step": 40, "train/loss": 0.8, "val/loss": 0.9, "train/acc": 0.7, "val/acc": 0.65},
            {"step": 40, "train/loss": 0.7, "val/loss": 0.9, "test/loss": 0.95, "train/acc": 0.72}]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    confidence, correct = predictions(seed=seed)
    np.savez(run_dir / "predictions_test.npz", confidence=confidence, correct=correct)
    model = model or Linear((1, 16, 16), 4)
    (run_dir / "checkpoints").mkdir()
    torch.save({"model": model.state_dict(), "loss": {}, "step": STEPS}, run_dir / "checkpoints" / "last.pt")
    if best is not None:
        torch.save({"model": best.state_dict(), "loss": {}, "step": 20}, run_dir / "checkpoints" / "best.pt")
    return {"confidence": confidence, "correct": correct, "model": model}


def independent_ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE over equal-width bins (0, 1/bins], (1/bins, 2/bins], ..., one bin at a time."""
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence > low) & (confidence <= high) if b else confidence <= high
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].astype(np.float64).mean())
    return total / len(confidence)


def test_a_finished_run_gets_its_four_figures_as_pngs_and_tensorboard_images(tmp_path):
    make_run(tmp_path)
    paths = draw_run_figures(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{kind}.png" for kind in KINDS)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in paths)
    images = read_events(tmp_path)
    assert sorted(images.Tags()["images"]) == sorted(figure_tag(kind) for kind in KINDS)
    for kind in KINDS:
        width, height = png_size(tmp_path / "figures" / f"{kind}.png")
        assert 300 <= width <= 2000 and 150 <= height <= 2000, (kind, width, height)
        (event,) = images.Images(figure_tag(kind))
        assert (event.step, event.width, event.height) == (STEPS, width, height)
        assert event.encoded_image_string == (tmp_path / "figures" / f"{kind}.png").read_bytes()


def test_the_reliability_title_holds_the_ece_of_the_runs_predictions(tmp_path):
    arrays = make_run(tmp_path)
    plots = read_run_plots(tmp_path).plots
    drawn = {name: getattr(drawing, function)(*arguments) for name, (function, arguments) in plots.items()}
    title = drawn["reliability_test"].axes[0].get_title()
    ece = float(re.search(r"ECE = ([0-9.]+)", title).group(1))
    expected = independent_ece(arrays["confidence"], arrays["correct"], ECE_BINS)
    assert expected > 0.05  # over-confident on purpose: not a trivially calibrated case
    assert ece == pytest.approx(expected, abs=5e-5)
    labels = [t.get_text() for t in drawn["confidence_histogram_test"].axes[0].texts]
    assert labels[0].startswith(f"correct (n={arrays['correct'].sum()}")


@pytest.mark.parametrize("status", ["diverged", "interrupted", "failed"])
def test_a_run_that_did_not_finish_gets_no_figures(tmp_path, status):
    make_run(tmp_path, status=status)
    assert draw_run_figures(tmp_path) == []
    assert not (tmp_path / "figures").exists() and not list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("status", ["completed", "interrupted"])
def test_a_run_with_figures_off_gets_none_and_no_word_about_its_status(tmp_path, status, caplog):
    make_run(tmp_path, ["trainer.figures=false"], status=status)
    with caplog.at_level(logging.INFO, logger="losslab"):
        assert draw_run_figures(tmp_path) == []
    assert not (tmp_path / "figures").exists() and not list(tmp_path.glob("events.out.tfevents.*"))
    assert "no figures" not in caplog.text


def test_a_run_whose_config_is_unreadable_gets_none_and_a_log_line(tmp_path, caplog):
    make_run(tmp_path)
    (tmp_path / ".hydra" / "config.yaml").write_text("trainer: [figures\n")
    assert draw_run_figures(tmp_path) == []
    assert "no figures, since its config" in caplog.text and "is unreadable" in caplog.text


def test_figures_whose_files_are_missing_are_left_out(tmp_path, caplog):
    caplog.set_level(logging.INFO, "losslab")
    make_run(tmp_path)
    (tmp_path / "predictions_test.npz").unlink()
    (tmp_path / "checkpoints" / "last.pt").write_text("not a checkpoint")
    assert [p.name for p in draw_run_figures(tmp_path)] == ["curves.png"]
    assert "no predictions_test.npz" in caplog.text and "not a readable checkpoint" in caplog.text


def test_templates_are_the_final_weights_of_each_class_as_images(tmp_path):
    last, best = Linear((1, 16, 16), 4), Linear((1, 16, 16), 4)
    make_run(tmp_path / "last", model=last, best=best)
    make_run(tmp_path / "best", ["trainer.patience=3"], model=last, best=best)
    for name, model in (("last", last), ("best", best)):  # best.pt under early stopping, else last.pt
        templates, names = run_templates(tmp_path / name, OmegaConf.load(tmp_path / name / ".hydra" / "config.yaml"))
        assert templates.shape == (4, 1, 16, 16) and names[2] == "class 2"
        np.testing.assert_array_equal(templates[2].ravel(), model.fc.weight[2].detach().numpy())


def test_dual_linear_has_one_template_and_a_conv_net_none(tmp_path):
    dual = DualLinear((1, 16, 16), 1)
    make_run(tmp_path / "dual", ["dataset.num_classes=2", "model=dual_linear", "loss=bce"], model=dual)
    cfg = OmegaConf.load(tmp_path / "dual" / ".hydra" / "config.yaml")
    templates, names = run_templates(tmp_path / "dual", cfg)
    assert templates.shape == (1, 1, 16, 16) and names == ["w1 + G1"]
    np.testing.assert_allclose(templates.ravel(), (dual.w1 + dual.G1).detach().numpy().ravel())
    make_run(tmp_path / "lenet", ["model=lenet"])
    assert sorted(p.name for p in draw_run_figures(tmp_path / "lenet")) == [
        "confidence_histogram_test.png", "curves.png", "reliability_test.png"]


def test_image_shape_from_the_dataset_config():
    assert image_shape(OmegaConf.create({"shape": [3, 8, 8]}), 192) == (3, 8, 8)
    assert image_shape(OmegaConf.create({"name": "mnist"}), 784) == (1, 28, 28)
    assert image_shape(OmegaConf.create({"name": "cifar10"}), 3072) == (3, 32, 32)


def test_the_sweep_end_draws_the_jobs_without_figures_that_asked_for_them(tmp_path):
    """trainer.figures=true: drawn at the sweep's end; unset (the default): only on demand (losslab-report
    --figures, missing_figures_drawn's unset_draws); false: never."""
    settings = {"0_seed=0": ["trainer.figures=true"], "1_seed=1": ["trainer.figures=true"], "2_seed=2": [],
                "3_seed=3": ["trainer.figures=false"], "4_seed=4": ["trainer.figures=true"]}
    for job, overrides in settings.items():
        make_run(tmp_path / job, overrides, status="diverged" if job.startswith("4") else "completed")
    (tmp_path / "1_seed=1" / "figures").mkdir()  # drawn before: a job a relaunch skipped
    with missing_figures_drawn(tmp_path):
        pass
    assert len(list((tmp_path / "0_seed=0" / "figures").iterdir())) == 4
    assert not list((tmp_path / "1_seed=1" / "figures").iterdir())
    assert not any((tmp_path / job / "figures").exists() for job in ("2_seed=2", "3_seed=3", "4_seed=4"))
    with missing_figures_drawn(tmp_path, unset_draws=True):
        pass
    assert len(list((tmp_path / "2_seed=2" / "figures").iterdir())) == 4
    assert not any((tmp_path / job / "figures").exists() for job in ("3_seed=3", "4_seed=4"))


def test_a_sweeps_figures_drawn_by_worker_processes_equal_those_drawn_here(tmp_path, workers):
    jobs = [tmp_path / "pool" / f"{i}_seed={i}" for i in range(MIN_RUNS_FOR_POOL + 1)]
    for i, job in enumerate(jobs):
        make_run(job, status="diverged" if i == 2 else "completed", seed=i)
        shutil.copytree(job, tmp_path / "here" / job.name)
    with runs_figures_drawn(jobs, workers=workers):
        assert not any((job / "figures").exists() for job in jobs)  # drawn meanwhile, written at the end
    for job in jobs:
        here = tmp_path / "here" / job.name
        drawn_here = draw_run_figures(here)
        pngs = sorted(p.name for p in (job / "figures").glob("*.png")) if job.name != "2_seed=2" else []
        assert pngs == sorted(p.name for p in drawn_here) and len(pngs) == (0 if job.name == "2_seed=2" else 4)
        for name in pngs:
            assert (job / "figures" / name).read_bytes() == (here / "figures" / name).read_bytes(), (job, name)
        if pngs:
            images = read_events(job)
            assert sorted(images.Tags()["images"]) == sorted(figure_tag(kind) for kind in KINDS)


def test_templates_share_one_symmetric_colour_scale():
    templates = np.zeros((3, 3, 4, 4))
    templates[1, :, 0, 0] = [-3.0, -3.0, -3.0]  # channel mean -3
    templates[2, 0, 1, 1] = 1.5  # channel mean 0.5
    fig = templates_figure(templates, ["a", "b", "c"])
    (ax,) = [ax for ax in fig.axes if ax.images]  # the tiles of one picture, so one colour scale by construction
    (image,) = ax.images
    assert image.get_clim() == (-3.0, 3.0)
    mosaic = np.ma.filled(image.get_array(), np.nan)
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    tiles = [mosaic[:, round(t.get_position()[0] - 1.5):round(t.get_position()[0] + 2.5)] for t in ax.texts]
    tiles = [tile[~np.isnan(tile).all(axis=1)] for tile in tiles]  # the tile's rows, without the label space
    np.testing.assert_array_equal(np.stack(tiles), templates.mean(axis=1))
    assert np.isnan(mosaic).any()  # the gaps are blank (drawn white), not a colour of the scale
    assert fig.get_suptitle().startswith("Weight templates") and "-3 < white 0 < red +3" in fig.get_suptitle()


def test_reliability_title_holds_the_ece_of_split_metrics():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.full(10, 0.2), size=2000)).float()
    y = torch.from_numpy(np.where(rng.random(2000) < 0.6, probs.argmax(1).numpy(), rng.integers(0, 10, 2000)))
    metrics = SplitMetrics(torch.device("cpu"))
    confidence, prediction = probs.max(1)
    metrics.update(probs.log(), prediction, y, torch.tensor(0.0))
    fig = reliability_figure(confidence.numpy(), (prediction == y).numpy(), "val", ECE_BINS)
    title = fig.axes[0].get_title()
    assert title.startswith("Reliability on val") and "15 bins" in title
    ece = float(re.search(r"ECE = ([0-9.]+)", title).group(1))
    assert ece == pytest.approx(metrics.result()["ece"], abs=5e-5)
    assert ece > 0.01


def test_confidence_histogram_compares_correct_and_wrong():
    confidence = np.array([0.95, 0.9, 0.99, 0.4, 0.5])
    correct = np.array([True, True, True, False, False])
    fig = confidence_figure(confidence, correct, "test")
    ax = fig.axes[0]
    assert ax.get_title() == "Confidence on test: correct vs wrong"
    labels = [text.get_text() for text in ax.texts]
    assert labels[0].startswith("correct (n=3") and labels[1].startswith("wrong (n=2")
    assert [patch.get_data().values.sum() for patch in ax.patches] == pytest.approx([1.0, 1.0])  # each sums to one


def test_curves_plot_the_evaluations_and_leave_out_the_final_row():
    keys = ("step", "train/loss", "val/loss", "train/acc", "val/acc")
    rows = [dict(zip(keys, ("10", "1.0", "0.9", "0.5", "0.6")), **{"test/loss": ""}),  # as metrics.csv reads back
            dict(zip(keys, (20, 0.5, 0.7, 0.8, 0.7))),  # as a row is held in memory
            dict(zip(keys, (20, 0.4, 0.7, 0.9, 0.7)), **{"test/loss": 0.8})]  # the final row
    fig = curves_figure(rows)
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("loss", "accuracy")
    train_loss, val_loss = loss_ax.lines
    assert list(train_loss.get_xdata()) == [10, 20] and list(train_loss.get_ydata()) == [1.0, 0.5]
    assert list(val_loss.get_ydata()) == [0.9, 0.7] and list(acc_ax.lines[1].get_ydata()) == [0.6, 0.7]
    assert [t.get_text() for t in fig.texts][-2:] == ["train", "val"]


# ---- after real runs (these need the training loop that writes predictions_test.npz)


def roughness(templates: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels over the mean absolute weight (scale-free)."""
    images = templates.mean(axis=1)
    steps = np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()
    return float(steps / np.abs(images).mean())


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory, losslab):
    """{λ: run dir} of short linear MNIST runs for λ = 0 and 1, trained by `losslab-train`."""
    runs = {}
    for l2 in (0.0, 1.0):
        run_dir = tmp_path_factory.mktemp("runs") / f"l2_{l2}"
        proc = losslab.train("model=linear", "trainer.epochs=1", "dataset.train_size=5000", "trainer.eval_every=0.25",
                             "optimizer.lr=0.1", f"trainer.l2={l2}", "trainer.progress=log", "trainer.device=cpu",
                             f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
        assert proc.returncode == 0, proc.stderr
        runs[l2] = run_dir
    return runs


def test_the_command_draws_a_runs_figures_after_training(mnist_runs):
    run_dir = mnist_runs[0.0]
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(f"{kind}.png" for kind in KINDS)
    images = read_events(run_dir)
    assert sorted(images.Tags()["images"]) == sorted(figure_tag(kind) for kind in KINDS)
    steps = json.loads((run_dir / "summary.json").read_text())["steps"]
    assert {images.Images(figure_tag(kind))[0].step for kind in KINDS} == {steps}


def test_tensorboard_shows_a_runs_scalars_before_its_figures(mnist_runs):
    """Time Series opens on its first groups: the figures' group comes after every scalar group."""
    tags = read_events(mnist_runs[0.0]).Tags()
    scalar_groups = time_series_groups(tags["scalars"])
    assert {"train", "val", "test"} <= set(scalar_groups)
    assert time_series_groups(tags["scalars"] + tags["images"]) == [*scalar_groups, FIGURE_TAG_PREFIX]


def test_the_tag_order_is_tensorboards_on_its_own_examples():
    """compare_tag_names against the cases of TensorBoard's sorting tests and its docstring."""
    ordered = [("B", "a"), ("1", "03"), ("a1", "a03"), ("a03", "b1"), ("x0a1", "x0a03"), ("a/b/1", "a/b/03"),
               ("a0.01", "a0.1"), ("a9e8", "a1e9"), ("a9e+8", "a1e+9"), ("a2b", "a10b"), ("a/a", "a+/a"),
               ("weights/sq_norm", figure_tag("curves"))]
    for first, second in ordered:
        assert (compare_tag_names(first, second), compare_tag_names(second, first)) == (-1, 1), (first, second)
    assert compare_tag_names("a/b", "a/b") == 0
    assert time_series_groups(["val/acc", "lr", "figures/curves", "train/loss"]) == ["figures", "lr", "train", "val"]


def test_l2_makes_the_weight_templates_smoother(mnist_runs):
    rough = {l2: roughness(run_templates(run_dir, OmegaConf.load(run_dir / ".hydra" / "config.yaml"))[0])
             for l2, run_dir in mnist_runs.items()}
    assert rough[1.0] < 0.7 * rough[0.0], rough


@pytest.mark.parametrize("figures", ["unset", "true"])
def test_a_multirun_draws_its_jobs_figures_at_its_end_or_on_demand(figures, tmp_path, losslab):
    """Unset, a sweep's end draws no job's figures and `losslab-report <sweep dir> --figures` draws them;
    trainer.figures=true draws them at the sweep's end."""
    setting = [] if figures == "unset" else ["trainer.figures=true"]
    sweep = tmp_path / "sweep"
    proc = losslab.sweep("dataset=synthetic", "trainer.progress=log", "trainer.epochs=1", "optimizer.lr=0.3,0.1",
                         *setting, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    jobs = sorted(sweep.glob("[0-9]*"))
    assert all((job / "figures").exists() == (figures == "true") for job in jobs)
    if figures == "unset":
        done = losslab.run("losslab-report", str(sweep), "--figures", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    for job in jobs:
        assert sorted(p.name for p in (job / "figures").iterdir()) == sorted(f"{kind}.png" for kind in KINDS)
