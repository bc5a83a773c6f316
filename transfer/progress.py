"""Progress of long steps, with an ETA: Keras's progress bar on a terminal, plain lines elsewhere.

The library never prints: it reports through the `log` callable it is given. A
`log` that writes to a terminal says so with a true `terminal` attribute (the CLI's
`Console`); then a step shows `keras.utils.Progbar` (the bar Keras's own `fit`
draws: units done, ETA, the latest values). Any other `log` (a CI log, a file, a
test's list) gets a plain line about every fifth of the way and at the end, each
with the elapsed time and the ETA.
"""

from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np


class Progress:
    """`total` units of work (epochs, runs, images) reported through `log`.

    Args:
        log: where lines go; a true `log.terminal` asks for a bar.
        total: units in the whole step.
        label: what the line starts with ("pretrain epoch", "run").
        start: units already done before this process (a resumed run): the ETA counts
            only what this process did.
        every: a plain line every `every` units (default: a fifth of the total).
        bar: False for plain lines even on a terminal (a line per unit that says what it did).
    """

    def __init__(self, log: Callable[[str], None], total: int, label: str, *, start: int = 0,
                 every: int | None = None, unit: str = "step", bar: bool = True):
        self.log, self.total, self.label, self.start = log, max(int(total), 0), label, int(start)
        self.every = every or max(1, self.total // 5)
        self._began = time.perf_counter()
        self._shown = self.start  # units done at the last plain line
        self._first = None  # (time, units) at the first update: the pace leaves out the first unit's
        self._bar = None    # one-off costs (tracing the training step)
        if bar and getattr(log, "terminal", False) and self.total > self.start:
            self._bar = keras.utils.Progbar(self.total - self.start, unit_name=unit)

    def update(self, done: int, values: dict | None = None, note: str = "") -> None:
        """`done` units finished in all (resumed ones included); `values` shown beside them,
        `note` after them (plain lines only)."""
        values = {k: v for k, v in (values or {}).items() if _number(v)}
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)
        if self._bar is not None:
            self._bar.update(done - self.start, values=list(values.items()), finalize=done >= self.total)
            return
        if done <= self._shown or (done // self.every == self._shown // self.every and done < self.total):
            return  # a line when a multiple of `every` is reached or passed, and at the end (once)
        self._shown = done
        elapsed = now - self._began
        since, at = self._first
        rate = (now - since) / (done - at) if done > at else elapsed / max(done - self.start, 1)
        eta = f", ETA {_duration(rate * (self.total - done))}" if done < self.total else ""
        shown = "".join(f" {k}={v:.4f}" for k, v in values.items())
        self.log(f"{self.label} {done}/{self.total}{shown}{note} ({_duration(elapsed)}{eta})")


def _number(v) -> bool:
    """A finite number (a NaN marks a value not computed this time, e.g. the online probe)."""
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """12.3s, 45s, 3m05s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
