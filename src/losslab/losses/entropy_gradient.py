"""The entropy-gradient learning rule (binary tasks, with `model=dual_linear`), label-free.

    D = σ(z),  H(D) = -D log2 D - (1 - D) log2(1 - D),   ∂H/∂z = -(1/ln 2) · z · D · (1 - D)

The loss value is the batch-mean entropy H (bits); its gradient w.r.t. z is the hand-written ∂H/∂z / N, so
plain SGD gives w1 and G1 the update -η·mean(∂H/∂z · x) and b1 the update -η·mean(∂H/∂z).

z-constraint: after the tentative step, z is recomputed on the same batch; if max|Δz| > δ_e the whole
step is scaled by δ_e / max|Δz| (exact for the linear model: Δz is linear in the step), with
δ_e = max(δ_min, δ_0 · γ^epoch). The loss returns that factor from `step_scale`; the training loop scales
the step (`losslab.losses.base.scale_step`). The rule uses no label, so chance accuracy is the expected outcome.
Prediction, as bce's: class 1 iff D ≥ 0.5 (z ≥ 0); confidences (1 - D, D).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from losslab.config.registry import schema
from losslab.errors import ConfigError
from losslab.losses.base import Loss, sigmoid_log_probs, sign_class


@schema("loss", "entropy_gradient")
@dataclass
class EntropyGradientConf:
    """Label-free entropy-gradient rule; step scaled so max|Δz| <= max(delta_min, delta0 * gamma^epoch)."""

    _target_: str = "losslab.losses.entropy_gradient.EntropyGradient"
    delta0: float = 0.1
    gamma: float = 0.9
    delta_min: float = 0.01


def entropy_bits(z: torch.Tensor) -> torch.Tensor:
    """H(σ(z)) in bits, computed stably from the logit."""
    d = torch.sigmoid(z)
    return (nn.functional.softplus(-z) * d + nn.functional.softplus(z) * (1 - d)) / math.log(2)


def entropy_gradient(z: torch.Tensor) -> torch.Tensor:
    """∂H/∂z = -(1/ln 2) · z · D · (1 - D)."""
    d = torch.sigmoid(z)
    return -z * d * (1 - d) / math.log(2)


def delta_schedule(epoch: int, delta0: float, gamma: float, delta_min: float) -> float:
    return max(delta_min, delta0 * gamma**epoch)


class EntropyGradient(Loss):
    binary_only = True
    scales_steps = True
    scaled_probs_formula = "(1 - σ(s/T), σ(s/T))"

    def __init__(self, delta0: float = 0.1, gamma: float = 0.9, delta_min: float = 0.01):
        super().__init__()
        if not (delta0 > 0 and delta_min > 0 and 0 < gamma <= 1):
            raise ConfigError(
                f"loss.delta0 and loss.delta_min must be > 0 and loss.gamma in (0, 1], "
                f"got {delta0}, {delta_min}, {gamma}."
            )
        self.delta0, self.gamma, self.delta_min = delta0, gamma, delta_min
        self.register_buffer("stats", torch.zeros(4))  # this epoch: steps, scaled steps, sum of scales, max|Δz|

    @staticmethod
    def head_size(num_classes: int) -> int:
        return 1

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = logits.squeeze(-1)
        value = entropy_bits(z).mean(-1)
        surrogate = (z * entropy_gradient(z).detach()).mean(-1)  # d/dz = ∂H/∂z / N
        return value.detach() + surrogate - surrogate.detach()

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return sigmoid_log_probs(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return sign_class(logits)

    @torch.no_grad()
    def step_scale(self, logits_before: torch.Tensor, logits_after: torch.Tensor, epoch: int) -> torch.Tensor:
        """min(1, δ_e / max|Δz|): the factor that brings max|Δz| on this batch down to at most δ_e."""
        delta = delta_schedule(epoch, self.delta0, self.gamma, self.delta_min)
        max_dz = (logits_after - logits_before).abs().max()
        scale = torch.clamp(delta / max_dz.clamp_min(1e-30), max=1.0)
        self.stats += torch.stack([torch.ones_like(scale), (scale < 1).float(), scale, torch.zeros_like(scale)])
        self.stats[3] = torch.maximum(self.stats[3], max_dz)
        return scale

    def epoch_stats(self, epoch: int) -> dict[str, float]:
        """δ_e, fraction of scaled steps, mean scale and max|Δz| (before scaling) over the epoch; resets."""
        steps, scaled, scale_sum, max_dz = self.stats.tolist()
        self.stats.zero_()
        return {
            "entropy_gradient/delta": delta_schedule(epoch, self.delta0, self.gamma, self.delta_min),
            "entropy_gradient/scaled_fraction": scaled / max(steps, 1),
            "entropy_gradient/mean_scale": scale_sum / max(steps, 1),
            "entropy_gradient/max_dz": max_dz,
        }
