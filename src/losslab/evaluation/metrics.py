"""Metrics of one split, accumulated on the device batch by batch and read once at the end.

All of them use the loss's own log-probabilities ln p (its `log_probs`: log_softmax for ce/min_ent/mix_ent,
(ln σ(-s), ln σ(s)) for bce, normalised per-class sigmoids for mbce), p = exp(ln p), and its prediction ŷ (its
`predict`: argmax p; bce: class 1 iff σ(s) ≥ 0.5), in float64:

    acc      mean [ŷ = y]
    nll      mean -ln p_y                              (exact at any logit: no probability is clamped)
    brier    mean Σ_k (p_k - e_{y,k})²
    entropy  mean -Σ_k p_k ln p_k                      (nats)
    ece      Σ_b (n_b / N) |acc_b - conf_b|, top-label confidence p_ŷ in 15 equal-width bins
    loss     the training loss itself (batch-size weighted mean)
"""

from __future__ import annotations

import torch

ECE_BINS = 15


def at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[..., n, index[..., n]]: each example's value at its own class."""
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


class SplitMetrics:
    """The metrics of one model, or of M stacked members at once (`members=M`: log-probabilities (M, N, K),
    predictions and labels (M, N), losses (M,))."""

    def __init__(self, device: torch.device, bins: int = ECE_BINS, members: int | None = None):
        self.bins, lead = bins, () if members is None else (members,)
        self.sums = torch.zeros(*lead, 5, dtype=torch.float64, device=device)  # loss, hits, nll, brier, entropy
        self.per_bin = torch.zeros(*lead, 2, bins, dtype=torch.float64, device=device)  # confidence, hits
        self.count = 0

    def update(self, log_probs: torch.Tensor, prediction: torch.Tensor, y: torch.Tensor,
               loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch: log-probabilities (N, K), predicted classes and labels (N,), and the batch-mean loss (each
        with the member dim first for members); returns each example's top-label confidence and hit (1.0 where the
        prediction is the label)."""
        n = y.shape[-1]
        log_probs = log_probs.to(torch.float64)
        probs = log_probs.exp()
        confidence, hits = at(probs, prediction), (prediction == y).to(torch.float64)
        nll = -at(log_probs, y).sum(-1)
        brier = (probs.square().sum(-1) - 2 * at(probs, y) + 1).sum(-1)  # Σ_k (p_k - e_yk)² without the one-hot
        entropy = torch.special.entr(probs).sum((-2, -1))  # -p ln p, 0 at p = 0
        self.sums += torch.stack([loss.to(torch.float64) * n, hits.sum(-1), nll, brier, entropy], -1)
        bin_index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1  # (0, 1/15] is the first bin
        for row, values in enumerate((confidence, hits)):
            self.per_bin[..., row, :].scatter_add_(-1, bin_index, values)
        self.count += n
        return confidence, hits

    def result(self) -> dict[str, float]:
        """The metrics of one model."""
        return self.results()[0]

    def results(self) -> list[dict[str, float]]:
        """The metrics of each member (of one model: a list of one)."""
        means = (self.sums / self.count).reshape(-1, 5)
        confidence, bin_hits = self.per_bin.reshape(-1, 2, self.bins).unbind(1)
        ece = (bin_hits - confidence).abs().sum(-1) / self.count  # = Σ_b n_b/N |acc_b - conf_b|
        return [{"loss": loss, "acc": hits, "nll": nll, "brier": brier, "ece": member_ece, "entropy": entropy}
                for (loss, hits, nll, brier, entropy), member_ece in zip(means.tolist(), ece.tolist())]
