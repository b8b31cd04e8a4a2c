"""A pass that runs on its own thread when kicked or when due, and never loses a kick.

Why not an APScheduler job: a job allowed one instance drops a "run now"
that arrives while it runs, which the drain must never do (a file saved
during a drain would wait for the next one). A worker is one thread and one
condition: a kick sets a flag under the condition, the thread takes it
before each pass, so a kick that arrives during a pass causes exactly one
more pass. Between passes the thread sleeps until a kick or the time the
last pass said it is next due (for the drain: the queue's next due time);
no polling.

Each kick gets a ticket; `wait(ticket)` returns once a pass that started
after the kick has finished, which is what `reconcile --wait` needs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from objlib_daemon.logging import get_logger

log = get_logger("objlibd.worker")

# A pass gets the options merged from every kick it covers and returns when
# it is next due (None: only on a kick).
Body = Callable[[dict[str, Any]], float | None]


class Worker:
    """One thread running `body`; `at_least_every` bounds the sleep between passes."""

    def __init__(self, name: str, body: Body, *, at_least_every: float | None = None) -> None:
        self.name = name
        self.body = body
        self.at_least_every = at_least_every
        self._cond = threading.Condition()
        self._kicked = False
        self._due: float | None = None  # wall clock, like the queue's due times
        self._options: dict[str, Any] = {}
        self._requested = 0  # tickets handed out
        self._done = 0  # every ticket <= this is covered by a finished pass
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.at_least_every is not None:
            self._due = time.time() + self.at_least_every
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kick(self, at: float | None = None, **options: Any) -> int:
        """Ask for a pass now (or at `at`); returns a ticket for `wait`."""
        with self._cond:
            self._requested += 1
            for name, value in options.items():
                self._merge(name, value)
            if at is None or at <= time.time():
                self._kicked = True
            else:
                self._due = at if self._due is None else min(self._due, at)
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until a pass that started after `ticket` was issued has finished."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= ticket or self._closed, timeout)

    def close(self) -> None:
        """No pass after the one running; every waiter is released."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the pass in flight after `close`; False if it outlived `timeout`."""
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
        return not self.is_alive()

    # --- the thread -----------------------------------------------------------------------

    def _merge(self, name: str, value: Any) -> None:
        old = self._options.get(name)
        if isinstance(value, bool):
            self._options[name] = bool(old) or value
        elif isinstance(value, set):
            self._options[name] = (old or set()) | value
        elif value is not None:
            self._options[name] = value

    def _take(self) -> tuple[dict[str, Any], int] | None:
        """Sleep until kicked or due (under the condition); the pass's options and ticket."""
        while not self._closed:
            now = time.time()
            if self._kicked or (self._due is not None and self._due <= now):
                self._kicked = False
                if self._due is not None and self._due <= now:
                    self._due = None
                options, self._options = self._options, {}
                return options, self._requested
            # Condition.wait counts on the monotonic clock, which stops during a
            # suspend; the due time is wall clock, so it is re-read on waking.
            self._cond.wait(None if self._due is None else self._due - now)
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
            if taken is None:
                return
            options, covering = taken
            again: float | None = None
            try:
                again = self.body(options)
            except Exception:  # a pass must never end the thread with its exception unseen
                log.exception("pass failed", worker=self.name)
            if self.at_least_every is not None:
                floor = time.time() + self.at_least_every
                again = floor if again is None else min(again, floor)
            with self._cond:
                self._done = max(self._done, covering)
                if again is not None:
                    self._due = again if self._due is None else min(self._due, again)
                self._cond.notify_all()
