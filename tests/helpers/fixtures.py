"""Tiny datasets written in the exact on-disk formats that torchvision's dataset classes read.

Every writer returns a :class:`Written` record with the arrays it wrote (so tests can compare what a
loader returns against what is on disk) and, for CIFAR-10, the md5 of every file (torchvision's
``CIFAR10`` checks them against its class attributes; :func:`patch_cifar10_md5` points those at the
fixture files, which is how the fixture loads through the real class).

Images carry a learnable class signal: a bright square whose position depends on the class, on top of
uniform noise, so a short training run (or a nearest-class-mean classifier) beats chance easily.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EMNIST_LETTERS_FILES = {
    (split, kind): f"emnist-letters-{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for split in ("train", "test")
    for kind in ("images", "labels")
}
MNIST_FILES = {
    (split, kind): f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for split, prefix in (("train", "train"), ("test", "t10k"))
    for kind in ("images", "labels")
}


@dataclass
class Written:
    """What a writer put on disk. Images are uint8 (N, C, H, W) as a loader should return them."""

    train_x: np.ndarray
    train_y: np.ndarray  # int64 labels exactly as stored in the files
    test_x: np.ndarray
    test_y: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)  # file name -> path
    md5: dict[str, str] = field(default_factory=dict)  # file name -> md5 (CIFAR-10)
    stored_train_x: np.ndarray | None = None  # EMNIST: the (N, 28, 28) arrays as stored (transposed)
    stored_test_x: np.ndarray | None = None


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def class_images(
    labels: np.ndarray, shape: tuple[int, int, int], cell: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 images (N, *shape): noise in 0..99 plus a bright (200..255) `cell`-sized square for each class.

    Class c puts its square at cell number c of a row-major grid of cells over the image; the grid must
    have at least as many cells as there are classes.
    """
    c, h, w = shape
    per_row = w // cell
    x = rng.integers(0, 100, size=(len(labels), c, h, w), dtype=np.uint8)
    for i, label in enumerate(labels):
        r, q = divmod(int(label), per_row)
        assert (r + 1) * cell <= h, f"no grid cell for class {label}"
        square = rng.integers(200, 256, size=(c, cell, cell), dtype=np.uint8)
        x[i, :, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = square
    return x


# ---------------------------------------------------------------- CIFAR-10 (python pickles)
def write_cifar10(root: Path, n_per_batch: int = 100, n_test: int = 100, seed: int = 0) -> Written:
    """`root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` as the real python version.

    Each batch is a pickled dict with str keys (the real files are Python 2 pickles whose str keys load
    as str under torchvision's ``encoding="latin1"``): ``data`` uint8 (N, 3072), each row one image in
    CHW order (1024 red, 1024 green, 1024 blue values, row-major), and ``labels`` a list of ints 0..9.
    The meta file holds ``label_names``.

    Pixel (:, 0, 0) is 0 in every image except the first image of ``data_batch_1``, where it is 1: a
    near-constant dimension whose std is below 1/255, for the ``per_pixel`` std clamp.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = Written(*(np.empty(0) for _ in range(4)))
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        y = rng.integers(0, 10, size=n).astype(np.int64)
        x = class_images(y, (3, 32, 32), cell=8, rng=rng)
        x[:, :, 0, 0] = 0
        if i == 0:
            x[0, :, 0, 0] = 1
        batch = {
            "batch_label": f"fixture {name}",
            "labels": [int(v) for v in y],
            "data": x.reshape(n, 3072),
            "filenames": [f"{name}_{j}.png" for j in range(n)],
        }
        path = folder / name
        path.write_bytes(pickle.dumps(batch, protocol=2))
        written.files[name], written.md5[name] = path, md5_of(path)
        xs.append(x)
        ys.append(y)
    meta = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    path = folder / "batches.meta"
    path.write_bytes(pickle.dumps(meta, protocol=2))
    written.files["batches.meta"], written.md5["batches.meta"] = path, md5_of(path)
    written.train_x, written.train_y = np.concatenate(xs[:5]), np.concatenate(ys[:5])
    written.test_x, written.test_y = xs[5], ys[5]
    return written


def patch_cifar10_md5(monkeypatch, md5: dict[str, str]) -> None:
    """Point torchvision's CIFAR10 checksum attributes at fixture files (undone with `monkeypatch`)."""
    from torchvision.datasets import CIFAR10

    train_list = [[f"data_batch_{k}", md5[f"data_batch_{k}"]] for k in range(1, 6)]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", meta)


# ---------------------------------------------------------------- IDX (MNIST, EMNIST)
def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 data: magic 0x0000080<ndim>, big-endian uint32 dims, then the raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gzipped: bool = False) -> Path:
    """Write `array` as IDX to `path` (or to `path.gz`, gzipped); return the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def write_emnist_letters(
    root: Path, n_train: int = 520, n_test: int = 130, seed: int = 0, gzipped: bool = True
) -> Written:
    """`root/EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]`, labels 1..26.

    As in the real EMNIST files, each image is stored transposed (column-major): the file holds
    ``upright[i].T``. The returned ``train_x``/``test_x`` are the upright images (N, 1, 28, 28), i.e.
    what a reader that transposes the stored images back must return; ``stored_*`` are the file arrays.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / "EMNIST" / "raw"
    out = {}
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(1, 27, size=n).astype(np.int64)
        upright = class_images(y - 1, (1, 28, 28), cell=4, rng=rng)
        stored = upright[:, 0].transpose(0, 2, 1)
        files[EMNIST_LETTERS_FILES[split, "images"]] = write_idx(
            raw / EMNIST_LETTERS_FILES[split, "images"], stored, gzipped
        )
        files[EMNIST_LETTERS_FILES[split, "labels"]] = write_idx(
            raw / EMNIST_LETTERS_FILES[split, "labels"], y.astype(np.uint8), gzipped
        )
        out[split] = (upright, y, stored)
    return Written(
        out["train"][0], out["train"][1], out["test"][0], out["test"][1], files=files,
        stored_train_x=out["train"][2], stored_test_x=out["test"][2],
    )


