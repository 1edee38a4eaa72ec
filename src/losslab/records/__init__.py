"""Run records: a run dir's state and lock, the job dirs of a sweep dir."""
