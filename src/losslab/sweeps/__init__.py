"""Multiruns: the Hydra callback (sweep and job dirs at the start, report and tally at the end), what a sweep job
shares of the machine, and what the launchers do with Slurm.

May import: reporting, training and everything below."""
