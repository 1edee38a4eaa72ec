"""Losses: each implements `Loss` (losslab.losses.base): its head size (`head_size(K)`), its value, its
log-probabilities (`log_probs`) and prediction rule (`predict`), and what the training loop asks of it. Each loss
module holds its config schema (`@schema("loss", <option>)`) beside its class; `losslab.losses.<Class>` finds the
class in whichever module holds it.

May import: losslab.config, losslab.records and the bottom layer; not another component package."""

from losslab.config.registry import find_component


def __getattr__(name: str):
    return find_component(__name__, name)
