"""The dual-weight linear model of the entropy-gradient learning rule (binary tasks).

    z = x · (w1 + G1) + b1        (one logit; D = σ(z))

w1 and G1 enter only through their sum, so any gradient step gives both the same update. They are 1 x D
weight matrices (like nn.Linear(D, 1).weight), so trainer.l2 and ‖w‖² treat them as weights and b1 as a bias.
"""

from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.errors import ConfigError


@schema("model", "dual_linear")
@dataclass
class DualLinearConf:
    _target_: str = "losslab.models.DualLinear"
    init: str = "normal"  # zeros would never move: ∂H/∂z = 0 at z = 0
    init_std: float = 0.01


class DualLinear(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], num_outputs: int, init: str = "normal", init_std: float = 0.01):
        super().__init__()
        if num_outputs != 1:
            raise ConfigError(
                f"model=dual_linear has one output (binary tasks) but the loss asks for {num_outputs}; "
                f"use loss=entropy_gradient or loss=bce on mnist_even_odd or mnist_2v3."
            )
        features = prod(in_shape)
        self.w1 = nn.Parameter(torch.zeros(1, features))
        self.G1 = nn.Parameter(torch.zeros(1, features))
        self.b1 = nn.Parameter(torch.zeros(1))
        if init == "normal":
            nn.init.normal_(self.w1, 0.0, init_std)
            nn.init.normal_(self.G1, 0.0, init_std)
        elif init == "default":  # nn.Linear's uniform(-1/sqrt(D), 1/sqrt(D))
            bound = features**-0.5
            nn.init.uniform_(self.w1, -bound, bound)
            nn.init.uniform_(self.G1, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ (self.w1 + self.G1).T + self.b1
