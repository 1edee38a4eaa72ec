"""Post-hoc temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017).

One temperature T > 0 divides every logit before the loss's own link to probabilities (its `log_probs`, whose
probabilities its `scaled_probs_formula` writes out):

    p_T = probs(z / T):   softmax(z/T)                ce (with or without label smoothing), min_ent, mix_ent
                          (1 - σ(s/T), σ(s/T))        bce: one-parameter Platt scaling, slope 1/T and no bias
                          σ(z/T) / Σ_k σ(z_k/T)       mbce: every one-vs-rest sigmoid scaled alike, then normalised

T is fitted on the validation split by minimising its NLL as losslab.evaluation.metrics computes it, from the
loss's log-probabilities of z / T in float64 (exact: no probability is clamped),

    T* = argmin_{T > 0}  -(1/N) Σ_i ln p_T(x_i)_{y_i},

by Brent's bounded search (scipy) over u = ln T in [ln T_MIN, ln T_MAX]. For a softmax or a single sigmoid,
-ln p_T(x)_y is convex in 1/T, so the NLL has one minimum in u and the search finds it. On a validation split the
model separates perfectly the NLL falls toward 0 as T shrinks, and T is wherever the search finds it flat (at most
T_MAX, at least T_MIN). For mbce's normalised sigmoids no such guarantee is known: the search returns a local
minimum.

Every loss here predicts argmax_k z_k (bce: class 1 iff s ≥ 0), which dividing all logits by one T > 0 keeps:
accuracy is the same before and after and only the confidences move. T > 1 softens over-confident probabilities,
T < 1 sharpens under-confident ones. The metrics before (T = 1) and after are losslab.evaluation.metrics' on the
same logits.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar

from losslab.evaluation.metrics import SplitMetrics
from losslab.losses.base import Loss

T_MIN, T_MAX = 0.01, 100.0
REPORTED = ("acc", "nll", "brier", "ece", "entropy")  # every metric of a split but the training loss


def metrics_of(loss: Loss, logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """The REPORTED metrics of the loss's probabilities of `logits / temperature` (N, K) for labels `y`, in
    float64."""
    scaled = logits.double() / temperature
    metrics = SplitMetrics(logits.device)
    metrics.update(loss.log_probs(scaled), loss.predict(scaled), y, loss=scaled.new_zeros(()))  # no training loss
    return {name: value for name, value in metrics.result().items() if name in REPORTED}


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, loss: Loss) -> float:
    """T* > 0 minimising the NLL of the loss's probabilities of `logits / T` for labels `y`."""

    def nll(log_t: float) -> float:
        return metrics_of(loss, logits, y, math.exp(log_t))["nll"]

    found = minimize_scalar(nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded")
    return math.exp(found.x)


def calibrate(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
              loss: Loss) -> dict[str, float]:
    """T fitted on `val` (logits, labels), the val NLL and the test metrics before (T = 1) and after it, named as
    losslab-report reads them: calibration/temperature, val/nll, calibrated/val/nll, test/<metric>,
    calibrated/test/<metric>."""
    temperature = fit_temperature(*val, loss)
    result = {"calibration/temperature": temperature}
    for prefix, t in (("", 1.0), ("calibrated/", temperature)):
        result[f"{prefix}val/nll"] = metrics_of(loss, *val, t)["nll"]
        test_metrics = metrics_of(loss, *test, t)
        result |= {f"{prefix}test/{name}": value for name, value in test_metrics.items()}
    return result
