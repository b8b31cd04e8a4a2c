"""Progress on a terminal: one line per phase with count, rate and ETA.

Quiet unless stderr is a TTY (and not `-q`/`--json`): logs and pipes get the
summary only. A ticker thread redraws the line while nothing finishes (a
scan, a long import, a daemon's reconcile), so the user sees time pass
instead of a frozen cursor; counts come from the callers.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# Redraw period: smooth enough to look alive, rare enough to cost nothing.
TICK = 0.25
SPINNER = "|/-\\"


class Progress:
    """`phase(name, total)`, `advance()` from any thread, `close()` at the end."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._lock = threading.Lock()
        self._name = ""
        self._unit = ""
        self._total: int | None = None
        self._done = 0
        self._started = time.monotonic()
        self._ticks = 0
        self._width = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def phase(self, name: str, total: int | None = None, unit: str = "files") -> None:
        """Start a phase (the previous one's last line stays on screen)."""
        if not self.enabled:
            return
        with self._lock:
            if self._name:
                self._draw(final=True)
            self._name, self._unit, self._total = name, unit, total
            self._done = 0
            self._started = time.monotonic()
            self._draw()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def advance(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._done += n
            self._draw()

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._name:
                self._draw(final=True)
            self._name = ""

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                if self._name:
                    self._ticks += 1
                    self._draw()

    def _draw(self, *, final: bool = False) -> None:
        """One line, rewritten in place with `\\r` (caller holds the lock)."""
        line = self._name + ": " + self._line()
        if not final:
            line = f"{SPINNER[self._ticks % len(SPINNER)]} {line}"
        pad = max(0, self._width - len(line))
        self._width = 0 if final else len(line)
        self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
        self.stream.flush()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        done, total = self._done, self._total
        if total is None and not done:  # a phase with nothing to count: time only
            return _span(elapsed)
        count = f"{done}/{total} {self._unit}" if total is not None else f"{done} {self._unit}"
        if not done:
            return f"{count}, {_span(elapsed)}"
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{count}, {rate:.1f}/s, {_span(elapsed)}"
        if total and rate > 0 and done < total:
            text += f", ETA {_span((total - done) / rate)}"
        return text


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def for_terminal(as_json: bool, quiet: bool = False) -> Progress:
    """Progress on stderr when it is a terminal and the output is for a person."""
    return Progress(sys.stderr.isatty() and not as_json and not quiet)
