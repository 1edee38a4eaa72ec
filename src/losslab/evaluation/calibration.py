"""Post-hoc temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017).

One temperature T > 0 divides every logit before the loss's own link to probabilities (its `scaled_probs`):

    p_T = probs(z / T):   softmax(z/T)                ce (with or without label smoothing), min_ent, mix_ent
                          (1 - σ(s/T), σ(s/T))        bce: one-parameter Platt scaling, slope 1/T and no bias
                          σ(z/T) / Σ_k σ(z_k/T)       mbce: every one-vs-rest sigmoid scaled alike, then normalised

T is fitted on the validation split by minimising its NLL as losslab.evaluation.metrics computes it,

    T* = argmin_{T > 0}  -(1/N) Σ_i ln p_T(x_i)_{y_i},

by Brent's bounded search (scipy) over u = ln T in [ln T_MIN, ln T_MAX]. For a softmax or a single sigmoid,
-ln p_T(x)_y is convex in 1/T, so the NLL has one minimum in u and the search finds it. On a validation split the
model separates perfectly the NLL falls toward 0 as T shrinks, and T is wherever the search finds it flat (at most
T_MAX, at least T_MIN). For mbce's normalised sigmoids no such guarantee is known: the search returns a local
minimum.

Every loss here predicts argmax_k z_k (bce: the sign of s), which dividing all logits by one T > 0 keeps: accuracy
is the same before and after and only the confidences move. T > 1 softens over-confident probabilities, T < 1
sharpens under-confident ones. The metrics before (T = 1) and after are losslab.evaluation.metrics' on the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.optimize import minimize_scalar

from losslab.evaluation.metrics import SplitMetrics

T_MIN, T_MAX = 0.01, 100.0
REPORTED = ("acc", "nll", "brier", "ece", "entropy")  # every metric of a split but the training loss

ScaledProbs = Callable[[torch.Tensor, float], torch.Tensor]  # (logits, T) -> probabilities, a loss's scaled_probs


def metrics_of(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The REPORTED metrics of the probabilities `probs` (N, K) for labels `y`."""
    metrics = SplitMetrics(probs.device)
    metrics.update(probs, y, loss=probs.new_zeros(()))  # rescaled probabilities have no training loss
    return {name: value for name, value in metrics.result().items() if name in REPORTED}


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, scaled_probs: ScaledProbs) -> float:
    """T* > 0 minimising the NLL of `scaled_probs(logits, T)` for labels `y` (in float64)."""
    logits = logits.double()

    def nll(log_t: float) -> float:
        return metrics_of(scaled_probs(logits, math.exp(log_t)), y)["nll"]

    found = minimize_scalar(nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded")
    return math.exp(found.x)


def calibrate(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
              scaled_probs: ScaledProbs) -> dict[str, float]:
    """T fitted on `val` (logits, labels), the val NLL and the test metrics before (T = 1) and after it, named as
    losslab-report reads them: calibration/temperature, val/nll, calibrated/val/nll, test/<metric>,
    calibrated/test/<metric>."""
    temperature = fit_temperature(*val, scaled_probs)
    result = {"calibration/temperature": temperature}
    for prefix, t in (("", 1.0), ("calibrated/", temperature)):
        result[f"{prefix}val/nll"] = metrics_of(scaled_probs(val[0], t), val[1])["nll"]
        test_metrics = metrics_of(scaled_probs(test[0], t), test[1])
        result |= {f"{prefix}test/{name}": value for name, value in test_metrics.items()}
    return result
