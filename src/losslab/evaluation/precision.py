"""The float precision a forward pass computes in: bf16 autocast, or the default."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
