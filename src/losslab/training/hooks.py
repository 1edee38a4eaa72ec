"""The training loop's hooks: callables that `subscribe` hands to the loop, which calls each of them at four points
of every run, in this order of a run's life:

- `step`: a step's update done, before any of its bookkeeping (`at` is the step just taken, counted from 1);
- `eval`: an evaluation's row written (`at` is its step);
- `epoch`: an epoch's end, before its last.pt (`at` is the number of epochs done);
- `finish`: a run's final row written, before its best.pt and summary.json (`at` is its last step; a stack calls
  it once for each member that finishes).

Each call is `hook(point, at, jobs)`, where `jobs` are the sweep job numbers of the runs the loop trains there (a
stack's members, else the one job; None for a run outside a sweep). A hook runs in the loop's thread, between two
of its steps: what it does there (sleep, send a signal) happens at that very place. This module imports nothing
heavy, so a process can subscribe before it loads torch or Hydra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Hook = Callable[[str, int, Sequence["int | None"]], None]
POINTS = ("step", "eval", "epoch", "finish")

_hooks: tuple[Hook, ...] = ()  # replaced, never changed in place: `emit` iterates over a snapshot


def subscribe(hook: Hook) -> None:
    """Call `hook` at every point of every run this process trains from now on."""
    global _hooks
    _hooks = (*_hooks, hook)


def unsubscribe(hook: Hook) -> None:
    """Stop calling `hook` (one that is not subscribed is left alone)."""
    global _hooks
    _hooks = tuple(h for h in _hooks if h is not hook)


def emit(point: str, at: int, jobs: Sequence[int | None]) -> None:
    """The loop is at `point` (one of POINTS) `at` a step or epoch, training `jobs`: call every hook."""
    for hook in _hooks:
        hook(point, at, jobs)
