"""What TensorBoard shows of a sweep and of a single run, read from a real `tensorboard` server's HTTP API."""

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from tensorboard.compat.tensorflow_stub import errors

GRID = ["dataset=synthetic", "trainer.max_steps=2", "trainer.figures=false", "trainer.progress=log"]


@contextmanager
def tensorboard(logdir: Path):
    """A `tensorboard --logdir` server on a free loopback port; yields a function that GETs a path as JSON."""
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0",
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if found := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                break
        else:
            raise AssertionError("tensorboard exited without serving")
        base = f"http://127.0.0.1:{found[1]}"

        def get(path: str, **request) -> dict | list:
            query = "?request=" + urllib.parse.quote(json.dumps(request)) if request else ""
            with urllib.request.urlopen(base + path + query, timeout=60) as response:
                return json.load(response)

        yield get
    finally:
        server.terminate()
        server.wait(timeout=60)


def session_groups(get, n: int) -> list[dict]:
    """The HParams dashboard's rows (name, hparams, metric values) once TensorBoard has read the HParams of all `n`
    runs (it loads the logdir in the background)."""
    deadline = time.monotonic() + 120
    while True:
        groups = get("/data/plugin/hparams/session_groups", startIndex=0, sliceSize=100,
                     allowedStatuses=["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"])
        groups = groups.get("sessionGroups", [])
        if len(groups) == n or time.monotonic() > deadline:
            return groups
        time.sleep(0.5)


def test_the_hparams_dashboard_shows_the_swept_keys_and_runs_are_named_by_them(tmp_path, losslab):
    sweep = tmp_path / "sweep"
    done = losslab.train("-m", *GRID, "optimizer.lr=0.5,0.05", "trainer.l2=0,0.1", f"hydra.sweep.dir={sweep}",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with tensorboard(sweep) as get:
        groups = session_groups(get, 4)
        infos = get("/data/plugin/hparams/experiment", experimentName="")["hparamInfos"]
        runs = get("/data/runs")
    differs = {info["name"]: info.get("differs", False) for info in infos}
    assert {name for name, differ in differs.items() if differ} == {"optimizer.lr", "trainer.l2"}
    assert {"seed", "loss", "model", "trainer.max_steps", "optimizer.weight_decay"} <= set(differs)
    # the dashboard ticks the first five hparams it is sent, after sorting by `differs`
    assert [info["name"] for info in infos[:2]] == ["optimizer.lr", "trainer.l2"]
    assert {(g["hparams"]["optimizer.lr"], g["hparams"]["trainer.l2"]) for g in groups} == {
        (0.5, 0), (0.5, 0.1), (0.05, 0), (0.05, 0.1)}
    assert sorted(runs) == ["0_optimizer.lr=0.5,trainer.l2=0", "1_optimizer.lr=0.5,trainer.l2=0.1",
                            "2_optimizer.lr=0.05,trainer.l2=0", "3_optimizer.lr=0.05,trainer.l2=0.1"]


def test_a_single_run_shows_its_hparams(tmp_path, losslab):
    run_dir = tmp_path / "run"
    done = losslab.train(*GRID, "optimizer.lr=0.3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with tensorboard(run_dir) as get:
        (group,) = session_groups(get, 1)
        infos = get("/data/plugin/hparams/experiment", experimentName="")["hparamInfos"]
    assert {"optimizer.lr", "loss", "model", "seed", "trainer.max_steps"} <= {info["name"] for info in infos}
    assert not any(info.get("differs") for info in infos)
    assert (group["hparams"]["optimizer.lr"], group["hparams"]["model"]) == (0.3, "linear")
    assert (group["hparams"]["name"], group["hparams"]["experiment"]) == ("synthetic-linear-ce", "none")


def test_event_records_carry_tensorboards_own_checksums(tmp_path):
    """The record writer's C checksum equals TensorBoard's pure-Python one, and a run's event file reads back
    through TensorBoard's record reader, which recomputes both checksums of every record."""
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from losslab.training.run_logger import import_tensorboard
    from losslab.training.tensorboard_adapter import masked_crc32c

    SummaryWriter, _, Summary = import_tensorboard()
    assert record_writer.masked_crc32c is masked_crc32c
    generator = random.Random(0)
    for size in (0, 1, 8, 57, 1000):
        data = bytes(generator.randrange(256) for _ in range(size))
        assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)
    writer = SummaryWriter(log_dir=str(tmp_path))
    for step in range(50):
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="train/loss", simple_value=step / 7)]), step)
    writer.close()
    [events] = tmp_path.glob("events.out.tfevents.*")
    reader, records = pywrap_tensorflow.PyRecordReader_New(str(events)), 0
    with pytest.raises(errors.OutOfRangeError):  # the end of the file; a bad checksum raises DataLossError
        while True:
            reader.GetNext()
            records += 1
    assert records == 51  # the file version record and the 50 summaries


