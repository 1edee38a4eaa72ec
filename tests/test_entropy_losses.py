"""min_ent and mix_ent against the SPEC formulas and their hand-derived gradients, computed independently in
float64 numpy; reductions to ce and to H + KL; the learnable coefficients and bases; config mistakes."""

import io
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from losslab.errors import ConfigError
from losslab.losses import CrossEntropy, MinEntropy, MixEntropy

LOSSES = {"min_ent": MinEntropy, "mix_ent": MixEntropy}
CONFIG = {"beta1": 0.839, "beta2": 0.308, "base1": 2.02, "base2": 10.73, "base_min": 1.01, "base_max": 100.0}
EPS = 1e-6
CHOICES = ("fixed", "learnable")
LOGGED_KEYS = {"loss/beta1", "loss/beta2", "loss/base1", "loss/base2"}


@contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def make(kind, dtype=torch.float64, **overrides):
    """A loss built in `dtype`, so its configured constants are held exactly in float64."""
    with default_dtype(dtype):
        return LOSSES[kind](**{**CONFIG, **overrides})


def perturb(loss, seed):
    """Move θ and φ (where learnable) to a random point away from their initial values and the clamp bounds."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# ---------------------------------------------------------------- independent numpy reference
def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_effective(loss, cfg=CONFIG):
    """(β, b, s, φ): the effective coefficients and bases from the config and the module's raw θ, φ;
    s = softmax(θ) and φ are None where fixed."""
    raw = {name: p.detach().numpy().astype(np.float64) for name, p in loss.named_parameters()}
    beta, s = np.array([cfg["beta1"], cfg["beta2"]]), None
    if "theta" in raw:
        s = np_softmax(raw["theta"])
        beta = beta.sum() * s
    base, phi = np.array([cfg["base1"], cfg["base2"]]), raw.get("phi")
    if phi is not None:
        base = np.clip(1 + np.logaddexp(0, phi), cfg["base_min"], cfg["base_max"])
    return beta, base, s, phi


def np_terms(kind, z, y):
    """Batch means in nats of CE and of the second term (H or RCE), and their gradients w.r.t. z."""
    n, k = z.shape
    p, onehot = np_softmax(z), np.eye(k)[y]
    log_p = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    ce, d_ce = -log_p[np.arange(n), y].mean(), (p - onehot) / n
    if kind == "min_ent":
        second = -(p * np.log(p + EPS)).sum(-1).mean()
        g = np.log(p + EPS) + p / (p + EPS)  # d/dp_k [p_k ln(p_k + ε)]
    else:
        second = -(p * np.log(onehot + EPS)).sum(-1).mean()
        g = np.log(onehot + EPS)  # d/dp_k [p_k ln(e_{y,k} + ε)]
    # through p = softmax(z): ∂p_k/∂z_j = p_k (δ_kj - p_j)
    d_second = -p * (g - (p * g).sum(-1, keepdims=True)) / n
    return np.array([ce, second]), (d_ce, d_second)


def np_loss_and_gradients(kind, loss, z, y):
    """L, ∂L/∂z, ∂L/∂θ (None if fixed), ∂L/∂φ (None if fixed)."""
    beta, base, s, phi = np_effective(loss)
    terms, (d_ce, d_second) = np_terms(kind, z, y)
    ln_b = np.log(base)
    value = (beta * terms / ln_b).sum()
    d_z = beta[0] / ln_b[0] * d_ce + beta[1] / ln_b[1] * d_second
    d_beta = terms / ln_b
    d_theta = None if s is None else beta * (d_beta - (s * d_beta).sum())
    d_phi = None if phi is None else -beta * terms / (base * ln_b**2) * np_sigmoid(phi)
    return value, d_z, d_theta, d_phi


def torch_loss_and_gradients(loss, z, y):
    zt = torch.tensor(z, requires_grad=True)
    params = dict(loss.named_parameters())
    out = loss(zt, torch.tensor(y))
    grads = torch.autograd.grad(out, [zt, *params.values()])
    named = dict(zip(params, grads[1:]))
    return out, grads[0].numpy(), named.get("theta"), named.get("phi")


# ---------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("bases", CHOICES)
@pytest.mark.parametrize("coeffs", CHOICES)
@pytest.mark.parametrize("kind", LOSSES)
def test_value_and_gradients_match_numpy(kind, coeffs, bases, k):
    rng = np.random.default_rng(k)
    loss = make(kind, coeffs=coeffs, bases=bases)
    perturb(loss, seed=k)
    z, y = rng.normal(size=(7, k)) * 3, rng.integers(0, k, 7)
    value, d_z, d_theta, d_phi = np_loss_and_gradients(kind, loss, z, y)
    out, t_z, t_theta, t_phi = torch_loss_and_gradients(loss, z, y)
    assert out.dtype == torch.float64 and out.ndim == 0
    assert out.item() == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(t_z, d_z, rtol=1e-10, atol=1e-15)
    assert (t_theta is None) == (coeffs == "fixed") and (t_phi is None) == (bases == "fixed")
    if t_theta is not None:
        np.testing.assert_allclose(t_theta.numpy(), d_theta, rtol=1e-10, atol=1e-15)
    if t_phi is not None:
        np.testing.assert_allclose(t_phi.numpy(), d_phi, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("k", [2, 10])
@pytest.mark.parametrize("kind", LOSSES)
def test_float32_matches_numpy(kind, k):
    rng = np.random.default_rng(10 + k)
    loss = make(kind, dtype=torch.float32, coeffs="learnable", bases="learnable")
    z, y = rng.normal(size=(16, k)) * 3, rng.integers(0, k, 16)
    value, d_z, _, _ = np_loss_and_gradients(kind, loss, z, y)
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    out = loss(zt, torch.tensor(y))
    out.backward()
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(zt.grad.numpy(), d_z, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("k", [2, 10])
def test_min_ent_without_entropy_is_cross_entropy(k):
    rng = np.random.default_rng(20 + k)
    z, y = torch.tensor(rng.normal(size=(9, k)) * 3), torch.tensor(rng.integers(0, k, 9))
    z_min, z_ce = z.clone().requires_grad_(), z.clone().requires_grad_()
    min_ent = make("min_ent", beta1=1.0, beta2=0.0, base1=np.e)(z_min, y)
    ce = CrossEntropy()(z_ce, y)
    min_ent.backward()
    ce.backward()
    assert min_ent.item() == pytest.approx(ce.item(), rel=1e-12)
    np.testing.assert_allclose(z_min.grad.numpy(), z_ce.grad.numpy(), rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("base", [np.e, 2.0, 10.73])
def test_mix_ent_reverse_cross_entropy_is_entropy_plus_kl(base):
    rng = np.random.default_rng(30)
    k = 5
    z, y = rng.normal(size=(11, k)) * 3, rng.integers(0, k, 11)
    p, onehot = np_softmax(z), np.eye(k)[y]
    entropy = -(p * np.log(p + EPS)).sum(-1)
    kl = (p * (np.log(p + EPS) - np.log(onehot + EPS))).sum(-1)
    rce = make("mix_ent", beta1=0.0, beta2=1.0, base2=base)(torch.tensor(z), torch.tensor(y))
    assert rce.item() == pytest.approx((entropy + kl).mean() / np.log(base), rel=1e-12)


# ---------------------------------------------------------------- learnable parts
def descend(loss, steps, lr, maximize=False):
    """`steps` SGD steps on the loss parameters over random batches."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(loss.parameters(), lr=lr, maximize=maximize)
    for _ in range(steps):
        z = 3 * torch.randn(32, 10, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        loss(z, y).backward()
        opt.step()


@pytest.mark.parametrize("kind", LOSSES)
def test_learnable_coefficients_stay_positive_and_keep_their_sum(kind):
    loss = make(kind, coeffs="learnable")
    descend(loss, steps=50, lr=10.0)
    beta = loss.beta().detach()
    assert (beta > 0).all()
    assert beta.sum().item() == pytest.approx(CONFIG["beta1"] + CONFIG["beta2"], rel=1e-12)
    assert abs(beta[0].item() - CONFIG["beta1"]) > 0.1  # they did move


@pytest.mark.parametrize("maximize, bound", [(False, "base_max"), (True, "base_min")])
@pytest.mark.parametrize("kind", LOSSES)
def test_learnable_bases_stay_within_bounds_when_pushed(kind, maximize, bound):
    loss = make(kind, bases="learnable")
    descend(loss, steps=20, lr=1e4, maximize=maximize)
    base = loss.base().detach()
    assert ((base >= CONFIG["base_min"]) & (base <= CONFIG["base_max"])).all()
    assert (base == CONFIG[bound]).any()  # the push reached the bound and stopped there
    out = loss(torch.zeros(3, 10, dtype=torch.float64), torch.tensor([0, 1, 2]))
    assert torch.isfinite(out)


@pytest.mark.parametrize("bases", CHOICES)
@pytest.mark.parametrize("coeffs", CHOICES)
@pytest.mark.parametrize("kind", LOSSES)
def test_parameters_exist_only_for_learnable_parts(kind, coeffs, bases):
    loss = make(kind, coeffs=coeffs, bases=bases)
    expected = {name for name, part in (("theta", coeffs), ("phi", bases)) if part == "learnable"}
    assert {name for name, _ in loss.named_parameters()} == expected
    assert (list(loss.parameters()) == []) == (coeffs == bases == "fixed")
    assert loss.param_lr == 0.01


@pytest.mark.parametrize("overrides", [{}, {"base1": 1.01, "base2": 21.5}, {"base1": 30.0, "base2": 100.0}])
@pytest.mark.parametrize("bases", CHOICES)
@pytest.mark.parametrize("coeffs", CHOICES)
@pytest.mark.parametrize("kind", LOSSES)
def test_starts_at_the_configured_values(kind, coeffs, bases, overrides):
    cfg = {**CONFIG, **overrides}
    logged = make(kind, coeffs=coeffs, bases=bases, **overrides).logged()
    expected = {"loss/beta1": cfg["beta1"], "loss/beta2": cfg["beta2"], "loss/base1": cfg["base1"],
                "loss/base2": cfg["base2"]}
    assert {key: value.item() for key, value in logged.items()} == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
def test_large_learnable_base_starts_at_its_value_in_float32(kind):
    loss = make(kind, dtype=torch.float32, bases="learnable", base2=500.0, base_max=1000.0)
    assert loss.logged()["loss/base2"].item() == pytest.approx(500.0, rel=1e-6)


@pytest.mark.parametrize("bases", CHOICES)
@pytest.mark.parametrize("coeffs", CHOICES)
@pytest.mark.parametrize("kind", LOSSES)
def test_logged_reports_the_effective_values(kind, coeffs, bases):
    loss = make(kind, coeffs=coeffs, bases=bases)
    perturb(loss, seed=1)
    beta, base, _, _ = np_effective(loss)
    logged = loss.logged()
    assert set(logged) == LOGGED_KEYS
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in logged.values())
    np.testing.assert_allclose([logged["loss/beta1"].item(), logged["loss/beta2"].item()], beta, rtol=1e-12)
    np.testing.assert_allclose([logged["loss/base1"].item(), logged["loss/base2"].item()], base, rtol=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
def test_state_dict_round_trip_restores_identical_outputs(kind):
    trained = make(kind, coeffs="learnable", bases="learnable")
    descend(trained, steps=5, lr=0.5)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = make(kind, coeffs="learnable", bases="learnable")
    assert not torch.equal(restored(z, y), trained(z, y))
    restored.load_state_dict(torch.load(buffer))
    assert torch.equal(restored(z, y), trained(z, y))
    for key in LOGGED_KEYS:
        assert torch.equal(restored.logged()[key], trained.logged()[key])


@pytest.mark.parametrize("kind", LOSSES)
def test_fixed_values_follow_the_module_to_another_dtype(kind):
    loss = make(kind, dtype=torch.float32).to(torch.float64)
    assert all(value.dtype == torch.float64 for value in loss.logged().values())
    assert set(loss.state_dict()) >= {"beta0", "base0"}
    assert loss(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 2])).dtype == torch.float64


