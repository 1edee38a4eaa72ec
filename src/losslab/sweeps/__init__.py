"""Multiruns: the Hydra callback, what a job of a sweep does besides training, Slurm."""
