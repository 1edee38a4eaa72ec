"""Checkpoints: `last.pt` (everything a resume needs: weights, optimizer, scheduler, RNG states, progress) and
`best.pt` (the weights at the best evaluation), written atomically; loaded with `torch.load(weights_only=True)`."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from losslab.errors import UserError
from losslab.fileio import atomic_write


def save_checkpoint(path: Path, **state) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def snapshot(model: torch.nn.Module, loss_fn: torch.nn.Module) -> dict:
    """Copies of the model's and the loss's state (the loss holds learnable coefficients and bases)."""
    return {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in (("model", model), ("loss", loss_fn))}


def rng_states(order_gen: torch.Generator) -> dict:
    """All RNG states, as types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
              "torch": torch.get_rng_state(), "order": order_gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, order_gen: torch.Generator) -> None:
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    # generators take their state as a CPU byte tensor, wherever the checkpoint was loaded to
    torch.set_rng_state(states["torch"].cpu())
    order_gen.set_state(states["order"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def load_last(path: Path, model, loss_fn, optimizer, scheduler, order_gen) -> dict:
    """Load `path` (a last.pt) into the run's objects and RNG states; returns the saved progress (a dict)."""
    try:
        state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    except Exception:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        raise UserError(f"{path} cannot be read: it is damaged or cut short, and it is the run's only checkpoint "
                        f"(an earlier epoch's is not kept). Restore the file from a copy, or start the run afresh "
                        f"in a new dir.") from None
    try:
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"], order_gen)
        return state["progress"]
    except (KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} cannot be resumed from ({str(e).splitlines()[0]}); it is not a checkpoint of "
                        f"this config.") from e
