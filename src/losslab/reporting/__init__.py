"""Reading finished runs and sweeps back: the sweep report (reading, statistics, tables, plots) and a run's
figures.

May import: training and everything below."""
