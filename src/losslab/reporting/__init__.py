"""Reading finished runs and sweeps back: the sweep report, a run's figures, drawing."""
