"""Losses: each decides its head size (`head_size(K)`) and its prediction rule (`probs`, argmax)."""

from losslab.losses.bce import BinaryCrossEntropy
from losslab.losses.ce import CrossEntropy
from losslab.losses.mbce import MultiBinaryCrossEntropy
from losslab.losses.min_ent import MinEntropy
from losslab.losses.mix_ent import MixEntropy

__all__ = ["BinaryCrossEntropy", "CrossEntropy", "MinEntropy", "MixEntropy", "MultiBinaryCrossEntropy"]
