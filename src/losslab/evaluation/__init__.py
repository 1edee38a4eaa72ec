"""Evaluating a model: metrics of a split, a pass over a split, temperature scaling."""
