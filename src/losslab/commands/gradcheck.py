"""losslab-gradcheck: hand-derived, autograd and central-difference gradients agree (SPEC section 9), in float64.

Linear model z = x Wᵀ + b (N samples) under ce, bce, mbce, with and without L2 = λ·Σ W² (biases excluded):

    ce:    ∂L/∂z = (p̂ - e_y) / N,           p̂ = softmax(z)
    bce:   ∂L/∂s = (σ(s) - t) / N,           one logit s, t ∈ {0, 1}
    mbce:  ∂L/∂z = (σ(z) - e_y) / (K·N)
    ∂L/∂W = (∂L/∂z)ᵀ x + 2λW,   ∂L/∂b = Σ_n ∂L/∂z_n

is compared with autograd through the losslab loss classes and with central differences. Every loss (ce, bce,
mbce, min_ent and mix_ent with each fixed/learnable combination, focal, gce, sce, mae, confidence_penalty at two
settings of their numbers) is also checked autograd against central differences w.r.t. the logits and the loss
parameters θ, φ. The exit status is 1 when an analytic gradient is
off autograd by more than 1e-10, or autograd off central differences by more than 1e-6 (relative errors).
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from losslab.losses import (
    BinaryCrossEntropy,
    ConfidencePenalty,
    CrossEntropy,
    Focal,
    GeneralisedCrossEntropy,
    MeanAbsoluteError,
    MinEntropy,
    MixEntropy,
    MultiBinaryCrossEntropy,
    SymmetricCrossEntropy,
)

ANALYTIC_TOL = 1e-10
FD_TOL = 1e-6
FD_STEP = 1e-6  # truncation error ~h² ≈ 1e-12, rounding ~1e-16/h ≈ 1e-10, relative to O(0.1) gradients
N, D, K = 8, 5, 4
L2 = 0.05
ENTROPY_LOSS_ARGS = {"beta1": 0.7, "beta2": 0.4, "base1": 2.5, "base2": 8.0}  # bases far from base_min, base_max
NUMBERED_LOSSES = {  # each at two settings of its numbers
    "focal": (Focal, [{"gamma": 0.5}, {"gamma": 2.0}]),
    "gce": (GeneralisedCrossEntropy, [{"q": 0.3}, {"q": 1.0}]),
    "sce": (SymmetricCrossEntropy, [{"alpha": 0.1, "beta": 1.0, "log_zero": -4.0},
                                    {"alpha": 1.0, "beta": 0.5, "log_zero": -6.0}]),
    "mae": (MeanAbsoluteError, [{}]),
    "confidence_penalty": (ConfidencePenalty, [{"beta": 0.1}, {"beta": 2.0}]),
}

LogitGradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_logit_gradient(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (z.softmax(-1) - F.one_hot(y, z.shape[-1]).to(z.dtype)) / len(y)


def bce_logit_gradient(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(s) - t.to(s.dtype).unsqueeze(-1)) / len(t)


def mbce_logit_gradient(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(z) - F.one_hot(y, z.shape[-1]).to(z.dtype)) / (z.shape[-1] * len(y))


ANALYTIC: dict[str, LogitGradient] = {"ce": ce_logit_gradient, "bce": bce_logit_gradient, "mbce": mbce_logit_gradient}
BASELINE_LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropy, "bce": BinaryCrossEntropy, "mbce": MultiBinaryCrossEntropy,
}


def linear_gradients(
    x: torch.Tensor, w: torch.Tensor, dz: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂W, ∂L/∂b) of z = x Wᵀ + b from ∂L/∂z, with the L2 term λ·Σ W² on W."""
    return dz.T @ x + 2 * l2 * w, dz.sum(0)


