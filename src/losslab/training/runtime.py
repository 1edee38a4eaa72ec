"""What a run sets up before it trains: the device, the cores, seeds, float precision, and the signals that
stop it between two steps."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal

import numpy as np
import torch

from losslab.errors import ConfigError

log = logging.getLogger("losslab")


def pick_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but this machine has no CUDA device; use trainer.device=auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available here; use trainer.device=auto or cpu.")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what Slurm or taskset allow), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def use_float32_math(precision: str, device: torch.device) -> None:
    """fp32 is IEEE float32 in CUDA matmuls and convolutions too (PyTorch lets cuDNN convolutions use TF32 by
    default, which changes results at 1e-3); tf32 allows TF32 in both. Process-wide flags, set per run."""
    tf32 = precision == "tf32"
    if tf32 and device.type != "cuda":
        log.warning("trainer.precision=tf32 needs a CUDA device; on %s the run computes in fp32.", device)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def memory_format(model: torch.nn.Module) -> torch.memory_format:
    """channels_last for conv models: tensor-core convolutions want NHWC on CUDA, and oneDNN's CPU convolutions
    run a LeNet-5 step faster in it than in NCHW (scripts/bench_loop.py --models lenet)."""
    has_convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_convs else torch.contiguous_format


def stop_signals() -> tuple[int, ...]:
    """Ctrl-C, SIGTERM (kill, scancel, a time limit) and submitit's preemption signal."""
    return signal.SIGINT, signal.SIGTERM, preemption_signal()


def preemption_signal() -> int:
    """submitit's preemption signal, sent before a Slurm time limit or on preemption: USR2 unless the documented
    SUBMITIT_PREEMPT_SIGNAL names another."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))


RECEIVED: list[int] = []  # the stop signals caught while catch_stop_signals holds
KEPT: list[int] = []  # every stop signal caught since keep_stop_signals, in a run or between runs


def record_stop(signum: int, _frame=None) -> None:
    RECEIVED.append(signum)
    KEPT.append(signum)


@contextlib.contextmanager
def catch_stop_signals():
    """Turn the stop signals into a list the loop checks between steps (main thread only)."""
    RECEIVED.clear()
    previous = {}
    try:
        for signum in stop_signals():
            previous[signum] = signal.signal(signum, record_stop)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield RECEIVED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def keep_stop_signals() -> list[int]:
    """For a process that runs jobs of a sweep one after another (a worker of hydra/launcher=joblib, a job of
    submitit_local): Ctrl-C and SIGTERM are caught from now on, in a run (which stops at its next step) and between
    runs, and kept in the list returned, so that a job that comes after a stop does not start. The launcher's
    process blocked these signals before it started this one (losslab.sweeps.sweep.StopsHeld): one that came
    meanwhile is taken now. Main thread only."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, record_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    return KEPT


def stop_requested() -> bool:
    """Whether a stop signal has been caught since catch_stop_signals began (the run stops before its next step)."""
    return bool(RECEIVED)
