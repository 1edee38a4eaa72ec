"""Figures: the plotting functions on fixed inputs, and write_figures after real MNIST runs."""

import os
import re
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch
from tb_events import read_events

from losslab.cli import compose
from losslab.drawing import confidence_figure, curves_figure, reliability_figure, templates_figure
from losslab.figures import drawing_pool, start_figures, weight_templates, write_figures
from losslab.metrics import ECE_BINS, SplitMetrics
from losslab.runs import build
from losslab.runtime import pick_device
from losslab.train import fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KINDS = ("weight_templates", "confidence_histogram_test", "reliability_test", "curves")


def roughness(templates: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels over the mean absolute weight (scale-free)."""
    images = templates.mean(axis=1)
    steps = np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()
    return float(steps / np.abs(images).mean())


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk of a PNG file."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def mnist_run(run_dir, l2: float):
    """A short linear MNIST run; `fit` writes its figures (PNGs and TensorBoard images) at the end."""
    cfg = compose(["model=linear", "trainer.epochs=1", "dataset.train_size=5000", "trainer.eval_every=0.25",
                   "optimizer.lr=0.1", f"trainer.l2={l2}", "trainer.progress=log", "trainer.device=cpu"])
    summary = fit(cfg, run_dir)
    data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(state["model"])
    loss_fn.load_state_dict(state["loss"])
    paths = sorted((run_dir / "figures").glob("*.png"))
    return summary, paths, weight_templates(model, data.shape)[0]


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    """{λ: (run dir, summary, PNG paths, templates)} for λ = 0 and 1."""
    runs = {}
    for l2 in (0.0, 1.0):
        run_dir = tmp_path_factory.mktemp(f"linear_l2_{l2}")
        runs[l2] = (run_dir, *mnist_run(run_dir, l2))
    return runs


def test_a_linear_run_writes_the_four_figures_as_pngs_and_tensorboard_images(mnist_runs):
    run_dir, summary, paths, _ = mnist_runs[0.0]
    assert sorted(p.name for p in paths) == sorted(f"{kind}.png" for kind in KINDS)
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(p.name for p in paths)
    images = read_events(run_dir)
    assert sorted(images.Tags()["images"]) == sorted(f"figures/{kind}" for kind in KINDS)
    for kind in KINDS:
        width, height = png_size(run_dir / "figures" / f"{kind}.png")
        assert 400 <= width <= 2000 and 300 <= height <= 2000, (kind, width, height)
        (event,) = images.Images(f"figures/{kind}")
        assert (event.step, event.width, event.height) == (summary["steps"], width, height)
        assert event.encoded_image_string[:8] == PNG_SIGNATURE


def test_l2_makes_the_weight_templates_smoother(mnist_runs):
    rough = {l2: roughness(templates) for l2, (*_, templates) in mnist_runs.items()}
    assert rough[1.0] < 0.7 * rough[0.0], rough


def test_templates_are_the_weights_of_each_class_as_images():
    cfg = compose(["dataset=synthetic", "model=linear", "trainer.device=cpu"])
    data, _, model, _, _ = build(cfg, pick_device("cpu"))
    templates, names = weight_templates(model, data.shape)
    assert templates.shape == (data.num_classes, *data.shape)
    np.testing.assert_array_equal(templates[2].ravel(), model.fc.weight[2].detach().numpy())
    assert names[2] == "class 2"


def test_dual_linear_has_one_template_and_a_conv_net_none():
    cfg = compose(["dataset=synthetic", "dataset.num_classes=2", "model=dual_linear", "loss=bce", "trainer.device=cpu"])
    data, _, model, _, _ = build(cfg, pick_device("cpu"))
    templates, names = weight_templates(model, data.shape)
    assert templates.shape == (1, *data.shape) and names == ["w1 + G1"]
    np.testing.assert_allclose(templates.ravel(), (model.w1 + model.G1).detach().numpy().ravel())
    lenet = build(compose(["dataset=synthetic", "model=lenet", "trainer.device=cpu"]), pick_device("cpu"))[2]
    assert weight_templates(lenet, data.shape) is None


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
    assert fig.get_suptitle().startswith("Weight templates")


def test_reliability_title_holds_the_ece_of_split_metrics():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.full(10, 0.2), size=2000)).float()
    y = torch.from_numpy(np.where(rng.random(2000) < 0.6, probs.argmax(1).numpy(), rng.integers(0, 10, 2000)))
    metrics = SplitMetrics(torch.device("cpu"))
    metrics.update(probs, y, torch.tensor(0.0))
    confidence, prediction = probs.max(1)
    fig = reliability_figure(confidence.numpy(), (prediction == y).numpy(), "val", ECE_BINS)
    title = fig.axes[0].get_title()
    assert title.startswith("Reliability on val") and "15 bins" in title
    ece = float(re.search(r"ECE = ([0-9.]+)", title).group(1))
    assert ece == pytest.approx(metrics.result()["ece"], abs=5e-5)
    assert ece > 0.01  # over-confident on purpose: not a trivially calibrated case


def test_confidence_histogram_compares_correct_and_wrong():
    confidence = np.array([0.95, 0.9, 0.99, 0.4, 0.5])
    correct = np.array([True, True, True, False, False])
    fig = confidence_figure(confidence, correct, "test")
    ax = fig.axes[0]
    assert ax.get_title() == "Confidence on test: correct vs wrong"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0].startswith("correct (n=3") and labels[1].startswith("wrong (n=2")
    heights = [sum(p.get_height() for p in container) for container in ax.containers]
    assert heights == pytest.approx([1.0, 1.0])  # each group sums to one


def test_curves_plot_the_evaluations_and_leave_out_the_final_row():
    keys = ("step", "train/loss", "val/loss", "train/acc", "val/acc")
    rows = [dict(zip(keys, ("10", "1.0", "0.9", "0.5", "0.6")), **{"test/loss": ""}),  # as metrics.csv reads back
            dict(zip(keys, (20, 0.5, 0.7, 0.8, 0.7))),  # as fit holds an evaluation's row
            dict(zip(keys, (20, 0.4, 0.7, 0.9, 0.7)), **{"test/loss": 0.8})]  # the final row
    fig = curves_figure(rows)
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("loss", "accuracy")
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    assert sorted(lines) == ["train/acc", "train/loss", "val/acc", "val/loss"]
    assert list(lines["train/loss"].get_xdata()) == [10, 20]
    assert list(lines["train/loss"].get_ydata()) == [1.0, 0.5]


def test_figures_that_do_not_apply_are_left_out(tmp_path):
    cfg = compose(["dataset=synthetic", "model=lenet", "trainer.device=cpu"])
    data, loss_fn, lenet, _, _ = build(cfg, pick_device("cpu"))
    paths = write_figures(tmp_path / "lenet", lenet, loss_fn, data, rows=[], split="val")
    assert sorted(p.name for p in paths) == ["confidence_histogram_val.png", "reliability_val.png"]

    data, loss_fn, linear, _, _ = build(compose(["dataset=synthetic", "model=linear"]), pick_device("cpu"))
    with torch.no_grad():
        linear.fc.weight.fill_(float("nan"))  # a diverged run
    rows = [{"step": 5, "train/loss": float("nan"), "val/loss": float("nan"), "train/acc": 0.1, "val/acc": 0.1}]
    paths = write_figures(tmp_path / "diverged", linear, loss_fn, data, rows)
    assert [p.name for p in paths] == ["curves.png"]


def test_a_drawing_pool_writes_the_same_files_and_its_workers_need_no_torch(tmp_path):
    cfg = compose(["dataset=synthetic", "model=linear", "trainer.device=cpu"])
    data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
    rows = [{"step": 5, "train/loss": 1.0, "val/loss": 0.9, "train/acc": 0.4, "val/acc": 0.5}]
    here = write_figures(tmp_path / "here", model, loss_fn, data, rows)
    with drawing_pool(2) as pool:
        drawn = write_figures(tmp_path / "pool", model, loss_fn, data, rows, pool=pool)
        modules = pool.submit(eval, "list(__import__('sys').modules)").result()  # eval: no module of ours to import
    assert [p.name for p in drawn] == [p.name for p in here] and len(here) == 4
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(here, drawn))
    assert "torch" not in modules and {"matplotlib", "losslab.drawing"} <= set(modules)


def test_started_figures_show_the_models_at_their_start_while_several_runs_draw_at_once(tmp_path):
    cfg = compose(["dataset=synthetic", "model=linear", "trainer.device=cpu"])
    data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
    other = build(compose(["dataset=synthetic", "model=linear", "trainer.device=cpu", "seed=1"]), pick_device("cpu"))[2]
    rows = [{"step": 5, "train/loss": 1.0, "val/loss": 0.9, "train/acc": 0.4, "val/acc": 0.5}]
    expected = {name: write_figures(tmp_path / name, m, loss_fn, data, rows) for name, m in
                (("first", model), ("second", other))}
    with drawing_pool(2) as pool:
        started = {name: start_figures(m, loss_fn, data, rows, pool=pool) for name, m in
                   (("first", model), ("second", other))}
        with torch.no_grad():  # the stack trains on (or the next member is evaluated) while the workers draw
            for m in (model, other):
                m.fc.weight.mul_(-3)
        saved = {name: figures.save(tmp_path / "pool" / name) for name, figures in started.items()}
    for name in expected:
        assert [p.name for p in saved[name]] == [p.name for p in expected[name]] and len(saved[name]) == 4
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(expected[name], saved[name]))
    assert expected["first"][0].read_bytes() != expected["second"][0].read_bytes()  # two models, two templates


def test_figures_are_drawn_here_when_the_drawing_workers_died(tmp_path, caplog):
    cfg = compose(["dataset=synthetic", "model=linear", "trainer.device=cpu"])
    data, loss_fn, model, _, _ = build(cfg, pick_device("cpu"))
    with drawing_pool(1) as pool:
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 1).result()  # the worker dies abruptly, as under the OOM killer
        paths = write_figures(tmp_path, model, loss_fn, data, rows=[], split="val", pool=pool)
    assert sorted(p.name for p in paths) == ["confidence_histogram_val.png", "reliability_val.png",
                                             "weight_templates.png"]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in paths)
    assert "the figure-drawing workers stopped" in caplog.text
