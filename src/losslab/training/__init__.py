"""Training one run or a group of runs: the loop, a run's state, checkpoints, the end of a run, runtime set-up,
the loop's hooks, progress, the run logger."""
