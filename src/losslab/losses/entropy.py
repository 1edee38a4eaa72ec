"""The entropy family (min_ent, mix_ent): a base-b cross-entropy plus a second base-b term, with switchable
learnable coefficients and log bases.

    L = β1·CE_{b1} + β2·T_{b2}    (batch mean),   CE_b = -ln p̂_y / ln b,   p̂ = softmax(z)

T is the member's second term (min_ent: entropy of p̂; mix_ent: reverse cross-entropy).

    coeffs=fixed:     β = (β1⁰, β2⁰)
    coeffs=learnable: β = (β1⁰ + β2⁰)·softmax(θ),                  θ⁰ = ln β⁰
    bases=fixed:      b = (b1⁰, b2⁰)
    bases=learnable:  b = clamp(1 + softplus(φ), b_min, b_max),     φ⁰ = softplus⁻¹(b⁰ - 1)

Head: K outputs. Prediction: argmax_k p̂_k; confidences: p̂.
"""

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from losslab.errors import require
from losslab.losses.base import SoftmaxLoss, log_softmax, nll, softmax


@dataclass
class EntropyLossConf:
    """min_ent: beta1*CE_b1 + beta2*H_b2(p);  mix_ent: beta1*CE_b1 + beta2*RCE_b2 (SPEC section 4)."""

    _target_: str = MISSING
    beta1: float = 1.0
    beta2: float = 0.1
    base1: float = 2.718281828459045
    base2: float = 2.718281828459045
    coeffs: str = "fixed"  # fixed | learnable: beta = (beta1 + beta2) * softmax(theta)
    bases: str = "fixed"  # fixed | learnable: b = clamp(1 + softplus(phi), base_min, base_max)
    base_min: float = 1.01
    base_max: float = 100.0
    eps: float = 1e-6
    param_lr: float = 0.01  # the loss parameters' own optimizer param group

# Past this, torch's softplus returns its input; at 40 that is exact to float64 precision (the default, 20,
# is exact only to float32's), and exp(40) still fits in float32.
SOFTPLUS_THRESHOLD = 40.0


def softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x, threshold=SOFTPLUS_THRESHOLD)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    # ln(e^y - 1) = y + ln(1 - e^-y), which neither overflows for large y nor cancels for small y
    return y + torch.log(-torch.expm1(-y))


def learnable_coefficients(theta: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return total * theta.softmax(-1)


def learnable_bases(phi: torch.Tensor, base_min: float, base_max: float) -> torch.Tensor:
    return (1 + softplus(phi)).clamp(base_min, base_max)


def cross_entropy_nats(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-ln p̂_y per sample."""
    return nll(log_softmax(logits), y)



def check_entropy_loss_args(
    beta1: float, beta2: float, base1: float, base2: float, coeffs: str, bases: str,
    base_min: float, base_max: float, eps: float, param_lr: float,
) -> None:
    """Raise ConfigError, one sentence naming the key, on the first value out of range."""
    for key, value in (("coeffs", coeffs), ("bases", bases)):
        require(value in ("fixed", "learnable"), f"loss.{key}={value!r} is not one of fixed, learnable; pick one.")
    require(beta1 >= 0, f"loss.beta1 must be >= 0, got {beta1}.")
    require(beta2 >= 0, f"loss.beta2 must be >= 0, got {beta2}.")
    require(beta1 + beta2 > 0, f"loss.beta1 + loss.beta2 must be > 0, got {beta1} + {beta2}.")
    require(
        coeffs == "fixed" or (beta1 > 0 and beta2 > 0),
        f"loss.coeffs=learnable needs loss.beta1 > 0 and loss.beta2 > 0 (softmax never reaches 0), "
        f"got beta1={beta1}, beta2={beta2}; use coeffs=fixed to switch a term off.",
    )
    require(base_min > 1, f"loss.base_min must be > 1, got {base_min}.")
    require(base_max > base_min, f"loss.base_max must be > loss.base_min ({base_min}), got {base_max}.")
    for key, base in (("base1", base1), ("base2", base2)):
        if bases == "learnable":
            require(
                base_min <= base <= base_max,
                f"loss.{key} must be in [loss.base_min, loss.base_max] = [{base_min}, {base_max}] "
                f"with bases=learnable, got {base}.",
            )
        else:
            require(base > 1, f"loss.{key} must be > 1, got {base}.")
    require(eps > 0, f"loss.eps must be > 0, got {eps}.")
    require(param_lr > 0, f"loss.param_lr must be > 0, got {param_lr}.")


class EntropyLoss(SoftmaxLoss):
    """β1·CE_{b1} + β2·T_{b2}; a subclass gives T in nats per sample as `second_term(probs, y)`."""

    def __init__(
        self,
        beta1: float = 1.0,
        beta2: float = 0.1,
        base1: float = math.e,
        base2: float = math.e,
        coeffs: str = "fixed",
        bases: str = "fixed",
        base_min: float = 1.01,
        base_max: float = 100.0,
        eps: float = 1e-6,
        param_lr: float = 0.01,
    ):
        super().__init__()
        check_entropy_loss_args(beta1, beta2, base1, base2, coeffs, bases, base_min, base_max, eps, param_lr)
        self.base_min, self.base_max, self.eps, self.param_lr = base_min, base_max, eps, param_lr
        self.register_buffer("beta0", torch.tensor([beta1, beta2]))
        self.register_buffer("base0", torch.tensor([base1, base2]))
        self.theta = nn.Parameter(self.beta0.log()) if coeffs == "learnable" else None
        self.phi = nn.Parameter(inverse_softplus(self.base0 - 1)) if bases == "learnable" else None

    @abc.abstractmethod
    def second_term(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def beta(self) -> torch.Tensor:
        """The effective (β1, β2)."""
        return self.beta0 if self.theta is None else learnable_coefficients(self.theta, self.beta0.sum())

    def base(self) -> torch.Tensor:
        """The effective (b1, b2)."""
        return self.base0 if self.phi is None else learnable_bases(self.phi, self.base_min, self.base_max)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        beta, log_base = self.beta().to(logits.dtype), self.base().log().to(logits.dtype)
        first = cross_entropy_nats(logits, y).mean(-1)
        second = self.second_term(softmax(logits), y).mean(-1)
        return beta[..., 0] * first / log_base[..., 0] + beta[..., 1] * second / log_base[..., 1]

    def logged(self) -> dict[str, torch.Tensor]:
        beta, base = self.beta().detach(), self.base().detach()
        return {"loss/beta1": beta[0], "loss/beta2": beta[1], "loss/base1": base[0], "loss/base2": base[1]}
