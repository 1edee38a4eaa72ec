"""Training many runs as one stacked model: the steppers (one run's, and a stack's), what can be stacked, the
stacked optimizers and the batched layers.

May import: evaluation, data, losses, models, config, records, and the bottom layer."""
