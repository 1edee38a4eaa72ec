"""Training one run, or a group of runs at the same step: the loop (`loop.py`), a run's objects and state
(`runs.py`), checkpoints, the end of a run, runtime set-up (device, seeds, stop signals), the loop's hooks
(`hooks.py`), progress lines and the run logger (TensorBoard, metrics.csv; `tensorboard_adapter.py` is the only
use of TensorBoard's internals).

May import: stacking, evaluation, data, losses, models, config, records, and the bottom layer."""
