"""Shared pytest fixtures, and the two tiers. The real MNIST in the repo's data/ stays the default data root.

A test that starts a process or trains is marked `slow`, here, from what it uses (`pytest -m "not slow"` runs the
rest, the fast tier): a fixture of SLOW_FIXTURES (`losslab` starts losslab's commands, `forks` runs code in a child
process, `workers` lets losslab start worker processes, `trains` trains in this process, `slurm_cluster` runs jobs on
a cluster), or, in its own code or the test code it calls, subprocess, multiprocessing, pty or submitit. Tests marked
`slurm` are slow too.

Tests marked `slurm` run jobs on a Slurm cluster (scripts/slurm/start-test-cluster.sh starts one on this machine):
they are skipped where none answers, and fail instead with LOSSLAB_CI=1 (CI, where the cluster is mandatory). They
share that one cluster, so under pytest-xdist they run one after another in one worker (`--dist loadgroup`).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from helpers.commands import REPO, Commands
from helpers.fixtures import Written, patch_cifar10_md5, write_cifar10, write_emnist_letters

TESTS = Path(__file__).resolve().parent
SLOW_FIXTURES = {"losslab", "forks", "workers", "trains", "slurm_cluster"}
PROCESS_MODULES = {"subprocess", "multiprocessing", "pty", "submitit"}  # submitit: its executors start them

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


def starts_processes(function, seen: set) -> bool:
    """Whether `function`, a function of these tests, or the tests' own functions, classes and fixtures it names
    (followed to the end), names something of PROCESS_MODULES."""
    function = inspect.unwrap(function)  # a fixture's or a context manager's own function
    if (not isinstance(function, types.FunctionType) or function in seen
            or not Path(function.__code__.co_filename).resolve().is_relative_to(TESTS)):
        return False
    seen.add(function)
    codes = [function.__code__]
    for code in codes:  # the function's own code and that of the functions and lambdas defined inside it
        codes += [const for const in code.co_consts if isinstance(const, types.CodeType)]
        for name in code.co_names:
            value = function.__globals__.get(name)
            owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.partition(".")[0] in PROCESS_MODULES:
                return True
            named = [getattr(v, "__func__", v) for v in vars(value).values()] if isinstance(value, type) else [value]
            if any(starts_processes(v, seen) for v in named):
                return True
    return False


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks `slow` each test that starts a process or trains (see the module's docstring); a Slurm test also joins
    the one xdist group that runs them all in one worker."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = vars(item.module) if getattr(item, "module", None) else {}
        code = [getattr(item, "function", None), *(module.get(name) for name in fixtures)]  # and its module's fixtures
        seen: set = set()
        if (SLOW_FIXTURES & fixtures or item.get_closest_marker("slurm")
                or any(starts_processes(function, seen) for function in code if function is not None)):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def losslab() -> Commands:
    """losslab's commands in fresh processes, as a user runs them (tests/helpers/commands.py)."""
    return Commands()


@pytest.fixture(scope="session")
def forks() -> multiprocessing.context.BaseContext:
    """multiprocessing's fork context: code run in a child process (one to kill, or one that holds a lock)."""
    return multiprocessing.get_context("fork")


@pytest.fixture(scope="session")
def workers() -> int:
    """How many worker processes the code under test may start (a sweep's figure pool)."""
    return 2


@pytest.fixture(scope="session")
def trains():
    """losslab.training.loop.fit, for a test whose time goes to training: epochs on real data, a model trained until
    it has learnt something, or VGG-5, whose one batch on the CPU costs as much. A few steps of a small model on
    small data are not such training: a fast test calls `fit` itself."""
    from losslab.training.loop import fit

    return fit


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
