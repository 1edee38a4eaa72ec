"""The console entry points: losslab-train, losslab-eval, losslab-report, losslab-gradcheck."""
