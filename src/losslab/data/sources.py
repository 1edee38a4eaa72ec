"""Source datasets read from their real on-disk formats through torchvision's own classes.

Each reader returns a :class:`Source`: uint8 images (N, C, H, W) and int64 labels for train and test.
The arrays are cached once under ``<root>/cache/`` keyed by a hash of the source files (name, size,
mtime) and the reader version, written to a temp file and renamed so concurrent runs never see half a
cache; a cache that fails to load is rebuilt from the source files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import NamedTuple

import torch

from losslab.errors import DataError
from losslab.fileio import atomic_write

log = logging.getLogger(__name__)
READER_VERSION = 1


@dataclass
class Source:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor


def check_idx(path: Path, ndim: int) -> None:
    """Check an IDX file of uint8 data: magic number, number of dimensions, and size against its header."""
    header_len = 4 + 4 * ndim
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_len)
    if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise DataError(
            f"{path} has magic number 0x{header[:4].hex() or '(none)'} but a {ndim}-d uint8 IDX file needs "
            f"0x0000080{ndim}; the file is corrupt or not the right file, replace it with the original."
        )
    if len(header) < header_len:
        raise DataError(f"{path} is truncated inside its header ({size} bytes); replace it with the original.")
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_len + prod(dims)
    if size != expected:
        raise DataError(
            f"{path} is {size} bytes but its header {tuple(dims)} needs {expected}: the file is truncated "
            f"or corrupt; replace it with the original."
        )


def _unpack_gz(raw: Path, names: list[str]) -> None:
    """Unpack `<name>.gz` beside it where the unpacked file is missing or older (MNIST ships gzipped)."""
    for name in names:
        target, packed = raw / name, raw / f"{name}.gz"
        if not packed.exists() or (target.exists() and target.stat().st_mtime_ns >= packed.stat().st_mtime_ns):
            continue

        def unpack(tmp: Path, packed: Path = packed) -> None:
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)

        try:
            atomic_write(target, unpack)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{packed} is not a readable gzip file ({e}); replace it with the original.") from e


def check_labels(y: torch.Tensor, lo: int, hi: int, path: Path) -> None:
    bad = y[(y < lo) | (y > hi)]
    if bad.numel():
        raise DataError(
            f"{path} holds label {int(bad[0])}, outside the range {lo}..{hi} of this dataset; "
            f"the file is corrupt or belongs to another dataset."
        )


def _check_pair(x: torch.Tensor, y: torch.Tensor, images: Path, labels: Path) -> None:
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels; replace both files.")


def missing_files(name: str, folder: Path, files: list[str], how: str) -> DataError:
    return DataError(
        f"{name} is missing {', '.join(files)} in {folder}; {how}, or point dataset.root "
        f"(or $LOSSLAB_DATA_DIR) at a folder that has them."
    )


def download_files(name: str, folder: Path, make: Callable[[], object], how: str) -> None:
    try:
        make()
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError ... when offline
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not download {name} into {folder} ({reason}); {how}.") from e


def read_idx_dataset(name: str, raw: Path, files: list[str], make: Callable, how: str, download: bool,
                      labels: tuple[int, int]) -> tuple:
    """MNIST-style data: unpack .gz files, check the four IDX files (train images, train labels, test images,
    test labels), then read them with the torchvision class `make(train, download)`."""
    _unpack_gz(raw, files)
    missing = [f for f in files if not (raw / f).exists()]
    if missing and not download:
        raise missing_files(name, raw, missing, how + " or set dataset.download=true")
    if missing:
        download_files(name, raw, lambda: make(True, True), how)
    for f in files:
        check_idx(raw / f, 3 if "images" in f else 1)
    datasets = []
    for train, (images, label_file) in ((True, files[:2]), (False, files[2:])):
        ds = make(train, False)
        _check_pair(ds.data, ds.targets, raw / images, raw / label_file)
        check_labels(ds.targets, *labels, raw / label_file)
        datasets.append(ds)
    return tuple(datasets)


class Reader(NamedTuple):
    """How a source is read: `read(root, download)`, and the files (relative to the data root) it reads."""

    read: Callable[[Path, bool], Source]
    files: list[str]


READERS: dict[str, Reader] = {}  # source name -> its reader; each dataset module registers its own


def reader(name: str, files: list[str]):
    """Function decorator: `read(root, download) -> Source` is the reader of source `name`, from `files`."""

    def add(read: Callable[[Path, bool], Source]) -> Callable[[Path, bool], Source]:
        READERS[name] = Reader(read, files)
        return read

    return add


def _fingerprint(root: Path, name: str, files: list[str]) -> str | None:
    """Hash of what produced the cache: reader version and each source file's size and mtime."""
    stats = []
    for rel in files:
        path = root / rel
        if not path.exists():
            return None  # not there (or not unpacked) yet: read the source first, then cache
        st = path.stat()
        stats.append((rel, st.st_size, st.st_mtime_ns))
    blob = json.dumps({"name": name, "version": READER_VERSION, "files": stats})
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _valid(obj: object) -> bool:
    if not isinstance(obj, dict) or set(obj) != {"train_x", "train_y", "test_x", "test_y"}:
        return False
    xs, ys = (obj["train_x"], obj["test_x"]), (obj["train_y"], obj["test_y"])
    return all(
        isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4
        and isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)
        for x, y in zip(xs, ys)
    )


def read_source(name: str, root: Path, download: bool) -> Source:
    """The source arrays of `name`, from the cache when it matches the files, else through torchvision."""
    reader, files = READERS[name]
    if not root.is_dir():
        raise DataError(f"the data root {root} (dataset.root, or $LOSSLAB_DATA_DIR) does not exist; point it at the "
                        f"folder that holds {name}, or create it to have {name} downloaded into it "
                        f"(dataset.download=true).")
    key = _fingerprint(root, name, files)
    cache = root / "cache" / f"{name}-{key}.pt"
    if key is not None and cache.exists():
        try:
            obj = torch.load(cache, weights_only=True, mmap=True)  # pages are read as the splits are gathered
        except Exception as e:  # any unreadable cache is rebuilt, never trusted
            obj = e
        if _valid(obj):
            return Source(**obj)
        log.warning("cache %s is corrupt (%s); rebuilding it from the source files", cache, type(obj).__name__)
    source = reader(root, download)
    key = _fingerprint(root, name, files)
    if key is not None:
        cache = root / "cache" / f"{name}-{key}.pt"
        try:
            atomic_write(cache, lambda tmp: torch.save(source.__dict__, tmp))
        except OSError as e:
            log.warning("could not write the cache %s (%s); going on without it", cache, e)
    return source
