"""Run records on disk: a run dir's state and its lock, summary.json (its one owner: statuses, writers, readers,
format version, what a relaunch does with each status), the job dirs and state of a sweep dir, and provenance.

May import: losslab.errors, losslab.fileio (the bottom layer; pyproject.toml's import-linter contract)."""
