"""Sweeps: composing, setting up and grouping a multirun's jobs for the launchers of hydra_plugins.losslab_launcher."""
