"""Models take `in_shape` (C, H, W) and `num_outputs` from the dataset and the loss, never from the user."""

from losslab.models.dual_linear import DualLinear
from losslab.models.fnn import FNN
from losslab.models.lenet import LeNet
from losslab.models.linear import Linear
from losslab.models.vgg5 import VGG5

__all__ = ["DualLinear", "FNN", "LeNet", "Linear", "VGG5"]
