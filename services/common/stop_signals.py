"""Waiting for SIGTERM/SIGINT without doing anything inside a signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly in the
middle of code that holds a lock; a handler that takes a lock itself (logging, setting a
``threading.Event``) then waits forever for a lock its own thread holds. That happened to a
service given two SIGTERMs 8 ms apart. So the handler here does nothing: the interpreter's
C-level handler writes the signal number to a pipe (``signal.set_wakeup_fd``) and the main
thread reads it, outside any handler. Later signals are absorbed the same way while the
service stops.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _absorb(_signum: int, _frame: object) -> None:
    """Deliberately empty: the signal number reaches the main thread through the pipe."""


def wait_for_stop_signal(done: Callable[[], bool] | None = None,
                         poll_s: float = 0.5) -> int | None:
    """Blocks the main thread until SIGTERM or SIGINT arrives and returns its number, or
    until ``done()`` is true (checked every ``poll_s``) and returns None."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _absorb)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        return _read_stop_signal(read_fd, done, poll_s)
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


def _read_stop_signal(read_fd: int, done: Callable[[], bool] | None,
                      poll_s: float) -> int | None:
    wanted = {int(s) for s in STOP_SIGNALS}
    while True:
        ready, _, _ = select.select([read_fd], [], [], poll_s if done is not None else None)
        if not ready:
            if done is not None and done():
                return None
            continue
        for signum in os.read(read_fd, 64):
            if signum in wanted:
                return signum
