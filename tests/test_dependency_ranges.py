"""pyproject.toml's ranges and constraints/lowest.txt agree: each dependency (build requirement, dependency, extra)
has a lower bound, and the constraints pin it to exactly that bound, so that .ci/lowest-versions installs the lowest
release each range allows. A bound raised in one file and not the other fails here."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement  # pytest's own dependency
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LOWEST = REPO / "constraints" / "lowest.txt"


def ranges(pyproject: str) -> dict[str, Requirement]:
    """Every requirement in pyproject.toml by its canonical name, losslab's own extras left out."""
    project = tomllib.loads(pyproject)
    listed = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    for extra in project["project"].get("optional-dependencies", {}).values():
        listed += extra
    requirements = [Requirement(text) for text in listed]
    return {canonicalize_name(r.name): r for r in requirements if canonicalize_name(r.name) != "losslab"}


def pins(constraints: str) -> dict[str, Version]:
    """The `name==version` lines of a constraints file by canonical name; any other kind of line is an error."""
    pinned = {}
    for line in constraints.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"constraints/lowest.txt: `{line}` is not a `name==version` pin"
        pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds, default=None)


def disagreements(pyproject: str, constraints: str) -> list[str]:
    """What keeps the constraints from being the lowest versions pyproject.toml allows, one sentence each."""
    wanted, pinned = ranges(pyproject), pins(constraints)
    found = []
    for name, requirement in wanted.items():
        bound = lower_bound(requirement)
        if bound is None:
            found.append(f"{requirement} has no lower bound")
        elif name not in pinned:
            found.append(f"{requirement} has no pin (add {requirement.name}=={bound})")
        elif pinned[name] != bound:
            found.append(f"{requirement} is pinned to {pinned[name]}, not to its lower bound {bound}")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            found.append(f"{requirement} does not allow its own lower bound {bound}")
    found += [f"{name}=={version} is pinned but pyproject.toml does not ask for it"
              for name, version in pinned.items() if name not in wanted]
    return found


def test_the_constraints_pin_every_range_to_its_lower_bound():
    assert disagreements(PYPROJECT.read_text(), LOWEST.read_text()) == []


def test_every_dependency_is_pinned():
    assert set(ranges(PYPROJECT.read_text())) == set(pins(LOWEST.read_text()))
    assert {"torch", "torchvision", "hydra-core", "setuptools", "submitit", "pytest"} <= set(pins(LOWEST.read_text()))


def test_a_bound_raised_in_one_file_only_is_found():
    pyproject = """
[build-system]
requires = ["setuptools>=68"]
[project]
dependencies = ["torch>=2.5", "numpy", "hydra-core>=1.3.2,<1.4"]
[project.optional-dependencies]
dev = ["losslab[sweep]", "pytest>=7.4"]
"""
    constraints = "setuptools==68.0\ntorch==2.4.0\nnumpy==1.24.0\nhydra_core==1.3.2  # comment\nruff==0.4.0\n"
    assert disagreements(pyproject, constraints) == [
        "torch>=2.5 is pinned to 2.4.0, not to its lower bound 2.5",
        "numpy has no lower bound",
        "pytest>=7.4 has no pin (add pytest==7.4)",
        "ruff==0.4.0 is pinned but pyproject.toml does not ask for it",
    ]


def test_the_installed_pytest_and_xdist_run_a_group_in_one_worker(tmp_path):
    """CI runs the tests marked `slurm`, which share one cluster, in one xdist group (`--dist loadgroup`): with the
    installed pytest and pytest-xdist, every test of a group must run in one worker (pytest 9 with xdist 3.8 spreads
    them over all workers silently, hence pytest<9)."""
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "pytestmark = pytest.mark.xdist_group('cluster')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_member(i):\n"
        "    with open(f'worker_{i}', 'w') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'])\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"})
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / f"worker_{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"one xdist group ran in workers {sorted(workers)}"
