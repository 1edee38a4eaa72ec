"""Data: sources read through torchvision from their real formats, tasks, splits, normalisation,
augmentation, errors and the uint8 cache, each checked against an independent computation."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.fixtures import (
    EMNIST_LETTERS_FILES,
    MNIST_FILES,
    write_cifar10,
    write_emnist_letters,
    write_idx,
    write_mnist,
)

from losslab.commands.cli import compose
from losslab.config import REPO_ROOT, check
from losslab.data import augment, load_splits
from losslab.errors import ConfigError, DataError

CPU = torch.device("cpu")


def dataset_cfg(*overrides: str):
    return compose(list(overrides)).dataset


def load(*overrides: str):
    return load_splits(dataset_cfg(*overrides), CPU)


def rows(x) -> list[bytes]:
    """One hashable key per image (for matching loaded images to written ones)."""
    x = np.asarray(x)
    return [r.tobytes() for r in x.reshape(len(x), -1)]


def unit(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 pixels / 255 (the exact `unit` normalisation)."""
    return np.asarray(x).astype(np.float32) / np.float32(255)


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """Images normalised with `unit` back to their uint8 pixels (exact: k/255*255 rounds to k)."""
    return (x.numpy() * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- sources through torchvision
def test_cifar10_loads_written_pixels_and_labels(fixture_root, written):
    w = written["cifar10"]
    s = load("dataset=cifar10", f"dataset.root={fixture_root}", "dataset.download=false",
             "dataset.val_size=50", "dataset.normalize=unit")
    assert s.num_classes == 10 and s.shape == (3, 32, 32)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (450, 50, 100)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.float32 and x.device == CPU and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) <= 9
    # test split: in file order, pixels exactly k/255, labels as written
    np.testing.assert_array_equal(s.test_x.numpy(), w.test_x.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(s.test_y.numpy(), w.test_y)
    # train + val: each loaded image is a written training image with its written label
    index = {k: i for i, k in enumerate(rows(w.train_x))}
    assert len(index) == len(w.train_x)  # fixture images are unique
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y)):
        idx = np.array([index[k] for k in rows(as_uint8(x))])
        np.testing.assert_array_equal(x.numpy(), w.train_x[idx].astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(y.numpy(), w.train_y[idx])


def test_cifar10_needs_matching_checksums(tmp_path):
    """Without the md5 patch, torchvision's checksum check rejects the fixture files: a DataError."""
    write_cifar10(tmp_path, n_per_batch=4, n_test=4)
    with pytest.raises(DataError, match="checksum") as e:
        load("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_size=2")
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


def test_emnist_letters_upright_and_shifted_labels(fixture_root, written):
    w = written["emnist_letters"]
    s = load("dataset=emnist_letters", f"dataset.root={fixture_root}", "dataset.download=false",
             "dataset.val_size=20", "dataset.val_pick=last", "dataset.normalize=unit",
             "dataset.mean=null", "dataset.std=null")
    assert s.num_classes == 26 and s.shape == (1, 28, 28)
    # the reader transposes the stored (column-major) images back upright
    upright_test = w.stored_test_x.transpose(0, 2, 1)[:, None]
    np.testing.assert_array_equal(s.test_x.numpy(), upright_test.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(s.test_y.numpy(), w.test_y - 1)
    upright_train = w.stored_train_x.transpose(0, 2, 1)[:, None].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(s.train_x.numpy(), upright_train[:-20])
    np.testing.assert_array_equal(s.val_x.numpy(), upright_train[-20:])
    np.testing.assert_array_equal(s.train_y.numpy(), w.train_y[:-20] - 1)
    np.testing.assert_array_equal(s.val_y.numpy(), w.train_y[-20:] - 1)
    for y in (s.train_y, s.val_y, s.test_y):
        assert 0 <= int(y.min()) and int(y.max()) <= 25


def test_emnist_letters_config_normalisation(fixture_root, written):
    """conf/dataset/emnist_letters.yaml: standard normalisation with the given mean/std."""
    w = written["emnist_letters"]
    s = load("dataset=emnist_letters", f"dataset.root={fixture_root}", "dataset.download=false",
             "dataset.val_size=20")
    expected = (w.test_x.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(s.test_x.numpy(), expected, rtol=0, atol=1e-5)


def test_fixture_classes_are_learnable(written):
    """The fixture images carry a class signal: nearest class mean (fit on train) beats chance by far."""
    for w in written.values():
        train, test = w.train_x.reshape(len(w.train_x), -1) / 255, w.test_x.reshape(len(w.test_x), -1) / 255
        classes = np.unique(w.train_y)
        means = np.stack([train[w.train_y == c].mean(0) for c in classes])
        pred = classes[((test[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
        assert (pred == w.test_y).mean() > 0.9


# ---------------------------------------------------------------- validation split
def _cifar_val(root, seed: int) -> tuple[list[bytes], list[bytes]]:
    s = load("dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "dataset.val_size=60",
             "dataset.normalize=unit", f"dataset.split_seed={seed}")
    return rows(as_uint8(s.train_x)), rows(as_uint8(s.val_x))


def test_val_split_seeded_disjoint_and_complete(fixture_root, written):
    train, val = _cifar_val(fixture_root, seed=0)
    assert len(val) == 60 and len(train) == 440
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(rows(written["cifar10"].train_x))
    assert _cifar_val(fixture_root, seed=0) == (train, val)
    train1, val1 = _cifar_val(fixture_root, seed=1)
    assert set(val1) != set(val) and len(val1) == 60
    # a random pick, not just the first or last images
    first, last = set(rows(written["cifar10"].train_x[:60])), set(rows(written["cifar10"].train_x[-60:]))
    assert set(val) != first and set(val) != last


def test_val_offset_trains_on_cifar_batch_1_and_validates_on_batch_2(fixture_root, written):
    """The cifar10_linear protocol in fixture sizes (100 images a batch): val = batch 2, train = batch 1."""
    w = written["cifar10"]
    s = load("dataset=cifar10", f"dataset.root={fixture_root}", "dataset.download=false", "dataset.normalize=unit",
             "dataset.val_pick=first", "dataset.val_offset=100", "dataset.val_size=100",
             "dataset.train_pick=first", "dataset.train_size=100")
    assert rows(as_uint8(s.val_x)) == rows(w.train_x[100:200])
    assert rows(as_uint8(s.train_x)) == rows(w.train_x[:100])
    np.testing.assert_array_equal(s.train_y.numpy(), w.train_y[:100])
    # a random pick never takes one of the skipped images, and the rest is train
    s = load("dataset=cifar10", f"dataset.root={fixture_root}", "dataset.download=false", "dataset.normalize=unit",
             "dataset.val_offset=300", "dataset.val_size=60")
    val = set(rows(as_uint8(s.val_x)))
    assert len(val) == 60 and val <= set(rows(w.train_x[300:]))
    assert sorted(rows(as_uint8(s.train_x)) + list(val)) == sorted(rows(w.train_x))


def test_val_offset_past_the_end_is_one_sentence(fixture_root):
    with pytest.raises(ConfigError, match=r"dataset.val_offset=500 skips all 500 train images"):
        load("dataset=cifar10", f"dataset.root={fixture_root}", "dataset.download=false", "dataset.val_offset=500")
    with pytest.raises(ConfigError, match="dataset.val_offset must be >= 0"):
        check(compose(["dataset.val_offset=-1"]))


# ---------------------------------------------------------------- derived tasks on the real MNIST
@pytest.fixture(scope="module")
def mnist():
    """The repo's MNIST read independently through torchvision: (train_x, train_y, test_x, test_y) numpy."""
    from torchvision.datasets import MNIST

    root = REPO_ROOT / "data"
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        load_splits(compose(["dataset=mnist", f"dataset.root={root}"]).dataset, CPU)  # unpacks the .gz files
    tr, te = MNIST(root, train=True), MNIST(root, train=False)
    return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()


@pytest.fixture
def default_root(monkeypatch):
    monkeypatch.delenv("LOSSLAB_DATA_DIR", raising=False)


def test_mnist_even_odd(mnist, default_root):
    train_x, train_y, test_x, test_y = mnist
    s = load("dataset=mnist_even_odd", "dataset.val_pick=first", "dataset.val_size=5000")
    assert s.num_classes == 2 and s.shape == (1, 28, 28)
    np.testing.assert_array_equal(s.test_y.numpy(), (test_y % 2 == 0).astype(np.int64))
    np.testing.assert_array_equal(s.val_y.numpy(), (train_y[:5000] % 2 == 0).astype(np.int64))
    np.testing.assert_array_equal(s.train_y.numpy(), (train_y[5000:] % 2 == 0).astype(np.int64))
    np.testing.assert_array_equal(s.train_x.numpy()[:, 0], unit(train_x[5000:]))
    np.testing.assert_array_equal(s.test_x.numpy()[:, 0], unit(test_x))
    assert 0.4 < s.train_y.float().mean() < 0.6


def test_mnist_2v3(mnist, default_root):
    train_x, train_y, test_x, test_y = mnist
    s = load("dataset=mnist_2v3")
    keep = (test_y == 2) | (test_y == 3)
    np.testing.assert_array_equal(s.test_x.numpy()[:, 0], test_x[keep].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(s.test_y.numpy(), (test_y[keep] == 2).astype(np.int64))
    n23 = int(((train_y == 2) | (train_y == 3)).sum())
    assert len(s.train_y) + len(s.val_y) == n23 and 0 < len(s.val_y) < 5000
    assert set(s.train_y.tolist()) == {0, 1} == set(s.val_y.tolist())


def test_mnist_2v3_course_protocol(mnist, default_root):
    """The first 20,000 training images filtered to 2s and 3s; validation = the test set filtered."""
    train_x, train_y, test_x, test_y = mnist
    s = load("dataset=mnist_2v3", "dataset.train_size=20000", "dataset.train_pick=first",
             "dataset.val_from=test", "dataset.val_size=10000", "dataset.val_pick=first")
    keep = (train_y[:20000] == 2) | (train_y[:20000] == 3)
    np.testing.assert_array_equal(s.train_x.numpy()[:, 0], unit(train_x[:20000][keep]))
    np.testing.assert_array_equal(s.train_y.numpy(), (train_y[:20000][keep] == 2).astype(np.int64))
    keep_t = (test_y == 2) | (test_y == 3)
    for x, y in ((s.val_x, s.val_y), (s.test_x, s.test_y)):
        np.testing.assert_array_equal(x.numpy()[:, 0], test_x[keep_t].astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(y.numpy(), (test_y[keep_t] == 2).astype(np.int64))


# ---------------------------------------------------------------- normalisation
def _cifar_norm(root, *overrides):
    """CIFAR fixture with the first 50 training images as validation (so the train split is known)."""
    return load("dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "dataset.val_size=50",
                "dataset.val_pick=first", *overrides)


def _expected(w, mean, std):
    xs = [w.train_x[50:], w.train_x[:50], w.test_x]
    return [(x.astype(np.float64) / 255 - mean) / std for x in xs]


def _check(s, expected, atol=1e-5):
    for got, want in zip((s.train_x, s.val_x, s.test_x), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=atol)


def test_normalize_unit_exact(fixture_root, written):
    w = written["cifar10"]
    s = _cifar_norm(fixture_root, "dataset.normalize=unit")
    wants = (w.train_x[50:], w.train_x[:50], w.test_x)
    for got, want in zip((s.train_x, s.val_x, s.test_x), wants, strict=True):
        np.testing.assert_array_equal(got.numpy(), unit(want))
    assert float(s.train_x.min()) == 0.0 and float(s.train_x.max()) == 1.0


def test_normalize_symmetric(fixture_root, written):
    s = _cifar_norm(fixture_root, "dataset.normalize=symmetric")
    _check(s, _expected(written["cifar10"], 0.5, 0.5))
    assert float(s.train_x.min()) == -1.0 and float(s.train_x.max()) == 1.0


def test_normalize_standard_given(fixture_root, written):
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    s = _cifar_norm(fixture_root, "dataset.normalize=standard", "dataset.mean=[0.4,0.5,0.6]",
                    "dataset.std=[0.2,0.25,0.3]")
    _check(s, _expected(written["cifar10"], mean.reshape(1, 3, 1, 1), std.reshape(1, 3, 1, 1)))


def test_normalize_standard_from_train_split(fixture_root, written):
    w = written["cifar10"]
    train = w.train_x[50:].astype(np.float64) / 255
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1, ddof=1).reshape(1, 3, 1, 1)
    s = _cifar_norm(fixture_root, "dataset.normalize=standard", "dataset.mean=null", "dataset.std=null")
    _check(s, _expected(w, mean, std))
    # statistics of the train split only: the train split is standardised, the others are not exactly
    got = s.train_x.double()
    np.testing.assert_allclose(got.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(got.transpose(0, 1).reshape(3, -1).std(dim=1).numpy(), 1, atol=1e-5)


def test_normalize_per_pixel_with_std_clamp(fixture_root, written):
    w = written["cifar10"]
    train = w.train_x[50:].astype(np.float64) / 255
    mean = train.mean(axis=0, keepdims=True)
    raw_std = train.std(axis=0, ddof=1, keepdims=True)
    std = np.maximum(raw_std, 1 / 255)
    # the fixture's pixel (:, 0, 0) is (nearly) constant: the clamp matters there
    assert (raw_std[0, :, 0, 0] < 1 / 255).all()
    s = _cifar_norm(fixture_root, "dataset.normalize=per_pixel")
    _check(s, _expected(w, mean, std), atol=1e-4)
    assert torch.isfinite(s.train_x).all() and torch.isfinite(s.val_x).all()


@pytest.mark.parametrize("missing", ["mean", "std"])
def test_normalize_standard_needs_mean_and_std_together(missing):
    given = {"mean": "dataset.mean=[0.5]", "std": "dataset.std=[0.25]"}
    cfg = compose(["dataset=synthetic", "dataset.normalize=standard", f"dataset.{missing}=null",
                   given["std" if missing == "mean" else "mean"]])
    with pytest.raises(ConfigError, match=r"dataset\.mean and dataset\.std go together"):
        check(cfg)


# ---------------------------------------------------------------- augmentation
def _images(n=64, c=3, h=6, w=7):
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_augment_hflip(device):
    x = _images().to(device)
    out = augment(x, hflip=True, crop_padding=0, g=torch.Generator(device).manual_seed(0))
    assert out.device == x.device and out.shape == x.shape
    xn, on = x.cpu().numpy(), out.cpu().numpy()
    flipped = [bool(np.array_equal(on[i], xn[i, :, :, ::-1])) for i in range(len(xn))]
    same = [bool(np.array_equal(on[i], xn[i])) for i in range(len(xn))]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 10 < sum(flipped) < 54  # about half flipped
    again = augment(x, hflip=True, crop_padding=0, g=torch.Generator(device).manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(augment(x, hflip=False, crop_padding=0, g=torch.Generator(device)), x)


def _window_offsets(out: np.ndarray, x: np.ndarray, p: int) -> list[set[tuple[int, int]]]:
    """Per sample, the offsets (dy, dx) at which `out[i]` equals a window of zero-padded `x[i]`."""
    _, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    return [
        {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
         if np.array_equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])}
        for i in range(len(x))
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_augment_crop(device):
    x, p = _images().to(device), 2
    out = augment(x, hflip=False, crop_padding=p, g=torch.Generator(device).manual_seed(1))
    assert out.device == x.device and out.shape == x.shape
    offsets = _window_offsets(out.cpu().numpy(), x.cpu().numpy(), p)
    assert all(len(o) == 1 for o in offsets)  # each is exactly one window (pixel values are unique)
    used = set().union(*offsets)
    assert len(used) > 10  # many different offsets, not always centred
    assert any(dy != p for dy, _ in used) and any(dx != p for _, dx in used)


def test_augment_flip_and_crop():
    x, p = _images(), 3
    out = augment(x, hflip=True, crop_padding=p, g=torch.Generator().manual_seed(2)).numpy()
    plain = _window_offsets(out, x.numpy(), p)
    mirrored = _window_offsets(out, x.numpy()[:, :, :, ::-1].copy(), p)
    assert all(a or b for a, b in zip(plain, mirrored, strict=True))
    assert any(mirrored) and any(plain)


# ---------------------------------------------------------------- errors, on a written MNIST copy
@pytest.fixture
def mnist_copy(tmp_path):
    """A tiny MNIST under tmp_path (unpacked IDX files): (root, raw folder)."""
    write_mnist(tmp_path, n_train=60, n_test=20, seed=3)
    return tmp_path, tmp_path / "MNIST" / "raw"


def _load_mnist(root, *overrides):
    return load("dataset=mnist", f"dataset.root={root}", "dataset.download=false", "dataset.val_size=10",
                *overrides)


def test_mnist_copy_loads(mnist_copy):
    root, _ = mnist_copy
    s = _load_mnist(root)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (50, 10, 20)


def test_error_missing_file(mnist_copy):
    root, raw = mnist_copy
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        _load_mnist(root)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(raw) in msg and "missing" in msg
    assert "train-images-idx3-ubyte" not in msg  # names only what is missing
    assert "\n" not in msg


def test_error_missing_dataset_offline(tmp_path):
    expected = {"cifar10": "data_batch_1", "emnist_letters": "emnist-letters-train-images-idx3-ubyte"}
    for name, expect in expected.items():
        with pytest.raises(DataError, match="missing") as e:
            load(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false")
        assert expect in str(e.value) and str(tmp_path) in str(e.value)


def test_error_truncated_idx(mnist_copy):
    root, raw = mnist_copy
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as e:
        _load_mnist(root)
    assert str(path) in str(e.value)


def test_error_truncated_header(mnist_copy):
    root, raw = mnist_copy
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(DataError, match="truncated") as e:
        _load_mnist(root)
    assert str(path) in str(e.value)


def test_error_wrong_magic(mnist_copy):
    root, raw = mnist_copy
    path = raw / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 0x01  # a 1-d magic on an image file
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic number") as e:
        _load_mnist(root)
    assert str(path) in str(e.value) and "0x00000801" in str(e.value)


def test_error_label_out_of_range(mnist_copy):
    root, raw = mnist_copy
    path = raw / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[8 + 5] = 11
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="label 11") as e:
        _load_mnist(root)
    assert str(path) in str(e.value) and "0..9" in str(e.value)


def test_error_emnist_label_out_of_range(tmp_path):
    write_emnist_letters(tmp_path, n_train=40, n_test=20, seed=8, gzipped=False)
    path = tmp_path / "EMNIST" / "raw" / EMNIST_LETTERS_FILES["test", "labels"]
    data = bytearray(path.read_bytes())
    data[8 + 3] = 0  # letters are 1..26; 0 is torchvision's "N/A" class
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="label 0") as e:
        load("dataset=emnist_letters", f"dataset.root={tmp_path}", "dataset.download=false",
             "dataset.val_size=5")
    assert str(path) in str(e.value) and "1..26" in str(e.value)


def test_error_image_label_count_mismatch(mnist_copy):
    root, raw = mnist_copy
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 images") as e:
        _load_mnist(root)
    assert "t10k-labels-idx1-ubyte" in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_error_corrupt_gzip(tmp_path, damage):
    write_mnist(tmp_path, n_train=60, n_test=20, seed=3, gzipped=True)
    raw = tmp_path / "MNIST" / "raw"
    packed = raw / "train-images-idx3-ubyte.gz"
    data = packed.read_bytes()
    packed.write_bytes(b"this is not gzip data" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip") as e:
        _load_mnist(tmp_path)
    assert str(packed) in str(e.value)
    assert not (raw / "train-images-idx3-ubyte").exists()  # no half-unpacked file left behind
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


def test_gzipped_mnist_unpacks_and_loads(tmp_path):
    w = write_mnist(tmp_path, n_train=60, n_test=20, seed=4, gzipped=True)
    s = _load_mnist(tmp_path, "dataset.val_pick=first")
    for f in MNIST_FILES.values():
        assert (tmp_path / "MNIST" / "raw" / f).exists()
    np.testing.assert_array_equal(as_uint8(s.test_x), w.test_x)
    np.testing.assert_array_equal(as_uint8(s.train_x), w.train_x[10:])
    np.testing.assert_array_equal(s.val_y.numpy(), w.train_y[:10])


# ---------------------------------------------------------------- uint8 cache
def _cache_files(root: Path) -> list[Path]:
    return sorted((root / "cache").glob("*.pt"))


def _assert_valid_cache(path: Path, w) -> None:
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"train_x", "train_y", "test_x", "test_y"}
    assert obj["train_x"].dtype == torch.uint8 and obj["train_x"].shape == (len(w.train_y), 1, 28, 28)
    np.testing.assert_array_equal(obj["train_x"].numpy(), w.train_x)
    np.testing.assert_array_equal(obj["test_y"].numpy(), w.test_y)


@pytest.mark.parametrize("garbage", ["bytes", "wrong_object"])
def test_cache_written_and_rebuilt_when_corrupt(tmp_path, caplog, garbage):
    w = write_mnist(tmp_path, n_train=60, n_test=20, seed=5)
    first = _load_mnist(tmp_path)
    (cache,) = _cache_files(tmp_path)
    _assert_valid_cache(cache, w)
    if garbage == "bytes":
        cache.write_bytes(os.urandom(1000))
    else:
        torch.save({"train_x": torch.zeros(3)}, cache)
    with caplog.at_level(logging.WARNING, logger="losslab"):
        second = _load_mnist(tmp_path)
    assert any(str(cache) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert _cache_files(tmp_path) == [cache]
    _assert_valid_cache(cache, w)
    for a, b in zip(first.split("train") + first.split("test"), second.split("train") + second.split("test"),
                    strict=True):
        assert torch.equal(a, b)


def test_cache_is_used(tmp_path):
    """A valid cache is read instead of the source files (so the source is read only once)."""
    w = write_mnist(tmp_path, n_train=60, n_test=20, seed=6)
    _load_mnist(tmp_path)
    (cache,) = _cache_files(tmp_path)
    obj = torch.load(cache, weights_only=True)
    obj["test_y"] = (obj["test_y"] + 1) % 10  # a valid cache with different labels
    torch.save(obj, cache)
    s = _load_mnist(tmp_path)
    np.testing.assert_array_equal(s.test_y.numpy(), (w.test_y + 1) % 10)


def test_cache_key_follows_source_files(tmp_path):
    w = write_mnist(tmp_path, n_train=60, n_test=20, seed=7)
    raw = tmp_path / "MNIST" / "raw"
    _load_mnist(tmp_path)
    (first,) = _cache_files(tmp_path)
    # touching a source file (new mtime) changes the key
    labels = raw / "t10k-labels-idx1-ubyte"
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _load_mnist(tmp_path)
    keys = {p.name for p in _cache_files(tmp_path)}
    assert len(keys) == 2 and first.name in keys
    # changing a source file's content: the new labels are read, not the stale cache
    new_y = (w.test_y + 3) % 10
    write_idx(labels, new_y.astype(np.uint8))
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    s = _load_mnist(tmp_path)
    np.testing.assert_array_equal(s.test_y.numpy(), new_y)
    assert len(_cache_files(tmp_path)) == 3


# ---------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_shaped():
    a = load("dataset=synthetic")
    b = load("dataset=synthetic")
    c = load("dataset=synthetic", "dataset.split_seed=1")
    assert a.num_classes == 4 and a.shape == (1, 16, 16)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (2048 - 256, 256, 512)
    for name in ("train", "val", "test"):
        for t, u in zip(a.split(name), b.split(name), strict=True):
            assert torch.equal(t, u)
        assert not torch.equal(a.split(name)[0], c.split(name)[0])
        assert set(a.split(name)[1].tolist()) == {0, 1, 2, 3}
    assert 0 <= float(a.train_x.min()) and float(a.train_x.max()) <= 1
    d = load("dataset=synthetic", "dataset.shape=[3,5,7]", "dataset.num_classes=3", "dataset.train_n=100",
             "dataset.test_n=30", "dataset.val_size=20")
    assert d.num_classes == 3 and d.shape == (3, 5, 7) and d.test_x.shape == (30, 3, 5, 7)
    assert (len(d.train_y), len(d.val_y)) == (80, 20) and int(d.train_y.max()) == 2


def test_synthetic_is_learnable():
    """Class means of the train split classify the test split far above chance (0.25)."""
    s = load("dataset=synthetic")
    x, y = s.train_x.flatten(1), s.train_y
    means = torch.stack([x[y == k].mean(0) for k in range(4)])
    pred = torch.cdist(s.test_x.flatten(1), means).argmin(1)
    assert (pred == s.test_y).float().mean() > 0.9


def test_gzip_fixture_roundtrip(tmp_path):
    """The fixture writer's IDX bytes: magic, big-endian dims, payload (an independent check of fixtures)."""
    path = write_idx(tmp_path / "a-idx3-ubyte", np.arange(24, dtype=np.uint8).reshape(2, 3, 4), gzipped=True)
    data = gzip.decompress(path.read_bytes())
    assert data[:4] == b"\x00\x00\x08\x03" and data[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert data[16:] == bytes(range(24))


def test_default_root_is_repo_data(default_root):
    from losslab.config import data_root

    assert data_root(None) == REPO_ROOT / "data"
