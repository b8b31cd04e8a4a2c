"""The debouncer: the only state the daemon holds in memory, for at most a second.

Watchdog delivers tens of thousands of events a second, several per saved
file. They are collapsed here into one (path -> reason) map and written to the
durable queue in ONE batched UPSERT per flush (platform-notes.md: ~211k rows/s
batched against ~1.8k/s one commit per row). Each path is due `settle_seconds`
after its own last event, not after the flush that wrote it (that cost every
save half a second: docs/benchmarks.md, benchmark 8): a later event for it
bumps the row again and pushes its due time, so a file still being written is
not read half-way.

Directory events are expanded here, off the watchdog thread: a folder that
appeared (created, or moved in) is walked for eligible files; a folder that
went away (deleted, or moved out or renamed) contributes every tracked path
below it from the database, since a move out of the tree sends no event per
file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import select

from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.paths import BadName, key, resolve
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File

log = get_logger("objlibd.debounce")

# How long the flusher gathers a burst before writing it: "at least every
# second" (the issue), and half of that keeps a 2 s settle time honest.
FLUSH_INTERVAL = 0.5
# Beyond this many distinct pending paths, tracking each one costs more than a
# reconcile walk (which re-finds all of them): drop the set and ask for one.
# Watchdog's measured 18-32k events/s cannot normally fill it in one interval.
MAX_PENDING = 50_000
# Longest wait between retries of a failing queue write.
MAX_BACKOFF = 30.0


class Debouncer:
    """Collects paths from the watcher; a background thread flushes them to the queue."""

    def __init__(
        self,
        db: Database,
        root: Path,
        eligibility: Eligibility,
        settle_seconds: float,
        *,
        on_flushed: Callable[[float], None],
        on_overload: Callable[[], None],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.root = root
        self.eligibility = eligibility
        self.settle_seconds = settle_seconds
        self.on_flushed = on_flushed
        self.on_overload = on_overload
        self.on_error = on_error
        self._lock = threading.Lock()
        self._paths: dict[str, tuple[str, float]] = {}  # path -> (reason, last event)
        self._appeared: set[str] = set()  # folders to walk
        self._vanished: set[str] = set()  # folders whose tracked paths to look at
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushed = 0  # paths written since start, for status
        self.last_flush_at: float | None = None
        self.failures = 0  # consecutive failed flushes

    # --- producers (any thread; O(1), never raise) ---------------------------------

    def add(self, path: str, reason: str = queue.EVENT) -> None:
        with self._lock:
            self._paths[path] = (reason, time.monotonic())
            overloaded = len(self._paths) > MAX_PENDING
            if overloaded:
                self._paths.clear()
                self._appeared.clear()
                self._vanished.clear()
        if overloaded:
            log.warning("event burst too large to track per path; asking for a reconcile")
            self.on_overload()
        self._wake.set()

    def add_folder(self, path: str, *, present: bool) -> None:
        with self._lock:
            (self._appeared if present else self._vanished).add(path)
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._paths) + len(self._appeared) + len(self._vanished)

    # --- the flusher ------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="debouncer", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and write whatever is still held (shutdown must lose nothing)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()  # idle: no timer, no polling
            if self._stop.is_set():
                break
            # Gather the rest of the burst, but never longer than the settle
            # time: a path cannot be ready before it is in the queue.
            self._stop.wait(min(FLUSH_INTERVAL, max(0.05, self.settle_seconds)))
            self._wake.clear()
            self.flush()
            if self.failures:
                # The database refused the write (disk full, locked for long):
                # back off, keeping the events, instead of retrying every 0.5 s.
                self._stop.wait(min(MAX_BACKOFF, FLUSH_INTERVAL * 2**self.failures))

    def flush(self) -> int:
        """One transaction for everything gathered; on failure keep it for the next try."""
        with self._lock:
            paths, self._paths = self._paths, {}
            appeared, self._appeared = self._appeared, set()
            vanished, self._vanished = self._vanished, set()
        if not (paths or appeared or vanished):
            return 0
        items = {path: reason for path, (reason, _at) in paths.items()}
        try:
            for folder in appeared:
                for path in self._walk(folder):
                    items.setdefault(path, queue.EVENT)
            # Due times are wall-clock (the queue outlives the process); events
            # were timed on the monotonic clock.
            now, mono = time.time(), time.monotonic()
            not_before = now + self.settle_seconds
            due = {p: now - (mono - at) + self.settle_seconds for p, (_r, at) in paths.items()}
            with self.db.session() as s:
                for folder in vanished:
                    below = select(File.path).where(
                        File.path.startswith(folder + "/", autoescape=True)
                    )
                    for path in s.scalars(below):
                        items.setdefault(path, queue.MOVED_FROM)
                queue.enqueue(s, items.items(), not_before=not_before, due=due)
        except Exception as exc:
            self.failures += 1
            if self.failures == 1:
                log.exception("could not write events to the queue; keeping them to retry")
                if self.on_error is not None:
                    self.on_error(f"could not queue file events ({exc}); keeping them to retry")
            else:
                log.debug("queue write failed again", failures=self.failures, error=repr(exc))
            with self._lock:
                for path, event in paths.items():
                    self._paths.setdefault(path, event)
                self._appeared |= appeared
                self._vanished |= vanished
            self._wake.set()
            return 0
        if self.failures:
            log.info("events written to the queue again", after_failures=self.failures)
        self.failures = 0
        self.flushed += len(items)
        self.last_flush_at = time.time()
        if items:
            log.debug("events flushed", paths=len(items))
            self.on_flushed(min(due.values(), default=not_before))
        return len(items)

    def _walk(self, folder: str) -> Iterator[str]:
        """Eligible files below a folder that just appeared (symlinks not followed)."""
        if not self.eligibility.dir_ok(folder):
            return
        stack = [resolve(self.root, folder)]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    entries = list(it)
            except OSError:
                continue  # gone again, or unreadable: the reconcile reports it
            for entry in entries:
                try:
                    rel = key(os.path.relpath(entry.path, self.root))
                    if entry.is_dir(follow_symlinks=False):
                        if self.eligibility.dir_ok(rel):
                            stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False) and self.eligibility.path_ok(rel):
                        yield rel
                except (OSError, BadName):
                    continue
