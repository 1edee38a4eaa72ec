"""Read a run dir's TensorBoard events back with TensorBoard's own reader, and order tags as its Time Series dashboard
does."""

import math
import re
from functools import cmp_to_key
from pathlib import Path


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def hparams(run_dir: Path) -> dict:
    """The HParam values of the run's own event file."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = read_events(run_dir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in
            start.session_start_info.hparams.items()}


def time_series_groups(tags) -> list[str]:
    """The tag groups of TensorBoard's Time Series dashboard in the order it shows them: its cards sorted by tag
    with `compare_tag_names`, grouped by the part before the first "/" in the order the groups first appear (as
    `groupCardIdWithMetdata` in tensorboard/webapp/metrics/utils.ts does)."""
    groups = [tag.split("/", 1)[0] for tag in sorted(tags, key=cmp_to_key(compare_tag_names))]
    return list(dict.fromkeys(groups))


def compare_tag_names(a: str, b: str) -> int:
    """TensorBoard's `compareTagNames` (tensorboard/webapp/metrics/utils.ts): character codes, except that numbers
    compare by value and a digit or "/" comes before any other character."""
    i = j = 0
    while i < len(a) and j < len(b):
        if is_digit(a[i]) and is_digit(b[j]):
            i_end, j_end = number_end(a, i), number_end(b, j)
            order = sign(number(a[i:i_end]) - number(b[j:j_end]))
            i, j = i_end, j_end
        else:
            order = char_order(a[i], b[j])
            i, j = i + 1, j + 1
        if order:
            return order
    return (i < len(a)) - (j < len(b))


def char_order(x: str, y: str) -> int:
    """Two characters' order outside a number: a break ("/" or a digit) first, two breaks equal."""
    if is_break(x) or is_break(y):
        return is_break(y) - is_break(x)
    return sign(ord(x) - ord(y))


NUMBER = re.compile(r"\d+(\.\d*)?([eE](([+-]|\d)\d*)?)?")  # as consumeNumber reads one: "1e" is a number too


def number_end(text: str, start: int) -> int:
    return NUMBER.match(text, start).end()


def number(text: str) -> float:
    """JavaScript's Number(text): NaN (equal to every number in the comparison) where it is not one."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def is_break(char: str) -> bool:
    return char == "/" or is_digit(char)


def sign(x: float) -> int:
    return (x > 0) - (x < 0)
