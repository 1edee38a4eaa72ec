"""Shared pytest fixtures. The real MNIST in the repo's data/ stays the default data root."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import Written, patch_cifar10_md5, write_cifar10, write_emnist_letters


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> tuple[Path, dict[str, Written]]:
    """A session-wide data root with tiny CIFAR-10 (500 train / 100 test) and EMNIST letters
    (520 train / 130 test, gzipped) and what was written: (root, {"cifar10": ..., "emnist_letters": ...})."""
    root = tmp_path_factory.mktemp("fixture_data")
    return root, {"cifar10": write_cifar10(root, n_per_batch=100, n_test=100, seed=0),
                  "emnist_letters": write_emnist_letters(root, n_train=520, n_test=130, seed=1)}


@pytest.fixture
def fixture_root(fixture_data, monkeypatch) -> Path:
    """The root of `fixture_data`, with torchvision's CIFAR10 checksums pointed at its files for this test."""
    root, written = fixture_data
    patch_cifar10_md5(monkeypatch, written["cifar10"].md5)
    return root


@pytest.fixture
def written(fixture_data) -> dict[str, Written]:
    """What `fixture_data` wrote, by source name."""
    return fixture_data[1]
