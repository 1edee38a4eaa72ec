"""losslab: config-driven loss-function research on image classification."""

__version__ = "0.1.0"
