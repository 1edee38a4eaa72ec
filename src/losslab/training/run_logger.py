"""What a run writes: TensorBoard events, metrics.csv (one row per evaluation) and summary.json.

TensorBoard is imported on first use, so a run that fails its checks never pays for the import.
HParams go into the run's own event file (not a child run) so a sweep opens as one run per job. A run writes its
session start info and no experiment summary: TensorBoard's HParams plugin takes the first experiment summary it
finds as the whole logdir's, with `differs` false for every hparam; without one it gathers the hparams of all runs
and marks those whose values differ, which the dashboard sorts first and shows by default.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from losslab.data.label_noise import as_markdown
from losslab.fileio import atomic_write
from losslab.training import tensorboard_adapter
from losslab.training.event_files import drop_events_after

SPLITS = ("train", "val", "test")
METRICS = ("loss", "acc", "nll", "brier", "ece", "entropy")
COLUMNS = ["step", "epoch", "lr", "weights/sq_norm"] + [f"{s}/{m}" for s in SPLITS for m in METRICS]


GROUPS = ("experiment", "dataset", "model", "loss", "optimizer", "scheduler", "trainer")
CORE_HPARAMS = ("seed", "optimizer.lr", "optimizer.weight_decay", "trainer.l2", "trainer.batch_size", "trainer.epochs")


def hparams_of(cfg: DictConfig, choices: dict[str, str | None], overrides: list[str]) -> dict:
    """HParams with the same key set for every job of a sweep: the run's name, the group choices (`none` for a
    group left unset, as `experiment` usually is), the usual numeric knobs, and every key the command line
    overrides (values that are not scalars become strings)."""
    hp: dict[str, Any] = {"name": str(OmegaConf.select(cfg, "name", default="") or "")}
    hp |= {g: str(choices.get(g) or "none") for g in GROUPS}
    for key in (*CORE_HPARAMS, *(o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o)):
        if key not in hp:
            value = OmegaConf.select(cfg, key, default=None)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value)
            hp[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return hp


class RunLogger:
    def __init__(self, run_dir: Path, cfg: DictConfig, hparams: dict, resume_rows: int | None = None,
                 resume_step: int = 0, loss_columns: tuple[str, ...] = (), label_noise: dict | None = None):
        """`resume_rows`: continue a run whose checkpoint was written after that many metrics.csv rows, at
        `resume_step`; the rows and TensorBoard events the stopped run wrote after it are dropped, so nothing
        appears twice. `loss_columns`: the loss's logged values (loss/beta1, ...), metrics.csv's last columns.
        `label_noise`: the dataset's record of its label noise (losslab.data.label_noise), written as a text entry,
        and a train/clean_acc column."""
        SummaryWriter, hparams_summary, self.Summary = import_tensorboard()
        self.run_dir = run_dir
        self.csv_path = run_dir / "metrics.csv"
        self.columns = [*COLUMNS, *loss_columns]
        if label_noise:
            self.columns.insert(self.columns.index("train/acc") + 1, "train/clean_acc")
        if resume_rows is not None:
            drop_events_after(run_dir, resume_step)
            self.writer = SummaryWriter(log_dir=str(run_dir), max_queue=1000, purge_step=resume_step + 1)
            tensorboard_adapter.hold_event_file_open(self.writer)
            self._truncate_csv(resume_rows)
            self.rows = resume_rows
            return
        # a fresh start over an attempt that left no checkpoint: TensorBoard drops that attempt's events
        earlier = any(run_dir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(log_dir=str(run_dir), max_queue=1000, purge_step=0 if earlier else None)
        tensorboard_adapter.hold_event_file_open(self.writer)
        self.writer.add_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```", 0)
        if label_noise:
            self.writer.add_text("label_noise", as_markdown(label_noise), 0)
        _, session_start, session_end = hparams_summary(hparams, {})
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        write_csv(self.csv_path, [self.columns])
        self.rows = 0

    def _truncate_csv(self, rows: int) -> None:
        """Keep the header and the first `rows` rows (rewritten atomically)."""
        lines = self.csv_path.read_text().splitlines(keepends=True) if self.csv_path.exists() else []
        kept = list(csv.reader(line for line in lines[1:rows + 1] if line.endswith("\n")))
        write_csv(self.csv_path, [self.columns, *kept])

    def scalars(self, values: dict[str, float], step: int) -> None:
        """All `values` at `step` as one event (a sweep logs train/loss and train/acc of every job every step,
        and each event is a record to checksum and write: scripts/bench_events.py compares one event per value)."""
        Summary = self.Summary
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self.writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        """Wait until the events handed over so far are written. TensorBoard's writer writes in a thread per
        run; several such threads at work at once take turns on the GIL, which slows a burst of events from many
        runs (and the training loop beside them), so a group flushes each run's burst before the next's."""
        self.writer.flush()

    def row(self, values: dict[str, float]) -> None:
        append_csv_row(self.csv_path, ["" if values.get(c) is None else values[c] for c in self.columns])
        self.rows += 1

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


def import_tensorboard():
    """torch's SummaryWriter, its hparams summary and TensorBoard's Summary proto; TensorBoard's record writer
    checksums with C code where the installed TensorBoard allows (tensorboard_adapter.checksum_in_c)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    tensorboard_adapter.checksum_in_c()
    return SummaryWriter, hparams, Summary


def append_csv_row(path: Path, values: list) -> None:
    """One write per row, so a crash leaves a row whole or absent."""
    line = io.StringIO()
    csv.writer(line).writerow(values)
    with open(path, "a") as f:
        f.write(line.getvalue())


def write_csv(path: Path, rows: list[list]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    atomic_write(path, write)
