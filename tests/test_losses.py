"""ce, bce, mbce against the SPEC formulas computed independently in float64 numpy; the `Loss` interface every
configured loss implements; the entropy-gradient rule's step scale on the dual-weight linear model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import get_class

from losslab.commands.cli import compose
from losslab.config import CONF_DIR
from losslab.errors import ConfigError
from losslab.losses import BinaryCrossEntropy, CrossEntropy, EntropyGradient, Loss, MultiBinaryCrossEntropy, scale_step
from losslab.losses.base import log_softmax, mean_cross_entropy, mean_nll
from losslab.models import DualLinear
from losslab.stacking.steppers import stacked_loss

rng = np.random.default_rng(0)


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def value_and_grad(loss, z, y):
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = loss(zt, torch.tensor(y))
    out.backward()
    return out.item(), zt.grad.numpy()


@pytest.mark.parametrize("k", [2, 10])
def test_ce_value_and_gradient(k):
    z, y = rng.normal(size=(7, k)) * 3, rng.integers(0, k, 7)
    p = np_softmax(z)
    expected = -np.log(p[np.arange(7), y]).mean()
    value, grad = value_and_grad(CrossEntropy(), z, y)
    assert value == pytest.approx(expected, rel=1e-12)
    onehot = np.eye(k)[y]
    np.testing.assert_allclose(grad, (p - onehot) / 7, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("k", [2, 10])
def test_ce_with_label_smoothing_value_and_gradient(eps, k):
    z, y = rng.normal(size=(7, k)) * 3, rng.integers(0, k, 7)
    eps = float(torch.tensor(eps))  # the loss holds ε in a float32 buffer
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = ((1 - eps) * -log_p[np.arange(7), y] + eps * (1 / k) * -log_p.sum(-1)).mean()
    value, grad = value_and_grad(CrossEntropy(label_smoothing=eps).double(), z, y)
    assert value == pytest.approx(expected, rel=1e-12)
    target = (1 - eps) * np.eye(k)[y] + eps / k  # the smoothed target: ∂L/∂z = (p̂ - target) / N
    np.testing.assert_allclose(grad, (np_softmax(z) - target) / 7, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_label_smoothing_out_of_range_is_refused(eps):
    with pytest.raises(ConfigError, match=r"loss.label_smoothing must be in \[0, 1\)"):
        CrossEntropy(label_smoothing=eps)


def test_bce_value_and_gradient_single_logit():
    s, t = rng.normal(size=(9, 1)) * 3, rng.integers(0, 2, 9)
    sig = np_sigmoid(s[:, 0])
    expected = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).mean()
    value, grad = value_and_grad(BinaryCrossEntropy(), s, t)
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad[:, 0], (sig - t) / 9, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("k", [2, 10])
def test_mbce_value_and_gradient(k):
    z, y = rng.normal(size=(6, k)) * 3, rng.integers(0, k, 6)
    e, sig = np.eye(k)[y], np_sigmoid(z)
    expected = (-(1 / k) * (e * np.log(sig) + (1 - e) * np.log(1 - sig)).sum(-1)).mean()
    value, grad = value_and_grad(MultiBinaryCrossEntropy(), z, y)
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, (sig - e) / (k * 6), rtol=1e-10, atol=1e-14)


def test_heads_and_prediction_rules():
    assert CrossEntropy.head_size(10) == 10 and MultiBinaryCrossEntropy.head_size(10) == 10
    assert BinaryCrossEntropy.head_size(2) == 1 and BinaryCrossEntropy.binary_only
    s = torch.tensor([[-2.0], [0.5]])
    np.testing.assert_allclose(BinaryCrossEntropy().probs(s)[:, 1], np_sigmoid(np.array([-2.0, 0.5])), rtol=1e-6)
    assert BinaryCrossEntropy().probs(s).argmax(-1).tolist() == [0, 1]
    # class 1 iff σ(s) ≥ 0.5 (the course's rule): at s = 0, and where float32 rounds σ(±1e-8) to 0.5
    for single_logit in (BinaryCrossEntropy(), EntropyGradient()):
        assert single_logit.predict(torch.tensor([[0.0], [1e-8], [-1e-8], [-2.0]])).tolist() == [1, 1, 0, 0]
    z = torch.tensor([[1.0, 3.0, -1.0]])
    p = MultiBinaryCrossEntropy().probs(z)
    np.testing.assert_allclose(p[0], np_sigmoid(z[0].numpy()) / np_sigmoid(z[0].numpy()).sum(), rtol=1e-6)
    assert p.argmax(-1).item() == 1


# ---------------------------------------------------------------- the Loss interface
LOSS_NAMES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))
BINARY_ONLY = {"bce", "entropy_gradient"}
SCALES_STEPS = {"entropy_gradient"}


def loss_class(name: str) -> type:
    return get_class(compose([f"loss={name}"]).loss._target_)


def defined_below(cls: type, base: type, name: str) -> bool:
    """Whether a class between cls and base (cls included, base not) defines `name`."""
    mro = cls.__mro__
    return any(name in vars(k) for k in mro[:mro.index(base)])


def test_every_configured_loss_is_listed():
    assert LOSS_NAMES == ["bce", "ce", "confidence_penalty", "entropy_gradient", "focal", "gce", "mae", "mbce",
                          "min_ent", "mix_ent", "sce"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_configured_loss_implements_the_interface(name):
    cls = loss_class(name)
    assert issubclass(cls, Loss) and not cls.__abstractmethods__
    for method in ("head_size", "forward", "log_probs"):
        assert defined_below(cls, Loss, method), method
    assert cls.binary_only == (name in BINARY_ONLY)
    assert cls.scales_steps == (name in SCALES_STEPS) == defined_below(cls, Loss, "step_scale")

    loss, k = cls(), 2 if cls.binary_only else 5
    logits, y = torch.randn(4, loss.head_size(k)), torch.randint(0, k, (4,))
    assert loss(logits, y).ndim == 0
    probs = loss.probs(logits)
    assert probs.shape == (4, k)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    torch.testing.assert_close(loss.log_probs(logits), probs.log())
    assert all(tag.startswith("loss/") and v.ndim == 0 for tag, v in loss.logged().items())
    assert (loss.param_lr is None) == (name not in ("min_ent", "mix_ent"))
    assert isinstance(cls.scaled_probs_formula, str)
    for temperature in (0.3, 4.0):  # a temperature moves the confidences, never the prediction
        assert torch.equal(loss.predict(logits / temperature), loss.predict(logits))
    many = torch.randn(3, 500, loss.head_size(k)) * 4  # predict takes leading dims, as a stack's (M, N, K)
    assert torch.equal(loss.predict(many), loss.log_probs(many).argmax(-1))


MEMBER_HYPERPARAMETERS = {  # a loss's own numbers for each of three stack members (defaults where none)
    "ce": [dict(label_smoothing=e) for e in (0.0, 0.1, 0.3)],
    "min_ent": [dict(beta1=1.0, beta2=0.1), dict(beta1=0.5, beta2=0.5, base1=2.0), dict(beta1=0.2, base2=10.0)],
    "mix_ent": [dict(beta1=1.0, beta2=0.1), dict(beta1=0.5, beta2=0.5, base1=2.0), dict(beta1=0.2, base2=10.0)],
    "focal": [dict(gamma=g) for g in (0.0, 0.5, 2.0)],
    "gce": [dict(q=q) for q in (0.1, 0.7, 1.0)],
    "sce": [dict(alpha=0.1), dict(alpha=1.0, beta=0.5), dict(beta=2.0, log_zero=-6.0)],
    "confidence_penalty": [dict(beta=b) for b in (0.0, 0.1, 2.0)],
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_stack_of_losses_gives_each_members_own_loss_and_gradient(name):
    """The stack's loss (member 0's, holding every member's buffers) on (M, N, K) logits laid out as a stack's
    (the class dim not the innermost in memory) against each member's own loss on its (N, K) logits. The members
    compute first, so what a loss learns of its own numbers on a call (ce: whether it smooths) is in the copy the
    stack makes of member 0."""
    cls, k = loss_class(name), 2 if name in BINARY_ONLY else 7
    members = [cls(**numbers) for numbers in MEMBER_HYPERPARAMETERS.get(name, [{}] * 3)]
    width = members[0].head_size(k)
    logits = (torch.randn(3, width, 50, dtype=torch.float64) * 3).transpose(1, 2).requires_grad_()
    y = torch.randint(0, k, (3, 50))
    own_values, own_grads = [], []
    for m, member in enumerate(members):
        own_logits = logits.detach()[m].clone().requires_grad_()
        own_values.append(member(own_logits, y[m]))
        own_values[-1].backward()
        own_grads.append(own_logits.grad)
    stacked = stacked_loss([SimpleNamespace(loss_fn=member) for member in members])(logits, y)
    assert stacked.shape == (3,)
    stacked.sum().backward()
    for m in range(len(members)):
        torch.testing.assert_close(stacked[m], own_values[m], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logits.grad[m], own_grads[m], rtol=1e-12, atol=1e-12)
    assert len({round(value, 9) for value in stacked.tolist()}) == 3  # the members' numbers differ


class Identity(Loss):
    def head_size(self, num_classes):
        return num_classes

    def forward(self, logits, y):
        return logits.mean()

    def log_probs(self, logits):
        return logits.log_softmax(-1)


def test_loss_defaults():
    loss = Identity()
    assert not loss.binary_only and not loss.scales_steps and loss.param_lr is None
    assert loss.logged() == {} and loss.epoch_stats(0) == {}
    with pytest.raises(NotImplementedError, match="Identity does not scale steps"):
        loss.step_scale(torch.zeros(3, 1), torch.ones(3, 1), 0)


def test_a_loss_without_its_prediction_rule_cannot_be_built():
    class NoLogProbs(Loss):
        def head_size(self, num_classes):
            return num_classes

        def forward(self, logits, y):
            return logits.mean()

    with pytest.raises(TypeError, match="log_probs"):
        NoLogProbs()
    with pytest.raises(TypeError, match="forward, head_size, log_probs"):
        Loss()


# ---------------------------------------------------------------- entropy-gradient step scale
DELTA0, GAMMA, DELTA_MIN = 0.2, 0.5, 0.01


def sgd_step(model, loss, x, lr):
    """One SGD step of the rule; returns the logits and parameters from before it."""
    z_before = model(x)
    model.zero_grad()
    loss(z_before, torch.zeros(len(x), dtype=torch.long)).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return z_before.detach(), before


def numpy_logits(model, x):
    w = (model.w1 + model.G1).detach().numpy()
    return x.numpy() @ w.T + model.b1.detach().numpy()


@pytest.mark.parametrize("epoch, delta", [(0, 0.2), (2, 0.05), (5, 0.01)])  # δ_e = max(δ_min, δ_0 γ^epoch)
def test_step_scale_brings_max_dz_down_to_delta(epoch, delta):
    torch.manual_seed(epoch)
    model = DualLinear((6,), 1, init_std=0.5).double()
    loss = EntropyGradient(DELTA0, GAMMA, DELTA_MIN).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    z0 = numpy_logits(model, x)
    z_before, before = sgd_step(model, loss, x, lr=50.0)
    stepped = [p.detach().clone() for p in model.parameters()]
    max_dz = np.abs(numpy_logits(model, x) - z0).max()
    assert max_dz > 2 * delta  # the unconstrained step is too large

    scale = loss.step_scale(z_before, model(x).detach(), epoch)
    assert scale.ndim == 0 and scale.item() == pytest.approx(delta / max_dz, rel=1e-12)
    assert all(torch.equal(p, p1) for p, p1 in zip(model.parameters(), stepped))  # the model is left alone
    scale_step(list(model.parameters()), before, scale)
    for p, p0, p1 in zip(model.parameters(), before, stepped):
        np.testing.assert_allclose(p.detach().numpy(), (p0 + (p1 - p0) * delta / max_dz).numpy(), rtol=1e-12)
    assert np.abs(numpy_logits(model, x) - z0).max() == pytest.approx(delta, rel=1e-10)


def test_step_scale_is_one_for_a_small_step_and_the_epoch_stats_count_both():
    torch.manual_seed(0)
    model = DualLinear((6,), 1, init_std=0.5).double()
    loss = EntropyGradient(DELTA0, GAMMA, DELTA_MIN).double()
    x = torch.randn(8, 6, dtype=torch.float64)

    z_before, before = sgd_step(model, loss, x, lr=50.0)
    large_dz = (model(x).detach() - z_before).abs().max().item()
    large = loss.step_scale(z_before, model(x).detach(), 1).item()
    scale_step(list(model.parameters()), before, torch.tensor(large, dtype=torch.float64))

    z_before, before = sgd_step(model, loss, x, lr=1e-4)
    stepped = [p.detach().clone() for p in model.parameters()]
    small_dz = (model(x).detach() - z_before).abs().max().item()
    assert 0 < small_dz < 0.1
    small = loss.step_scale(z_before, model(x).detach(), 1)
    assert small.item() == 1.0
    scale_step(list(model.parameters()), before, small)
    for p, p1 in zip(model.parameters(), stepped):
        torch.testing.assert_close(p.detach(), p1, rtol=1e-15, atol=1e-15)

    assert loss.epoch_stats(1) == pytest.approx({
        "entropy_gradient/delta": 0.1, "entropy_gradient/scaled_fraction": 0.5,
        "entropy_gradient/mean_scale": (0.1 / large_dz + 1) / 2, "entropy_gradient/max_dz": large_dz,
    }, rel=1e-12)
    assert loss.epoch_stats(2) == {  # reset
        "entropy_gradient/delta": 0.05, "entropy_gradient/scaled_fraction": 0.0,
        "entropy_gradient/mean_scale": 0.0, "entropy_gradient/max_dz": 0.0,
    }


@pytest.mark.parametrize("shape, stored_transposed", [((128, 10), False), ((16, 10, 300), True),
                                                      ((16, 300, 10), False), ((3, 50, 7), False)])
def test_the_fused_cross_entropy_is_exactly_log_softmax_then_nll(shape, stored_transposed):
    """mean_cross_entropy, what ce computes without smoothing, against mean_nll(log_softmax(z)): equal values and
    gradients to the bit, for one run's logits and a stack's, stored (M, K, N) or (M, N, K)."""
    raw = torch.randn(*shape) * 3
    logits = raw.transpose(-1, -2) if stored_transposed else raw
    y = torch.randint(0, logits.shape[-1], logits.shape[:-1])
    fused, plain = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fused_value, plain_value = mean_cross_entropy(fused, y), mean_nll(log_softmax(plain), y)
    fused_value.sum().backward()
    plain_value.sum().backward()
    assert torch.equal(fused_value, plain_value) and torch.equal(fused.grad, plain.grad)
