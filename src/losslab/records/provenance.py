"""Where a result comes from: the versions it ran with, the command, the working dir and the git commit."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def versions() -> dict[str, str]:
    """torch's own version string (it names the build, e.g. +cu130); torchvision's installed release, read
    from its metadata, since importing it costs a quarter of a second that a run reading cached data saves."""
    import torch

    import losslab

    return {
        "losslab": losslab.__version__,
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "python": platform.python_version(),
    }


@functools.cache
def provenance() -> dict:
    """Where a result comes from: the full command line, the working dir, and, when losslab runs from a git
    checkout, its commit and whether the checkout had changes not committed (`dirty`)."""
    found = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cwd": os.getcwd()}
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / ".git").exists():
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()

        try:
            found["git"] = {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
        except (OSError, subprocess.SubprocessError):
            found["git"] = None  # git missing or the checkout unreadable
    return found

