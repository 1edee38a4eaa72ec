"""What several test modules share: losslab's commands run in fresh processes (commands.py, through conftest's
`losslab` fixture), data files in torchvision's formats (fixtures.py), TensorBoard's view of a run (tb_events.py),
sweep dirs written by hand for the report (report.py), and sweeps on the Slurm test cluster (slurm.py)."""
