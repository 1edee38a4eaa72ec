"""What losslab's Slurm code takes from submitit's public API, checked against submitit itself with its local
executor (no cluster): a task's result and error through `job.result()`, and the preemption signal that
SUBMITIT_PREEMPT_SIGNAL names, which submitit's handler takes in the task. A submitit release that changes
either fails here."""

from __future__ import annotations

import signal

import pytest

from losslab.sweeps.slurm import error_line, read_result
from losslab.training.runtime import preemption_signal

submitit = pytest.importorskip("submitit", reason="the `sweep` extra (hydra/launcher=slurm)")


def local_executor(folder):
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=5)
    return executor


def test_a_tasks_result_and_the_last_line_of_its_error_are_read(tmp_path):
    returned, raised = local_executor(tmp_path).map_array(int, ["3", "x"])
    for job in (returned, raised):
        job.wait()
    assert read_result(returned) == 3
    assert read_result(raised) == "ValueError: invalid literal for int() with base 10: 'x'"


def test_an_error_message_of_another_form_gives_its_first_line():
    assert error_line("Job failed\nsee its logs") == "Job failed"
    assert error_line("") == "error"


@pytest.mark.parametrize("name", ["USR1", "USR2"])
def test_the_preemption_signal_is_the_one_submitits_handler_takes_in_a_task(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", name)  # the task's process inherits it
    other = signal.SIGUSR2 if name == "USR1" else signal.SIGUSR1

    assert preemption_signal() == getattr(signal, f"SIG{name}")
    job = local_executor(tmp_path).submit(
        lambda signums: [signal.getsignal(s) not in (signal.SIG_DFL, signal.SIG_IGN, None) for s in signums],
        [preemption_signal(), other])
    assert job.result() == [True, False]  # submitit handles the signal losslab reads, and not the other
