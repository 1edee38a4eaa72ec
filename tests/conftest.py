"""Shared pytest fixtures. The real MNIST in the repo's data/ stays the default data root.

Tests marked `slurm` run jobs on a Slurm cluster (scripts/slurm/start-test-cluster.sh starts one on this machine):
they are skipped where none answers, and fail instead with LOSSLAB_CI=1 (CI, where the cluster is mandatory).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from commands import REPO
from fixtures import Written, patch_cifar10_md5, write_cifar10, write_emnist_letters

SLURMDBD = REPO / "scripts" / "slurm" / "slurmdbd.sh"
NO_CLUSTER = ("no Slurm cluster answers `sinfo`; start one with scripts/slurm/start-test-cluster.sh "
              "(as root on Debian)")
READY = {"idle", "mixed", "allocated", "completing"}  # sinfo's node states that take jobs (no `*`: responding)


@functools.cache
def slurm_cluster_problem() -> str | None:
    """None where a Slurm cluster answers `sinfo` with a node that takes jobs, else why not. Asked once a session."""
    if shutil.which("sinfo") is None:
        return f"{NO_CLUSTER} (no `sinfo` on PATH)"
    try:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return f"{NO_CLUSTER} (it did not answer within 15 s)"
    if done.returncode != 0:
        return f"{NO_CLUSTER} ({' '.join(done.stderr.split()) or f'exit status {done.returncode}'})"
    nodes = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    if not READY & set(nodes.values()):
        return f"{NO_CLUSTER} (no node takes jobs: {nodes or 'none listed'})"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `slurm` is skipped where no cluster answers; with LOSSLAB_CI=1 it fails instead."""
    if item.get_closest_marker("slurm") is None or (problem := slurm_cluster_problem()) is None:
        return
    if os.environ.get("LOSSLAB_CI") == "1":
        pytest.fail(f"{problem}; LOSSLAB_CI=1: the tests marked slurm must run", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The Slurm cluster the tests marked `slurm` use: up, with a node that takes jobs."""
    problem = slurm_cluster_problem()
    assert problem is None, problem
    yield


def slurmdbd(action: str) -> None:
    done = subprocess.run(["bash", str(SLURMDBD), action], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"`bash {SLURMDBD.relative_to(REPO)} {action}` failed:\n{done.stdout}{done.stderr}"


@pytest.fixture
def no_accounting(slurm_cluster) -> None:
    """The cluster without its accounting daemon for the test (`sacct` fails, as on a cluster whose slurmdbd is
    down); slurmdbd is started again afterwards, and the fixture returns once `sacct` answers. Needs root."""
    slurmdbd("stop")
    try:
        yield
    finally:
        slurmdbd("start")


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
