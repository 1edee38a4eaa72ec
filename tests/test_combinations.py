"""Every dataset x model x loss that makes sense composes and trains one debug batch.

CIFAR-10 and EMNIST letters come from tiny files in their real on-disk formats (tests/fixtures.py),
read through torchvision's own classes; the MNIST tasks use the real MNIST shipped in data/.
"""

import math

import pytest

from losslab.commands.cli import compose
from losslab.training.loop import fit

DATASETS = {"mnist": 10, "mnist_even_odd": 2, "mnist_2v3": 2, "cifar10": 10, "emnist_letters": 26, "synthetic": 4}
COMBINATIONS = [
    (dataset, model, loss)
    for dataset, classes in DATASETS.items()
    for model in ("linear", "fnn", "lenet", "vgg5")
    for loss in ("ce", "mbce", "bce")
    if loss != "bce" or classes == 2
]


def one_debug_batch(fit, dataset, model, loss, fixture_root, tmp_path):
    overrides = [f"dataset={dataset}", f"model={model}", f"loss={loss}", "trainer=debug", "trainer.progress=log",
                 "trainer.batch_size=16", "trainer.eval_batch_size=32"]
    if dataset in ("cifar10", "emnist_letters"):
        overrides += [f"dataset.root={fixture_root}", "dataset.download=false", "dataset.val_size=100"]
    summary = fit(compose(overrides), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 1
    assert all(math.isfinite(summary["final"][f"{s}/loss"]) for s in ("train", "val", "test"))
    assert (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("dataset, model, loss", [c for c in COMBINATIONS if c[1] != "vgg5"])
def test_one_debug_batch(dataset, model, loss, fixture_root, tmp_path):
    one_debug_batch(fit, dataset, model, loss, fixture_root, tmp_path)


@pytest.mark.parametrize("loss", ["focal", "gce", "sce", "mae", "confidence_penalty"])
def test_one_debug_batch_of_each_loss_with_the_head_of_ce(loss, fixture_root, tmp_path):
    """A loss with ce's K outputs and softmax builds and trains as ce does: one dataset and model each."""
    one_debug_batch(fit, "synthetic", "fnn", loss, fixture_root, tmp_path)


@pytest.mark.parametrize("dataset, model, loss", [c for c in COMBINATIONS if c[1] == "vgg5"])
def test_one_debug_batch_of_vgg5(dataset, model, loss, fixture_root, tmp_path, trains):
    """VGG-5's one batch on the CPU costs what training a small model for epochs does: `trains` (the slow tier)."""
    one_debug_batch(trains, dataset, model, loss, fixture_root, tmp_path)