def central_difference(f: Callable[[], torch.Tensor], x: torch.Tensor, h: float = FD_STEP) -> torch.Tensor:
    """∂f/∂x, perturbing x in place one entry at a time."""
    grad = torch.empty_like(x)
    entries = x.detach().view(-1)
    with torch.no_grad():
        for i in range(entries.numel()):
            x0 = entries[i].item()
            entries[i] = x0 + h
            up = f()
            entries[i] = x0 - h
            down = f()
            entries[i] = x0
            grad.view(-1)[i] = (up - down) / (2 * h)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max(max|a|, max|b|)."""
    scale = max(a.abs().max().item(), b.abs().max().item(), torch.finfo(a.dtype).tiny)
    return (a - b).abs().max().item() / scale


@dataclass
class Row:
    loss: str
    parameter: str
    analytic_vs_autograd: float | None
    analytic_vs_fd: float | None
    autograd_vs_fd: float | None

    @property
    def ok(self) -> bool:
        return (self.analytic_vs_autograd is None or self.analytic_vs_autograd <= ANALYTIC_TOL) and (
            self.autograd_vs_fd is None or self.autograd_vs_fd <= FD_TOL
        )


def compare(loss: str, parameter: str, f: Callable[[], torch.Tensor], x: torch.Tensor,
            analytic: torch.Tensor | None = None) -> Row:
    """Autograd and central differences of f w.r.t. x, and `analytic` against both when given."""
    (autograd,) = torch.autograd.grad(f(), x)
    fd = central_difference(f, x)
    if analytic is None:
        return Row(loss, parameter, None, None, relative_error(autograd, fd))
    return Row(loss, parameter, relative_error(analytic, autograd), relative_error(analytic, fd),
               relative_error(autograd, fd))


def labels(name: str, gen: torch.Generator) -> tuple[int, torch.Tensor]:
    """(head size, targets) for a loss: bce has one output and binary targets."""
    if name == "bce":
        return 1, torch.randint(0, 2, (N,), generator=gen)
    return K, torch.randint(0, K, (N,), generator=gen)


def baseline_rows(name: str, analytic: LogitGradient, gen: torch.Generator) -> list[Row]:
    """Logits, then W and b of the linear model without and with L2, for one of ce, bce, mbce."""
    loss_fn = BASELINE_LOSSES[name]()
    outputs, y = labels(name, gen)
    z = (2 * torch.randn(N, outputs, generator=gen, dtype=torch.float64)).requires_grad_()
    rows = [compare(name, "logits", lambda: loss_fn(z, y), z, analytic(z.detach(), y))]
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = (0.5 * torch.randn(outputs, D, generator=gen, dtype=torch.float64)).requires_grad_()
    b = (0.5 * torch.randn(outputs, generator=gen, dtype=torch.float64)).requires_grad_()
    for l2, label in ((0.0, f"{name} linear"), (L2, f"{name} linear + l2")):
        def objective(l2=l2):
            return loss_fn(x @ w.T + b, y) + l2 * (w**2).sum()

        dw, db = linear_gradients(x, w.detach(), analytic(x @ w.detach().T + b.detach(), y), l2)
        rows += [compare(label, "W", objective, w, dw), compare(label, "b", objective, b, db)]
    return rows


def loss_rows(label: str, loss_fn: nn.Module, gen: torch.Generator) -> list[Row]:
    """Autograd against central differences w.r.t. the logits and each learnable loss parameter."""
    loss_fn = loss_fn.to(torch.float64)
    z = (2 * torch.randn(N, K, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, K, (N,), generator=gen)
    rows = [compare(label, "logits", lambda: loss_fn(z, y), z)]
    for parameter, value in loss_fn.named_parameters():
        rows.append(compare(label, parameter, lambda: loss_fn(z.detach(), y), value))
    return rows


def run(seed: int = 0, analytic: dict[str, LogitGradient] = ANALYTIC) -> list[Row]:
    """Every row of the table; `analytic` maps ce, bce, mbce to their hand-derived ∂L/∂z."""
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only wait on each other
    try:
        rows = []
        for name in BASELINE_LOSSES:
            rows += baseline_rows(name, analytic[name], gen)
        for cls, name in ((MinEntropy, "min_ent"), (MixEntropy, "mix_ent")):
            for coeffs in ("fixed", "learnable"):
                for bases in ("fixed", "learnable"):
                    loss_fn = cls(**ENTROPY_LOSS_ARGS, coeffs=coeffs, bases=bases)
                    rows += loss_rows(f"{name} coeffs={coeffs} bases={bases}", loss_fn, gen)
        for name, (cls, settings) in NUMBERED_LOSSES.items():
            for numbers in settings:
                rows += loss_rows(" ".join([name, *(f"{k}={v}" for k, v in numbers.items())]), cls(**numbers), gen)
        return rows
    finally:
        torch.set_num_threads(threads)


def format_table(rows: list[Row]) -> str:
    header = ("loss", "parameter", "analytic~autograd", "analytic~FD", "autograd~FD", "status")
    cells = [header] + [
        (r.loss, r.parameter, *("-" if e is None else f"{e:.1e}" for e in
                                (r.analytic_vs_autograd, r.analytic_vs_fd, r.autograd_vs_fd)),
         "ok" if r.ok else "FAIL")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="losslab-gradcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    args = parser.parse_args(argv)
    rows = run(args.seed)
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\nmax relative errors; tolerances: analytic~autograd <= {ANALYTIC_TOL:g}, autograd~FD <= {FD_TOL:g}.")
    print(f"{len(failed)} of {len(rows)} rows FAILED." if failed else f"all {len(rows)} rows ok.")
    return 1 if failed else 0
