"""What a run shows while it trains: tqdm's bar on a terminal, else a log line every tenth of an epoch, and one
line per evaluation either way."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

log = logging.getLogger("losslab")


def progress_bar(mode: str, total: int, done: int = 0):
    """A ProgressBar on a terminal (or when asked for), else None and plain log lines."""
    if mode == "log" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    return ProgressBar(total, done)


class ProgressBar:
    """tqdm's bar, with the log lines printed above it while it runs (tqdm.contrib.logging: the console handlers
    write through tqdm, the log files as ever); its final state stays on the screen."""

    def __init__(self, total: int, done: int):
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.closing = contextlib.ExitStack()
        self.closing.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        self.bar = self.closing.enter_context(tqdm(total=total, initial=done, unit="step", dynamic_ncols=True))

    def update(self, steps: int) -> None:
        self.bar.update(steps)

    def set_postfix(self, values: dict) -> None:
        self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self.closing.close()


PROGRESS_LINES_PER_EPOCH = 10  # without a bar: a line at least every tenth of an epoch


class ProgressLines:
    """Without a bar, a log line every tenth of an epoch between evaluations (when they are further apart):
    the step, the speed and the time left, so a log file shows a long epoch moving."""

    def __init__(self, bar, steps_per_epoch: int, eval_interval: int, total: int, step: int):
        every = math.ceil(steps_per_epoch / PROGRESS_LINES_PER_EPOCH)
        self.every = 0 if bar is not None or eval_interval <= every else every
        self.eval_interval, self.steps_per_epoch, self.total = eval_interval, steps_per_epoch, total
        self.first_step, self.started = step, time.perf_counter()

    def at(self, step: int, running: str = "") -> None:
        """After `step`; `running` is added to the line (a stack's jobs)."""
        if not self.every or step % self.every or not step % self.eval_interval or step == self.total:
            return
        rate = (step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        log.info("step %d/%d epoch %.2f | %s%.3g steps/s, %s left", step, self.total, step / self.steps_per_epoch,
                 running, rate, duration((self.total - step) / rate))


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def rounded(value: float | None) -> str:
    """A metric in a log line: 4 significant digits, `-` when there is none."""
    return "-" if value is None else f"{value:.4g}"


def log_evaluation(row: dict, job: str = "") -> None:
    """One evaluation's line, always logged: in cli.log, and above the bar on a terminal; `job` names a stack's
    member."""
    text = " ".join(f"{k} {rounded(row[k])}" for k in ("train/loss", "val/loss", "val/acc"))
    log.info("%sstep %d epoch %.2f | %s", job, row["step"], row["epoch"], text)
