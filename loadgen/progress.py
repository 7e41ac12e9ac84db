"""A one-line progress display on stderr (a new line every few seconds when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None,
                 label: str = "loadgen") -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.label = label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._started = time.monotonic()

    def update(self, sent: int, done: int, in_flight: int, errors: int,
               force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self.tty else 5.0):
            return
        self._last = now
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{self.label}] [{bar}] {done}/{self.total} done, {sent} sent, "
                f"{in_flight} in flight, {errors} errors, {now - self._started:5.1f}s")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
