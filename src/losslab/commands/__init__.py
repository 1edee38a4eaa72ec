"""The console entry points: losslab-train (with its checks before Hydra starts, resume and sweep jobs),
losslab-eval, losslab-report's wrapper and losslab-gradcheck; one sentence for a user's mistake.

May import: every package (the top layer)."""
