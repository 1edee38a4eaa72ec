"""Read a run dir's TensorBoard events back with TensorBoard's own reader."""

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
