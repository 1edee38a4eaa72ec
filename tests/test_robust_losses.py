"""focal, gce, sce, mae and confidence_penalty against their formulas written out independently, in DIGITS-digit
decimals rounded to float64: value and hand-derived gradient at ordinary logits and at extreme ones (where p̂_y
rounds to 1 in float32 and float64); torch's gradcheck in float64, of one run's loss and of a stack's; the
reductions to ce and mae; config mistakes."""

import functools
import itertools
from decimal import Decimal, localcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from losslab.errors import ConfigError
from losslab.losses import (
    ConfidencePenalty,
    CrossEntropy,
    Focal,
    GeneralisedCrossEntropy,
    MeanAbsoluteError,
    SymmetricCrossEntropy,
)
from losslab.stacking.steppers import stacked_loss

LOSSES = {"focal": Focal, "gce": GeneralisedCrossEntropy, "sce": SymmetricCrossEntropy, "mae": MeanAbsoluteError,
          "confidence_penalty": ConfidencePenalty}
SETTINGS = [  # (loss, its numbers): each number at its bounds and inside
    ("focal", dict(gamma=0.0)), ("focal", dict(gamma=0.5)), ("focal", dict(gamma=2.0)),
    ("gce", dict(q=0.1)), ("gce", dict(q=0.7)), ("gce", dict(q=1.0)),
    ("sce", dict(alpha=0.1, beta=1.0, log_zero=-4.0)), ("sce", dict(alpha=1.0, beta=0.3, log_zero=-6.0)),
    ("mae", {}),
    ("confidence_penalty", dict(beta=0.1)), ("confidence_penalty", dict(beta=2.0)),
]
DIGITS = 360  # a difference from 1 (mae's |p_y - 1|, gce's 1 - p_y^q) keeps 30 digits down to 1e-330


def setting_id(setting) -> str:
    name, numbers = setting
    return "-".join([name, *(f"{key}={value}" for key, value in numbers.items())])


def held(numbers: dict) -> dict:
    """The numbers as the loss holds them: in float32 buffers (`.double()` keeps their float32 rounding)."""
    return {key: float(torch.tensor(value)) for key, value in numbers.items()}


# ---------------------------------------------------------------- the formulas, one example, in decimals
@functools.cache
def example_reference(name: str, numbers: tuple, z: tuple[float, ...], y: int) -> tuple[Decimal, tuple[Decimal]]:
    """ℓ and ∂ℓ/∂z_k of one example, p = softmax(z) written out, in DIGITS-digit decimals. With
    ∂p_y/∂z_k = p_y·(δ_ky - p_k), a loss of p_y alone has ∂ℓ/∂z_k = p_y·(dℓ/dp_y)·(δ_ky - p_k)."""
    with localcontext(prec=DIGITS):
        return example_formulas(name, {key: Decimal(value) for key, value in numbers}, z, y)


def example_formulas(name: str, c: dict, z: tuple[float, ...], y: int) -> tuple[Decimal, tuple[Decimal]]:
    exps = [Decimal(v).exp() for v in z]
    p = [e / sum(exps) for e in exps]
    delta = [Decimal(int(k == y)) for k in range(len(z))]
    py, u = p[y], sum(pk for k, pk in enumerate(p) if k != y)  # 1 - p_y, also below 10^-DIGITS
    if name == "focal":
        value = -u ** c["gamma"] * py.ln()
        d_py = (c["gamma"] * u ** (c["gamma"] - 1) * py.ln() if c["gamma"] else 0) - u ** c["gamma"] / py
    elif name == "gce":
        value, d_py = (1 - py ** c["q"]) / c["q"], -py ** (c["q"] - 1)
    elif name == "sce":
        reverse = -sum(pk * (0 if k == y else c["log_zero"]) for k, pk in enumerate(p))
        value, d_py = c["alpha"] * -py.ln() + c["beta"] * reverse, -c["alpha"] / py + c["beta"] * c["log_zero"]
    elif name == "mae":
        value, d_py = sum(abs(pk - dk) for pk, dk in zip(p, delta)), Decimal(-2)
    else:  # confidence_penalty: ∂(Σ_j p_j ln p_j)/∂z_k = p_k·(ln p_k + H)
        entropy = -sum(pk * pk.ln() for pk in p)
        value = -py.ln() - c["beta"] * entropy
        return value, tuple(pk - dk + c["beta"] * pk * (pk.ln() + entropy) for pk, dk in zip(p, delta))
    return value, tuple(py * d_py * (dk - pk) for pk, dk in zip(p, delta))


