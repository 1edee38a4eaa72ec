"""Sweep dirs written by hand, as losslab-train leaves them, for the report's tests."""

from __future__ import annotations

import json
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_job(sweep: Path, job: int, overrides: list[str], summary: dict | None = None,
              metrics_csv: str | None = None, name: str = "") -> Path:
    """Job `job`'s dir, named `<job>_<name>` as losslab-train names it (`<job>` alone, as before names, without)."""
    folder = sweep / (f"{job}_{name}" if name else str(job))
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if metrics_csv is not None:
        (folder / "metrics.csv").write_text(metrics_csv)
    return folder
