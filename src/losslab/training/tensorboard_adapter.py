"""The one module that reaches into TensorBoard's internals, and why: writing events without TensorFlow installed.

torch's SummaryWriter writes through TensorBoard's stand-in for TensorFlow, which opens the event file again for
every record it appends and computes every record's two CRC-32C checksums in pure Python. TensorBoard has no
public setting for either, and a stacked sweep writes one event per job per step (scripts/bench_events.py
measures the two paths side by side). So, where the installed TensorBoard is built as this module expects:

- `hold_event_file_open` gives a writer's record writer (`file_writer.event_writer._async_writer._writer`) the
  event file opened once, to append, unbuffered: each record is still one write(), and TensorBoard's thread, queue
  and record format are unchanged;
- `checksum_in_c` gives TensorBoard's record writer (`record_writer.masked_crc32c`) google-crc32c's C CRC-32C:
  the same checksums, which TensorBoard's reader verifies with its own.

Where it is not (a release that renamed or replaced what they use, a remote log dir, google-crc32c without its C
extension) they change nothing and return False, and events go through SummaryWriter's public path. `use(False)`
turns both off. tests/test_tensorboard.py fails when the installed TensorBoard no longer has what they use.
"""

from __future__ import annotations

import importlib

try:
    import google_crc32c
except ImportError:  # checksum_in_c then leaves TensorBoard's own
    google_crc32c = None

# Where the shortcuts reach, from a SummaryWriter: its event writer, from that the record writer, and from the
# record writer the file it writes to, a GFile (a tensorflow_stub GFile).
EVENT_WRITER = ("file_writer", "event_writer")
RECORD_WRITER = ("_async_writer", "_writer")
RECORD_FILE = "_writer"
FILE_NAME = "_file_name"  # the event writer's path
# The record writer's checksum function: the module and the name it calls it by.
CHECKSUM = ("tensorboard.summary.writer.record_writer", "masked_crc32c")

_enabled = True
_replaced: dict = {}  # the checksum function replaced: module, name and TensorBoard's own function


def use(enabled: bool) -> None:
    """Turn the shortcuts on or off for writers made from now on (off: TensorBoard's own checksum function again)."""
    global _enabled
    _enabled = enabled
    if not enabled and _replaced:
        setattr(_replaced["module"], _replaced["name"], _replaced["original"])
        _replaced.clear()


def _walk(obj, names: tuple[str, ...]):
    for name in names:
        obj = getattr(obj, name, None)
    return obj


def hold_event_file_open(writer) -> bool:
    """Have `writer` (a SummaryWriter) write its event file through one file handle held open until it closes.
    False, and `writer` unchanged, where its record writer is not the one this module knows or writes elsewhere
    than to a local file."""
    from tensorboard.compat.tensorflow_stub.io.gfile import GFile

    event_writer = _walk(writer, EVENT_WRITER)
    record_writer = _walk(event_writer, RECORD_WRITER)
    file_name = getattr(event_writer, FILE_NAME, None)
    if not (_enabled and isinstance(getattr(record_writer, RECORD_FILE, None), GFile) and isinstance(file_name, str)
            and "://" not in file_name and callable(getattr(event_writer, "flush", None))):
        return False
    event_writer.flush()  # what was queued goes through the GFile first: its first write created the file
    setattr(record_writer, RECORD_FILE, open(file_name, "ab", buffering=0))
    return True


def checksum_in_c() -> bool:
    """Give TensorBoard's record writer google-crc32c's C CRC-32C in place of its pure-Python one. False where
    the record writer's checksum function is not TensorBoard's pure-Python one or google-crc32c has no C code."""
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    if not _enabled:
        return False
    module_name, name = CHECKSUM
    module = importlib.import_module(module_name)
    current = getattr(module, name, None)
    if current is masked_crc32c:
        return True
    if current is not pywrap_tensorflow.masked_crc32c or getattr(google_crc32c, "implementation", None) != "c":
        return False  # a function this module does not know, or a pure-Python CRC-32C no faster than TensorBoard's
    _replaced.update(module=module, name=name, original=current)
    setattr(module, name, masked_crc32c)
    return True


def masked_crc32c(data: bytes) -> int:
    """A TFRecord's masked CRC-32C: the CRC-32C rotated right by 15 bits, plus 0xa282ead8, mod 2³²."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
