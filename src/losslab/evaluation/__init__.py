"""Evaluating a model: the metrics of a split, one pass over a split (logits, predictions), float precision,
and post-hoc temperature scaling.

May import: data, losses, models, config, records, and the bottom layer."""
