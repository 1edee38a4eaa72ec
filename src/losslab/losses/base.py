"""The interface every loss implements, and the step scaling the training loop applies for it."""

import abc

import torch
import torch.nn.functional as F
from torch import nn


class Loss(nn.Module, metaclass=abc.ABCMeta):
    """A loss: its head size, its value, its prediction rule, and what the training loop asks of it.

    The loop reads these, and nothing else, from a loss:

    - ``binary_only`` (class attribute, default False): the loss needs a 2-class dataset.
    - ``scales_steps`` (class attribute, default False): after every optimizer step the loop calls
      ``step_scale`` and scales the step by the factor it returns (see ``scale_step``).
    - ``param_lr`` (default None): the learning rate of the loss's own learnable parameters, which the loop
      puts in a param group of their own; None for a loss that never has any.
    - ``head_size(num_classes)``: how many outputs the model needs for ``num_classes`` classes.
    - ``forward(logits, y)``: the batch-mean loss, a 0-dim tensor for (N, K) logits and (N,) labels. Every
      loss also computes over leading member dims: (M, N, K) logits and (M, N) labels give the (M,) members'
      losses, each with its own hyperparameter buffers stacked to (M, ...) (a stack's loss,
      losslab.stacking.steppers.stacked_loss), so every ``forward`` reduces over dims counted from the end.
    - ``log_probs(logits)``: the (N, K) log-probabilities ln p̂ of the classes, computed from the logits without
      forming p̂ (log_softmax, logsigmoid), so they stay exact where p̂ rounds to 0 or 1: every metric is taken
      from them (losslab.evaluation.metrics).
    - ``probs(logits)``: the probabilities, exp of ``log_probs``.
    - ``predict(logits)``: the (N,) predicted classes; by default the argmax of the log-probabilities, the first
      of equal maxima. Every loss here predicts without computing them: argmax_k z_k, or for one logit s class 1
      iff s ≥ 0 (``sign_class``). Dividing the logits by one temperature T > 0 keeps either, so post-hoc
      temperature scaling (``losslab.evaluation.calibration``: ``log_probs(logits / T)``) moves only the
      confidences.
    - ``scaled_probs_formula`` (class attribute, no default): the probabilities of the logits divided by T
      written out, e.g. ``softmax(z/T)``; calibration reports it.
    - ``logged()``: values to log every step, 0-dim tensors on the loss's device keyed by tag (``loss/beta1``);
      by default none.
    - ``step_scale(logits_before, logits_after, epoch)``: only for ``scales_steps`` losses. Given the batch's
      logits before the optimizer step and recomputed after it, the 0-dim factor s in (0, 1] by which the loop
      scales the step: new parameters = before + (after - before)·s. The loss never touches the model; it may
      record statistics of the step for ``epoch_stats``.
    - ``epoch_stats(epoch)``: values to log at the end of ``epoch``, keyed by tag; resets them. By default none.

    ``head_size``, ``forward`` and ``log_probs`` are abstract: a loss that lacks one cannot be instantiated.
    """

    binary_only: bool = False
    scales_steps: bool = False
    param_lr: float | None = None
    scaled_probs_formula: str

    @abc.abstractmethod
    def head_size(self, num_classes: int) -> int: ...

    @abc.abstractmethod
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def log_probs(self, logits: torch.Tensor) -> torch.Tensor: ...

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.log_probs(logits).exp()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return top_class(self.log_probs(logits))

    def logged(self) -> dict[str, torch.Tensor]:
        return {}

    def step_scale(self, logits_before: torch.Tensor, logits_after: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not scale steps (scales_steps is False)")

    def epoch_stats(self, epoch: int) -> dict[str, float]:
        return {}


class SoftmaxLoss(Loss):
    """A loss of the softmax p̂ = softmax(z) over K outputs: K-output head, log-probabilities log_softmax(z),
    prediction argmax_k z_k (the probabilities increase with each logit)."""

    scaled_probs_formula = "softmax(z/T)"

    @staticmethod
    def head_size(num_classes: int) -> int:
        return num_classes

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return log_softmax(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return top_class(logits)


def hold_per_member(loss: nn.Module, **numbers: float) -> None:
    """Register each of a loss's numbers as a float buffer, left out of the state dict (the config gives it): a
    stack of runs then holds one per member (losslab.stacking.steppers.stacked_loss stacks the buffers to (M,))."""
    for name, value in numbers.items():
        loss.register_buffer(name, torch.tensor(float(value)), persistent=False)


def over_rows(logits: torch.Tensor) -> bool:
    """Whether softmax over the classes (the last dim) runs faster over the transposed tensor: on the CPU, over
    256 rows or more. The CPU's kernel over a last dim of few classes goes row by row, while over a leading dim it
    vectorizes across the rows: a stack's batch gains, one run's batch of 128 rows does not, so it keeps the last
    dim (scripts/bench_stacked_step.py measures the step)."""
    return logits.device.type == "cpu" and logits.ndim >= 2 and logits.numel() >= 256 * logits.shape[-1]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """ln softmax(z) over the class dim, the last."""
    if not over_rows(logits):
        return logits.log_softmax(-1)
    return logits.transpose(-1, -2).log_softmax(-2).transpose(-1, -2)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax(z) over the class dim, the last."""
    if not over_rows(logits):
        return logits.softmax(-1)
    return logits.transpose(-1, -2).softmax(-2).transpose(-1, -2)


def nll(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-ln p̂_y per example: (..., N, K) log-probabilities and (..., N) labels give (..., N)."""
    return F.nll_loss(log_probs.movedim(-1, 1), y, reduction="none")


def label_log_probs(log_probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ln p̂_y, ln(1 - p̂_y)) per example: (..., N, K) log-probabilities (log_softmax) and (..., N) labels give two
    (..., N). Both come from the label's log-odds t = ln p̂_y - logsumexp_{k≠y} ln p̂_k, as ln σ(t) and ln σ(-t)
    (logsigmoid, whose gradient is exact too), so they are exact at any logits: also where p̂_y rounds to 1 and
    1 - p̂_y by subtraction to 0. There log_softmax's ln p̂_y is 0, off by about 1 - p̂_y: nothing beside the
    -ln(1 - p̂_y) in t."""
    label = y.unsqueeze(-1)
    t = log_probs.gather(-1, label).squeeze(-1) - log_probs.scatter(-1, label, float("-inf")).logsumexp(-1)
    return F.logsigmoid(t), F.logsigmoid(-t)


def mean_nll(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch mean of -ln p̂_y: (..., N, K) log-probabilities and (..., N) labels give (...)."""
    if log_probs.ndim == 2:  # torch's own mean: one run's batch, faster than the mean taken after
        return F.nll_loss(log_probs, y)
    return nll(log_probs, y).mean(-1)


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_nll(log_softmax(logits), y) as torch's fused cross_entropy where it computes the same: one run's
    (N, K) logits, and a stack's (M, N, K) when log_softmax goes over the rows, since cross_entropy takes the
    classes at dim 1, where a stack stores them (three view ops and their backward fewer)."""
    if logits.ndim == 2:
        return F.cross_entropy(logits, y)
    if logits.ndim == 3 and over_rows(logits):
        return F.cross_entropy(logits.movedim(-1, 1), y, reduction="none").mean(-1)
    return mean_nll(log_softmax(logits), y)


def sigmoid_log_probs(logit: torch.Tensor) -> torch.Tensor:
    """(ln(1 - σ(s)), ln σ(s)) = (ln σ(-s), ln σ(s)) of one logit s: (..., N, 1) gives (..., N, 2). In float32,
    1 - σ(s) is exactly 0 past s ≈ 16.6; logsigmoid stays exact at any s."""
    s = logit.squeeze(-1)
    return torch.stack((F.logsigmoid(-s), F.logsigmoid(s)), dim=-1)


def sign_class(logit: torch.Tensor) -> torch.Tensor:
    """Class 1 where σ(s) ≥ 0.5, i.e. s ≥ 0, else class 0: (..., N, 1) gives (..., N). The course's rule
    (TDT4265: ŷ ≥ 0.5 predicts 1) puts the tie s = 0 in class 1, where an argmax of (1 - σ, σ) picks class 0."""
    return (logit.squeeze(-1) >= 0).long()


def top_class(values: torch.Tensor) -> torch.Tensor:
    """argmax over the class dim (the last), the first of equal maxima. `max` gives the same index; on the CPU,
    over a class dim that is not the innermost in memory (a stack's logits), it runs far faster than `argmax`,
    which goes row by row there."""
    return values.max(-1).indices


@torch.no_grad()
def scale_step(params: list[torch.Tensor], before: list[torch.Tensor], scale: torch.Tensor) -> None:
    """Scale the step just taken, in place: p ← p0 + (p - p0)·scale, p0 the value of p before the step."""
    for p, p0 in zip(params, before, strict=True):
        p.copy_(p0 + (p - p0) * scale)