def open_paths() -> set[str]:
    """The files this process holds open (its /proc/self/fd links)."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed once listed
            pass
    return paths


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="lists open files from /proc (Linux)")
def test_a_run_logger_holds_its_event_file_open_and_every_event_reads_back_in_order(tmp_path):
    """A run's events go through one file handle held open from the first event to `close` (TensorBoard's GFile
    stand-in opens the file again for every event); the events written before it was opened (the file version, a
    resumed run's purge) and after it come back in order through TensorBoard's own reader."""
    from helpers.tb_events import read_events
    from omegaconf import OmegaConf

    from losslab.training.run_logger import RunLogger

    cfg = OmegaConf.create({"seed": 0})
    first = RunLogger(tmp_path, cfg, {"seed": 0})
    for step in range(1, 31):
        first.scalars({"train/loss": 1 / step, "train/acc": step / 30}, step)
    first.flush()
    [events] = tmp_path.glob("events.out.tfevents.*")
    assert str(events.resolve()) in open_paths()
    first.close()
    assert str(events.resolve()) not in open_paths()
    resumed = RunLogger(tmp_path, cfg, {"seed": 0}, resume_rows=0, resume_step=20)  # drops steps 21 to 30
    for step in range(21, 41):
        resumed.scalars({"train/loss": 2 / step, "train/acc": step / 40}, step)
    resumed.close()
    loss = [(event.step, event.value) for event in read_events(tmp_path).Scalars("train/loss")]
    expected = [(step, 1 / step) for step in range(1, 21)] + [(step, 2 / step) for step in range(21, 41)]
    assert [step for step, _ in loss] == [step for step, _ in expected]
    assert [value for _, value in loss] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_the_installed_tensorboard_has_what_the_adapter_reaches_into(tmp_path):
    """tensorboard_adapter's shortcuts find, in the installed TensorBoard, the record writer, the GFile it writes
    through, the event file's name and the checksum function the record writer calls by its module's name; a
    release that renames or replaces any of them fails here (runs then take the public path)."""
    import google_crc32c
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.compat.tensorflow_stub.io.gfile import GFile
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter

    from losslab.training import tensorboard_adapter as adapter

    module, name = adapter.CHECKSUM
    assert module == record_writer.__name__ and name in record_writer.RecordWriter.write.__code__.co_names
    assert getattr(record_writer, name) in (pywrap_tensorflow.masked_crc32c, adapter.masked_crc32c)
    assert google_crc32c.implementation == "c", "google-crc32c is installed without its C extension"
    writer = SummaryWriter(log_dir=str(tmp_path))
    event_writer = adapter._walk(writer, adapter.EVENT_WRITER)
    records = adapter._walk(event_writer, adapter.RECORD_WRITER)
    assert isinstance(records, record_writer.RecordWriter)
    assert isinstance(getattr(records, adapter.RECORD_FILE), GFile)
    assert Path(getattr(event_writer, adapter.FILE_NAME)).parent == tmp_path
    assert adapter.hold_event_file_open(writer) and adapter.checksum_in_c()
    assert getattr(record_writer, name) is adapter.masked_crc32c
    writer.close()


def records_with_valid_checksums(events: Path) -> int:
    """The records of an event file, each read by TensorBoard's record reader, which recomputes both checksums
    with its own CRC-32C and raises DataLossError where one differs."""
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    reader, records = pywrap_tensorflow.PyRecordReader_New(str(events)), 0
    with pytest.raises(errors.OutOfRangeError):  # the end of the file
        while True:
            reader.GetNext()
            records += 1
    return records


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="lists open files from /proc (Linux)")
@pytest.mark.parametrize("path", ["adapter", "attributes renamed", "adapter off"])
def test_a_run_and_its_resume_read_back_with_valid_checksums_with_the_adapter_and_without(tmp_path, monkeypatch,
                                                                                           path):
    """With the adapter's shortcuts, and with TensorBoard's public path where the attributes they use are missing
    (as if a release renamed them) or they are turned off, a run and its resume (which purges the steps after its
    checkpoint) read back whole and in order through EventAccumulator, every record's checksums are valid, and a
    raw reader of the files sees each step once (the stopped run's file loses what it wrote after the checkpoint)."""
    from helpers.tb_events import read_events
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    from losslab.training import tensorboard_adapter as adapter
    from losslab.training.run_logger import RunLogger

    monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)  # TensorBoard's own
    monkeypatch.setattr(adapter, "_replaced", {})  # and the adapter's record of it, both restored after the test
    if path == "attributes renamed":
        monkeypatch.setattr(adapter, "RECORD_WRITER", ("_async_writer", "_renamed_writer"))
        monkeypatch.setattr(adapter, "CHECKSUM", (adapter.CHECKSUM[0], "renamed_masked_crc32c"))
    adapter.use(path != "adapter off")
    cfg = OmegaConf.create({"seed": 0})
    try:
        first = RunLogger(tmp_path, cfg, {"seed": 0})
        for step in range(1, 31):
            first.scalars({"train/loss": 1 / step, "train/acc": step / 30}, step)
        first.flush()
        [events] = tmp_path.glob("events.out.tfevents.*")
        assert (str(events.resolve()) in open_paths()) == (path == "adapter")
        assert (record_writer.masked_crc32c is adapter.masked_crc32c) == (path == "adapter")
        first.close()
        resumed = RunLogger(tmp_path, cfg, {"seed": 0}, resume_rows=0, resume_step=20)  # drops steps 21 to 30
        for step in range(21, 41):
            resumed.scalars({"train/loss": 2 / step, "train/acc": step / 40}, step)
        resumed.close()
    finally:
        adapter.use(True)
    first_file, resumed_file = sorted(tmp_path.glob("events.out.tfevents.*"),  # by the writer's number
                                     key=lambda f: int(f.name.rsplit(".", 1)[1]))
    # the file version, the config text, the hparams' session start and end, and the 20 steps before the resume
    # (the stopped run's steps 21 to 30 dropped from its file); then the file version, the purge (file version and
    # session start at step 21) and 20 steps
    assert (records_with_valid_checksums(first_file), records_with_valid_checksums(resumed_file)) == (24, 23)
    raw_steps = [event.step for events_file in (first_file, resumed_file)  # as a raw reader sees them
                 for event in EventFileLoader(str(events_file)).Load()
                 if any(value.tag == "train/loss" for value in event.summary.value)]
    assert raw_steps == list(range(1, 41))
    events = read_events(tmp_path)
    for tag, first_values, resumed_values in (("train/loss", lambda s: 1 / s, lambda s: 2 / s),
                                              ("train/acc", lambda s: s / 30, lambda s: s / 40)):
        read = [(event.step, event.value) for event in events.Scalars(tag)]
        expected = [(s, first_values(s)) for s in range(1, 21)] + [(s, resumed_values(s)) for s in range(21, 41)]
        assert [step for step, _ in read] == [step for step, _ in expected]
        assert [value for _, value in read] == pytest.approx([value for _, value in expected], rel=1e-6)
