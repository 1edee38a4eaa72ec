"""The job dirs of a sweep dir: `<job number>_<what the job's sweep varies>`, e.g. `3_optimizer.lr=0.01,trainer.l2=0.1`.

conf/train.yaml's `hydra.sweep.subdir` names them with `job_dir_name` from Hydra's `hydra.job.override_dirname`,
which `losslab.sweeps.sweep.name_job_dirs` restricts to the keys the sweep varies. The job number comes first, so the
dirs sort in job order and stay unique, and a relaunch of the same command finds the same dirs. Sweep dirs written
before the names were added hold plain `<job number>` dirs; both are job dirs.
"""

from __future__ import annotations

import re
from pathlib import Path

JOB_DIR = re.compile(r"(\d+)(_.*)?")
UNSAFE = re.compile(r"[^\w.,=+-]", re.ASCII)  # a path separator, quotes, spaces, brackets of list values, ...
MAX_NAME = 120  # characters of the name after the job number; a TensorBoard legend stays readable


def job_dir_name(num: int, override_dirname: str) -> str:
    """`<num>_<override_dirname>` with any character that is not safe in a file name replaced by `_`, cut to
    MAX_NAME characters; just `<num>` when the sweep varies nothing."""
    name = UNSAFE.sub("_", str(override_dirname))[:MAX_NAME]
    return f"{num}_{name}" if name else str(num)


def job_number(job_dir: Path) -> int | None:
    """The job number of a job dir, None for anything else in a sweep dir (report.md, a .submitit dir, ...)."""
    match = JOB_DIR.fullmatch(job_dir.name)
    return int(match[1]) if match and job_dir.is_dir() else None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep dir's job dirs in job order."""
    found = [(number, d) for d in Path(sweep_dir).iterdir() if (number := job_number(d)) is not None]
    return [d for _, d in sorted(found, key=lambda pair: (pair[0], pair[1].name))]


def job_dir(sweep_dir: Path, num: int) -> Path:
    """The dir of job `num` of a sweep dir."""
    matches = [d for d in job_dirs(sweep_dir) if job_number(d) == num]
    if len(matches) != 1:
        raise FileNotFoundError(f"{sweep_dir} has {len(matches)} dirs of job {num}: {[d.name for d in matches]}")
    return matches[0]
