"""The study pages of docs/results/: this repository's tool, not part of the installed library."""
