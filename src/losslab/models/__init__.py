"""Models take `in_shape` (C, H, W) and `num_outputs` from the dataset and the loss, never from the user. Each model
module holds its config schema (`@schema("model", <option>)`) beside its class; `losslab.models.<Class>` finds the
class in whichever module holds it.

May import: losslab.config, losslab.records and the bottom layer; not another component package."""

from losslab.config.registry import find_component


def __getattr__(name: str):
    return find_component(__name__, name)
