"""ce, bce, mbce against the SPEC formulas computed independently in float64 numpy."""

import numpy as np
import pytest
import torch

from losslab.losses import BinaryCrossEntropy, CrossEntropy, MultiBinaryCrossEntropy

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
    z = torch.tensor([[1.0, 3.0, -1.0]])
    p = MultiBinaryCrossEntropy().probs(z)
    np.testing.assert_allclose(p[0], np_sigmoid(z[0].numpy()) / np_sigmoid(z[0].numpy()).sum(), rtol=1e-6)
    assert p.argmax(-1).item() == 1
