"""A resumed run's TensorBoard event files: the events a stopped or crashed run wrote after its checkpoint are
dropped from its files, since the resumed run writes those steps again.

TensorBoard itself hides them (the resumed writer's `purge_step`), but a raw reader of the files (TensorBoard's
EventFileLoader, tbparse, a notebook) would read those steps twice. Uses TensorBoard's public record reader and
writer; each file is rewritten atomically, and only when it holds such events.
"""

from __future__ import annotations

from pathlib import Path

from losslab.fileio import atomic_write


def drop_events_after(run_dir: Path, step: int) -> int:
    """Rewrite each event file in `run_dir` without its events after `step`; returns how many were dropped. A
    record cut short by a crash, at a file's end, is dropped with them."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    dropped = 0
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [record for record in records if Event.FromString(record).step <= step]
        if len(kept) < len(records) or path.stat().st_size > records_size(records):
            dropped += len(records) - len(kept)
            atomic_write(path, lambda tmp, kept=kept: write_records(tmp, kept))
    return dropped


def records_size(records: list[bytes]) -> int:
    """The bytes `records` take in a TFRecord file: each a length, its checksum, the data and its checksum."""
    return sum(8 + 4 + len(record) + 4 for record in records)


def write_records(path: Path, records: list[bytes]) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for record in records:
            writer.write(record)
