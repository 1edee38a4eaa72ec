"""Metrics of one split, accumulated on the device batch by batch and read once at the end.

All of them use the loss's own probabilities p (its `probs`: softmax for ce/min_ent/mix_ent,
(1 - σ, σ) for bce, normalised per-class sigmoids for mbce) and its prediction argmax p:

    acc      mean [argmax p = y]
    nll      mean -ln p_y
    brier    mean Σ_k (p_k - e_{y,k})²
    entropy  mean -Σ_k p_k ln p_k                      (nats)
    ece      Σ_b (n_b / N) |acc_b - conf_b|, top-label confidence max_k p_k in 15 equal-width bins
    loss     the training loss itself (batch-size weighted mean)
"""

from __future__ import annotations

import torch

ECE_BINS = 15
TINY = 1e-12


class SplitMetrics:
    """The metrics of one model, or of M stacked members at once (`members=M`: probabilities (M, N, K), labels
    (M, N), losses (M,))."""

    def __init__(self, device: torch.device, bins: int = ECE_BINS, members: int | None = None):
        self.bins, lead = bins, () if members is None else (members,)
        self.sums = torch.zeros(*lead, 5, dtype=torch.float64, device=device)  # loss, hits, nll, brier, entropy
        self.per_bin = torch.zeros(*lead, 2, bins, dtype=torch.float64, device=device)  # confidence, hits
        self.count = 0

    def update(self, probs: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch: probabilities (N, K), labels (N,), and the batch-mean loss (each with the member dim first
        for members); returns each example's top-label confidence and hit (1.0 where the argmax is the label)."""
        n = y.shape[-1]
        confidence, prediction = probs.max(-1)
        hits = (prediction == y).to(probs.dtype)
        p_y = probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        brier = (probs.square().sum(-1) - 2 * p_y + 1).sum(-1)  # Σ_k (p_k - e_yk)² without the one-hot
        entropy = -(probs * probs.clamp_min(TINY).log()).sum((-2, -1))
        batch = torch.stack([loss * n, hits.sum(-1), -p_y.clamp_min(TINY).log().sum(-1), brier, entropy], -1)
        self.sums += batch.to(torch.float64)
        bin_index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1  # (0, 1/15] is the first bin
        for row, values in enumerate((confidence, hits)):
            self.per_bin[..., row, :].scatter_add_(-1, bin_index, values.to(torch.float64))
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