def reference(name: str, numbers: dict, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The batch mean of ℓ and its gradient (N, K), rounded to float64."""
    items = tuple(numbers.items())
    examples = [example_reference(name, items, tuple(row), label) for row, label in zip(z.tolist(), y.tolist())]
    with localcontext(prec=DIGITS):
        value = sum(v for v, _ in examples) / len(examples)
        grad = [[float(g / len(examples)) for g in grads] for _, grads in examples]
    return float(value), np.array(grad)


def value_and_grad(loss, z: np.ndarray, y: np.ndarray, dtype=torch.float64) -> tuple[float, np.ndarray]:
    logits = torch.tensor(z, dtype=dtype, requires_grad=True)
    value = loss.to(dtype)(logits, torch.tensor(y))
    value.backward()
    return value.item(), logits.grad.double().numpy()


# ---------------------------------------------------------------- values and gradients
rng = np.random.default_rng(0)


@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_value_and_gradient_at_ordinary_logits(setting, k):
    name, numbers = setting
    z, y = rng.normal(size=(7, k)) * 3, rng.integers(0, k, 7)
    expected_value, expected_grad = reference(name, held(numbers), z, y)
    value, grad = value_and_grad(LOSSES[name](**numbers), z, y)
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


def extreme_logits(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Every row of 3 logits from {-scale, 0, scale} with every label: confident right and wrong predictions, and
    ties."""
    rows = list(itertools.product((-scale, 0.0, scale), repeat=3))
    return np.array([row for row in rows for _ in range(3)]), np.tile(np.arange(3), len(rows))


TOLERANCE = {torch.float64: dict(rel=1e-10, abs=1e-300), torch.float32: dict(rel=1e-5, abs=1e-37)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("scale", [40.0, 1e3])
@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_value_and_gradient_at_extreme_logits(setting, scale, dtype):
    """Each example alone, to relative precision (below the smallest normal number, absolutely): where p̂_y rounds
    to 1 the right predictions' losses and gradients are like e^-40, and a loss of p̂_y keeps them, taking
    1 - p̂_y = σ(-t) and ln p̂_y = ln σ(t) from the label's log-odds t. confidence_penalty's cross-entropy and
    entropy come from log_softmax, as ce's: there, within 1e-15 of them."""
    name, numbers = setting
    z, y = extreme_logits(scale)
    tolerance = {**TOLERANCE[dtype], **({"abs": 1e-15} if name == "confidence_penalty" else {})}
    for i in range(len(y)):
        example = slice(i, i + 1)
        expected_value, expected_grad = reference(name, held(numbers), z[example], y[example])
        value, grad = value_and_grad(LOSSES[name](**numbers), z[example], y[example], dtype)
        assert value == pytest.approx(expected_value, **tolerance), (z[i], y[i])
        assert grad[0] == pytest.approx(expected_grad[0], **tolerance), (z[i], y[i])


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_gradcheck(setting):
    name, numbers = setting
    loss = LOSSES[name](**numbers).double()
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (6,), generator=gen)
    for scale in (3.0, 40.0):
        z = (scale * torch.randn(6, 4, generator=gen, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(lambda logits: loss(logits, y), (z,))


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_of_a_stack_with_numbers_per_member(name):
    """The stack's loss (M,) of (M, N, K) logits, each member with its own numbers."""
    members = [LOSSES[name](**numbers) for loss_name, numbers in SETTINGS if loss_name == name]
    stack = stacked_loss([SimpleNamespace(loss_fn=member) for member in members]).double()
    gen = torch.Generator().manual_seed(1)
    z = (3 * torch.randn(len(members), 6, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 4, (len(members), 6), generator=gen)
    assert torch.autograd.gradcheck(lambda logits: stack(logits, y), (z,))


# ---------------------------------------------------------------- reductions
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return 3 * torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randint(0, 5, (20,), generator=gen)


@pytest.mark.parametrize("loss, same, factor", [
    (Focal(gamma=0.0), CrossEntropy(), 1.0),
    (ConfidencePenalty(beta=0.0), CrossEntropy(), 1.0),
    (SymmetricCrossEntropy(alpha=1.0, beta=0.0), CrossEntropy(), 1.0),
    (GeneralisedCrossEntropy(q=1.0), MeanAbsoluteError(), 0.5),
], ids=["focal-gamma0-is-ce", "confidence_penalty-beta0-is-ce", "sce-beta0-is-ce", "gce-q1-is-half-mae"])
def test_reductions(loss, same, factor):
    z, y = batch()
    torch.testing.assert_close(loss.double()(z, y), factor * same.double()(z, y), rtol=1e-13, atol=0)


def test_gce_tends_to_ce_as_q_tends_to_0():
    z, y = batch()
    ce = CrossEntropy()(z, y)
    gaps = [(GeneralisedCrossEntropy(q=q).double()(z, y) - ce).abs().item() for q in (1e-2, 1e-4)]
    assert gaps[1] < gaps[0] / 50 and gaps[1] < 1e-3 * ce.item()


# ---------------------------------------------------------------- config mistakes
@pytest.mark.parametrize("cls, numbers, message", [
    (Focal, dict(gamma=-0.5), r"loss.gamma must be >= 0, got -0.5"),
    (GeneralisedCrossEntropy, dict(q=0.0), r"loss.q must be in \(0, 1\] \(q → 0 is cross-entropy: loss=ce\), got 0"),
    (GeneralisedCrossEntropy, dict(q=-0.1), r"loss.q must be in \(0, 1\]"),
    (GeneralisedCrossEntropy, dict(q=1.5), r"loss.q must be in \(0, 1\]"),
    (SymmetricCrossEntropy, dict(alpha=-1.0), r"loss.alpha must be >= 0"),
    (SymmetricCrossEntropy, dict(beta=-1.0), r"loss.beta must be >= 0"),
    (SymmetricCrossEntropy, dict(alpha=0.0, beta=0.0), r"loss.alpha \+ loss.beta must be > 0"),
    (SymmetricCrossEntropy, dict(log_zero=0.0), r"loss.log_zero must be < 0 \(it stands for ln 0\), got 0.0"),
    (ConfidencePenalty, dict(beta=-0.1), r"loss.beta must be >= 0"),
])
def test_config_mistakes_name_the_key(cls, numbers, message):
    with pytest.raises(ConfigError, match=message):
        cls(**numbers)
