"""The loop's hooks (losslab.training.hooks): where and in which order the loop calls them, with which job numbers, and
the tests' own hook (stop_hook/sitecustomize.py) that reads LOSSLAB_TEST_STOP_AT."""

import importlib.util
import json
import os
import signal
import threading

import pytest
from helpers.commands import STOP_HOOK

from losslab.commands.cli import compose
from losslab.errors import Interrupted
from losslab.training.hooks import emit, subscribe, unsubscribe
from losslab.training.loop import fit, fit_group
from losslab.training.runs import Job
from losslab.training.runtime import stop_requested

# 768 - 256 val = 512 training images in batches of 128: 4 steps an epoch, an evaluation every 2, 2 epochs
SMALL = ["dataset=synthetic", "dataset.train_n=768", "trainer.epochs=2", "trainer.eval_every=0.5",
         "trainer.progress=log", "trainer.device=cpu", "trainer.figures=false"]
ONE_RUN = [("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4), ("epoch", 1),
           ("step", 5), ("step", 6), ("eval", 6), ("step", 7), ("step", 8), ("eval", 8), ("epoch", 2),
           ("finish", 8)]


def test_the_loop_calls_its_hooks_at_each_point_in_order_with_the_job_numbers(tmp_path):
    calls = []

    def record(point, at, jobs):
        calls.append((point, at, tuple(jobs)))

    subscribe(record)
    try:
        fit(compose(SMALL), tmp_path / "run")
        assert calls == [(point, at, (None,)) for point, at in ONE_RUN]  # a run outside a sweep has no number
        calls.clear()
        jobs = [Job(compose([*SMALL, f"optimizer.lr={lr}"]), tmp_path / str(n), number=n) for n, lr in ((3, 0.1),
                                                                                                       (5, 0.05))]
        fit_group(jobs)
        # a stack: every point once for the stack, the finish once for each member
        assert calls == [(point, at, (3, 5)) for point, at in ONE_RUN + [("finish", 8)]]
    finally:
        unsubscribe(record)
    calls.clear()
    emit("step", 1, (None,))
    assert calls == []


def test_a_stop_signal_sent_by_a_hook_stops_the_run_before_the_next_step(tmp_path):
    seen = []

    def stop_at_step_3(point, at, jobs):
        if (point, at) == ("step", 3):
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append(stop_requested())

    subscribe(stop_at_step_3)
    try:
        with pytest.raises(Interrupted):
            fit(compose(SMALL), tmp_path)
    finally:
        unsubscribe(stop_at_step_3)
    assert seen == [True]  # caught at once, in the hook
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 3


def the_stop_hook():
    """stop_hook/sitecustomize.py as a module of its own (LOSSLAB_TEST_STOP_AT is unset here: it subscribes
    nothing)."""
    spec = importlib.util.spec_from_file_location("stop_hook_sitecustomize", STOP_HOOK / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stop_hook_reads_its_specs_and_refuses_a_wrong_one():
    hook = the_stop_hook()
    assert hook.parse("SIGKILL eval 8; sleep=0.5 step any job=1;wait finish any") == [
        ("SIGKILL", "eval", "8", None), ("sleep=0.5", "step", "any", 1), ("wait", "finish", "any", None)]
    for wrong in ("SIGKILL evaluation 8", "SIGKILL eval", "SIGNOPE eval 8", "sleep eval 8", "wait eval 8 job=x",
                  "wait eval eight"):
        with pytest.raises(ValueError, match="is not '<action> <point> <step|any> \\[job=<n>\\]'"):
            hook.parse(wrong)


def test_the_stop_hooks_wait_holds_the_run_at_its_point_until_a_stop_signal_arrives(tmp_path):
    """`wait step 2`: the run naps after step 2 until a SIGTERM, sent 0.3 s after step 2 from another thread, is
    caught; then it stops there."""
    hook = the_stop_hook()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))

    def start_the_timer(point, at, jobs):  # called before the wait: the run catches stop signals by then
        if (point, at) == ("step", 2):
            timer.start()

    waiting = hook.stop_at_hook(hook.parse("wait step 2"))
    subscribe(start_the_timer)
    subscribe(waiting)
    outside = signal.signal(signal.SIGTERM, lambda *_: None)  # a SIGTERM that comes after the run ends harms nothing
    try:
        with pytest.raises(Interrupted):
            fit(compose(SMALL), tmp_path)
    finally:
        timer.cancel()
        unsubscribe(start_the_timer)
        unsubscribe(waiting)
        signal.signal(signal.SIGTERM, outside)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 2