@pytest.mark.parametrize("kind", LOSSES)
def test_interface(kind):
    cls = LOSSES[kind]
    assert not cls.binary_only and cls.head_size(2) == 2 and cls.head_size(26) == 26
    z = torch.tensor([[0.3, 2.0, -1.0], [1.0, 0.0, 0.5]])
    probs = make(kind, dtype=torch.float32).probs(z)
    torch.testing.assert_close(probs, z.softmax(-1))
    assert probs.argmax(-1).tolist() == [1, 0]


# ---------------------------------------------------------------- config mistakes
@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"coeffs": "sometimes"}, "loss.coeffs"),
        ({"bases": "Learnable"}, "loss.bases"),
        ({"beta1": -0.1}, "loss.beta1"),
        ({"beta2": -1.0}, "loss.beta2"),
        ({"beta1": 0.0, "beta2": 0.0}, r"loss.beta1 \+ loss.beta2"),
        ({"beta2": float("nan")}, "loss.beta2"),
        ({"coeffs": "learnable", "beta2": 0.0}, "loss.coeffs=learnable"),
        ({"base_min": 1.0}, "loss.base_min"),
        ({"base_min": 5.0, "base_max": 4.0}, "loss.base_max"),
        ({"bases": "learnable", "base1": 200.0}, "loss.base1"),
        ({"bases": "learnable", "base2": 1.005}, "loss.base2"),
        ({"base1": 1.0}, "loss.base1"),
        ({"base2": 0.5}, "loss.base2"),
        ({"eps": 0.0}, "loss.eps"),
        ({"param_lr": 0.0}, "loss.param_lr"),
        ({"param_lr": -1e-3}, "loss.param_lr"),
    ],
)
@pytest.mark.parametrize("kind", LOSSES)
def test_config_mistakes_name_the_key(kind, overrides, key):
    with pytest.raises(ConfigError, match=key) as info:
        make(kind, **overrides)
    message = str(info.value)
    assert message.startswith(key.replace("\\", "")) and message.endswith(".") and "\n" not in message


def test_fixed_bases_need_not_lie_within_the_learnable_range():
    assert make("min_ent", base1=150.0).logged()["loss/base1"].item() == 150.0
