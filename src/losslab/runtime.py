"""What a run sets up before it trains: the device, the cores, seeds, float precision, and the signals that
stop it between two steps (with the stop points the tests use to stop it at a chosen place)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time

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


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last for conv models on CUDA (tensor-core convolutions want NHWC); on the CPU it measured no
    faster here, so the default layout stays."""
    has_convs = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if device.type == "cuda" and has_convs else torch.contiguous_format


def stop_signals() -> tuple[int, ...]:
    """Ctrl-C, SIGTERM (kill, scancel, a time limit) and submitit's preemption signal."""
    return signal.SIGINT, signal.SIGTERM, preemption_signal()


def preemption_signal() -> int:
    """submitit's preemption signal, sent before a Slurm time limit or on preemption: USR2 unless the documented
    SUBMITIT_PREEMPT_SIGNAL names another."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))


RECEIVED: list[int] = []  # the stop signals caught while catch_stop_signals holds


@contextlib.contextmanager
def catch_stop_signals():
    """Turn the stop signals into a list the loop checks between steps (main thread only)."""
    RECEIVED.clear()
    previous = {}
    try:
        for signum in stop_signals():
            previous[signum] = signal.signal(signum, lambda n, _frame: RECEIVED.append(n))
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield RECEIVED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# tests only: "<action> <point> <step|any> [job=<n>]", several separated by `;`
STOP_AT = [spec.split() for spec in os.environ.get("LOSSLAB_TEST_STOP_AT", "").split(";") if spec.strip()]
STACK: list[int] = []  # the job numbers of the stack this process trains (hydra/launcher=stacked), else empty


def stop_point(point: str, step: int) -> None:
    """Where the tests stop a run at a chosen place: `LOSSLAB_TEST_STOP_AT="SIGKILL eval 8"` sends this process
    SIGKILL when step 8's evaluation has been written; `sleep=0.5 step any` sleeps half a second after every step
    (a run that takes long on any machine); `wait eval 8` naps there until a stop signal has been caught (a
    cancel's SIGTERM, a preemption's USR2: unlike SIGSTOP then SIGCONT, whose order of handling against the other
    signal depends on which thread takes it, the run stops at this very step); `job=1` restricts a spec to job 1
    of a sweep, or to the stack that holds job 1 (the whole stack, and so every member, stops there). Points:
    `step` (after the update, before any bookkeeping), `eval` (the evaluation row written), `epoch` (an epoch's
    end, before last.pt), `finish` (the final row written, before best.pt and summary.json; any step)."""
    for action, where, when, *job in STOP_AT:
        if where != point or when not in (str(step), "any") or (job and job[0] not in
                                                                  {f"job={n}" for n in these_jobs()}):
            continue
        if action.startswith("sleep="):
            time.sleep(float(action.removeprefix("sleep=")))
        elif action == "wait":
            while not RECEIVED:  # the main thread runs the handler between naps, whichever thread took the signal
                time.sleep(0.01)
        else:
            os.kill(os.getpid(), getattr(signal, action))


def these_jobs() -> list[int | None]:
    """The job numbers this process trains now: a stack's members, else the job of Hydra's current config."""
    from hydra.core.hydra_config import HydraConfig

    if STACK:
        return STACK
    return [HydraConfig.get().job.num if HydraConfig.initialized() else None]


@contextlib.contextmanager
def training_stack(numbers: list[int]):
    """While a stack of these job numbers trains (for `job=` in stop_point)."""
    STACK[:] = numbers
    try:
        yield
    finally:
        STACK.clear()
