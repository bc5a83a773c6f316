"""Stopping a run politely: SIGINT (Ctrl-C), SIGTERM (a scheduler, `timeout`, `kill`) and
SIGHUP (a closed terminal) all end a run the same way.

While `handled()` is active, each of these signals raises `Stopped` in the main thread at
the next safe point (`check()`: after a training step, between files or batches):
the run's staging directory is kept for a resume (`transfer.artifacts`), temporary files
are removed on the way out (their finalizers run), and the CLI prints one line and exits
with 128 + the signal's number. A signal that arrives inside `critical()` (appending a
results row, moving a run directory into place, writing a file atomically) is held until
that block ends, so that no file is left half-written or half-moved. Where nothing has
been written yet and Python cannot run a handler (joining a cluster, inside TensorFlow's
C++), `immediate()` lets the signal end the process at once instead.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

GRACE = 5.0  # seconds a signal waits for a safe point before it is raised wherever the program is

_state = {"depth": 0, "pending": None, "since": 0.0}


class Stopped(BaseException):
    """The run was stopped by a signal (a BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way up records it as a failure)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame):
    """Note the signal; it takes effect at the next `check()` (a safe point: after a training
    step, between files or batches). Raising at an arbitrary bytecode inside TensorFlow can
    turn the stop into another error, so only a signal repeated, or one still waiting after
    GRACE seconds (a long step), is raised where the program is, outside critical blocks."""
    if _state["pending"] is None:  # the first: wait for a safe point
        _state["pending"], _state["since"] = signum, time.monotonic()
        timer = threading.Timer(GRACE, _past_grace, (signum,))
        timer.daemon = True
        timer.start()
        return
    if not _state["depth"]:  # repeated, or the grace is over (_past_grace): stop here
        signum, _state["pending"] = _state["pending"], None
        raise Stopped(signum)


def _past_grace(signum: int) -> None:
    if _state["pending"] == signum:
        _thread.interrupt_main(signum)  # the handler again, in the main thread: now it raises


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handled():
    """Within the block, SIGINT, SIGTERM and SIGHUP stop the run (`Stopped`; main thread only)."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["pending"] = None


def check() -> None:
    """A safe point: raise `Stopped` for a signal that arrived (outside any critical block)."""
    if _state["pending"] is not None and not _state["depth"] and _main_thread():
        signum, _state["pending"] = _state["pending"], None
        raise Stopped(signum)


@contextlib.contextmanager
def critical():
    """A block that a stop signal does not interrupt: the signal takes effect when it ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    check()


@contextlib.contextmanager
def immediate():
    """Within the block, the stop signals end the process at once (their default action):
    for waits inside C++ that never return to Python, before anything was written. A signal
    that arrived just before the block (noted, waiting for a safe point) stops the run as it
    enters: inside, no check() comes and the grace period's second delivery finds no Python
    handler, so the signal would be lost until the wait ended."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_DFL) for s in SIGNALS}  # first, so that none falls in between
    try:
        check()
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (for removing what a killed process left behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary directory named `<prefix><pid>-...`, removed when it is garbage collected
    or the process exits (a stop signal included); the ones of the same prefix that a
    killed process (SIGKILL, a crash) left behind are removed first."""
    remove_stale(prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def remove_stale(prefix: str, folder: str | None = None) -> list[str]:
    """Remove `<prefix><pid>-*` directories whose process is gone; returns their paths."""
    folder = folder or tempfile.gettempdir()
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        path = os.path.join(folder, name)
        if match and int(match.group(1)) != os.getpid() and not alive(int(match.group(1))) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
