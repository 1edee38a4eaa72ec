"""Multiruns: the Hydra callback (sweep and job dirs at the start, report and tally at the end), what a sweep job
shares of the machine, what the launchers do with Slurm, and how the stacked launcher composes, sets up and groups a
multirun's jobs (hydra_plugins.losslab_launcher holds the plugin classes Hydra discovers).

May import: reporting, training and everything below."""
