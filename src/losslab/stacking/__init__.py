"""Training many runs as one stacked model: steppers, stacked optimizers, batched layers."""