def write_mnist(
    root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0, gzipped: bool = False
) -> Written:
    """`root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`: digits 0..9, images upright."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    out = {}
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, size=n).astype(np.int64)
        x = class_images(y, (1, 28, 28), cell=7, rng=rng)
        images, labels = MNIST_FILES[split, "images"], MNIST_FILES[split, "labels"]
        files[images] = write_idx(raw / images, x[:, 0], gzipped)
        files[labels] = write_idx(raw / labels, y.astype(np.uint8), gzipped)
        out[split] = (x, y)
    return Written(*out["train"], *out["test"], files=files)


@contextlib.contextmanager
def unwritable_dir(folder: Path, size: str | None = None):
    """`folder`, with what it holds, as a dir this process cannot write: bind-mounted read-only onto itself for
    root (whom permissions do not stop), else mode 0555 for everything in it. With `size` (e.g. "64k"), an empty
    writable tmpfs of that size instead: a full disk. A root that may not mount skips, with the reason, except in
    CI (LOSSLAB_CI=1), where it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 and size is None:
        dirs = [folder, *(d for d in folder.rglob("*") if d.is_dir())]
        for d in dirs:
            d.chmod(0o555)
        try:
            yield folder
        finally:
            for d in dirs:
                d.chmod(0o755)
        return
    mounts = ([["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]] if size else
              [["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]])
    for command in mounts:
        mounted = subprocess.run(command, capture_output=True, text=True)
        if mounted.returncode != 0:
            reason = f"cannot mount on {folder} ({' '.join(command)}: {mounted.stderr.strip()})"
            if os.environ.get("LOSSLAB_CI") == "1":
                pytest.fail(f"{reason}; LOSSLAB_CI=1: this test must run", pytrace=False)
            pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
