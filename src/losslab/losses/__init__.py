"""Losses: each implements `Loss` (losslab.losses.base): its head size (`head_size(K)`), its value, its
prediction rule (`probs`, argmax), and what the training loop asks of it."""

from losslab.losses.base import Loss, scale_step
from losslab.losses.bce import BinaryCrossEntropy
from losslab.losses.ce import CrossEntropy
from losslab.losses.entropy_gradient import EntropyGradient
from losslab.losses.mbce import MultiBinaryCrossEntropy
from losslab.losses.min_ent import MinEntropy
from losslab.losses.mix_ent import MixEntropy

__all__ = [
    "BinaryCrossEntropy", "CrossEntropy", "EntropyGradient", "Loss", "MinEntropy", "MixEntropy",
    "MultiBinaryCrossEntropy", "scale_step",
]
