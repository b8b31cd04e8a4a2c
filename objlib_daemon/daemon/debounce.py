"""The debouncer: the only state the daemon holds in memory, for at most a second.

Watchdog delivers tens of thousands of events a second, several per saved
file. They are collapsed here into one (key -> reason) map and written to the
durable queue in ONE batched UPSERT per flush (docs/benchmarks.md: ~211k
rows/s batched against ~1.8k/s one commit per row). Each key is due
`settle_seconds` after its own last event, not after the flush that wrote it
(that cost every save half a second: docs/benchmarks.md, benchmark 8): a later
event for it bumps the row again and pushes its due time, so a file still
being written is not read half-way.

It only holds hints; it never walks a folder or reads the `files` table. A
folder event (created, deleted, moved) is one folder hint, which the scanner
expands when it is due (sync/reconcile.py, `expand_due`). The caps are
Syncthing's watch aggregator's (lib/watchaggregator): a folder with more than
`FOLDER_CAP` keys held directly in it within one gathering window is held as
one hint of that folder instead (and counts as one key in its parent, which
may collapse in turn); a held folder hint absorbs every later event below it;
beyond `MAX_PENDING` keys in all, the whole library is one reconcile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database

log = get_logger("objlibd.debounce")

# How long the flusher gathers a burst before writing it: "at least every
# second" (the issue), and half of that keeps a 2 s settle time honest.
FLUSH_INTERVAL = 0.5
# Keys held directly in one folder (files and subfolder hints) within one
# window before the folder is held as one hint instead. Syncthing's
# maxFilesPerDir. Below it a key costs one queue row and one look by the
# applier; above it, one walk of the folder (one listing and one stat per
# file, with the mtime shortcut) and one range read of its rows find the same
# changes, while an unzip or a copy of thousands of files into one folder
# stays one row instead of thousands.
FOLDER_CAP = 128
# Beyond this many keys held in all, tracking each costs more than a
# reconcile walk (which re-finds all of them): drop them and ask for one.
# Watchdog's measured 18-32k events/s cannot normally fill it in one interval.
MAX_PENDING = 50_000
# Longest wait between retries of a failing queue write.
MAX_BACKOFF = 30.0


def parent_of(key: str) -> str:
    return key.rpartition("/")[0]


class Debouncer:
    """Collects paths and folder hints from the watcher; a thread flushes them to the queue."""

    def __init__(
        self,
        db: Database,
        settle_seconds: float,
        *,
        on_flushed: Callable[[float], None],
        on_overload: Callable[[], None],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.settle_seconds = settle_seconds
        self.on_flushed = on_flushed
        self.on_overload = on_overload
        self.on_error = on_error
        self._lock = threading.Lock()
        self._paths: dict[str, tuple[str, float]] = {}  # path -> (reason, last event)
        self._folders: dict[str, float] = {}  # folder hint -> last event
        self._in_folder: dict[str, set[str]] = {}  # folder -> keys held directly in it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # consecutive failed flushes

    # --- producers (any thread; cheap, never raise) ------------------------------------

    def add(self, path: str, reason: str = queue.EVENT) -> None:
        """Look at this file."""
        self._hold(path, reason)

    def add_folder(self, folder: str) -> None:
        """Look at everything below this folder (it appeared, went away, or was renamed)."""
        self._hold(folder, None)

    def pending(self) -> int:
        with self._lock:
            return len(self._paths) + len(self._folders)

    def _hold(self, key: str, reason: str | None) -> None:
        with self._lock:
            self._track(key, reason, time.monotonic())
            overloaded = len(self._paths) + len(self._folders) > MAX_PENDING
            if overloaded:
                self._paths.clear()
                self._folders.clear()
                self._in_folder.clear()
        if overloaded:
            log.warning("event burst too large to track per path; asking for a reconcile")
            self.on_overload()
        self._wake.set()

    def _track(self, key: str, reason: str | None, now: float) -> None:
        """Hold `key` (a file with its reason, or a folder hint when `reason` is
        None) unless a folder hint above it covers it; collapse its folder into
        one hint when the folder is over its cap. Called with the lock held."""
        folder = parent_of(key)
        above = folder
        while above and self._folders:
            if above in self._folders:
                self._folders[above] = now  # covered: the hint's scan sees it
                return
            above = parent_of(above)
        held = self._in_folder.setdefault(folder, set())
        if key not in held and folder and len(held) >= FOLDER_CAP:
            for child in self._in_folder.pop(folder):
                self._paths.pop(child, None)
                self._folders.pop(child, None)
            log.debug("folder over its event cap: one scan of it instead", folder=folder)
            self._track(folder, None, now)
            return
        held.add(key)
        if reason is None:
            self._folders[key] = now
        else:
            self._paths[key] = (reason, now)

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
            folders, self._folders = self._folders, {}
            self._in_folder = {}
        if not (paths or folders):
            return 0
        items = {path: reason for path, (reason, _at) in paths.items()}
        held = {path: at for path, (_reason, at) in paths.items()}
        for folder, at in folders.items():
            items[queue.folder_key(folder)] = queue.FOLDER
            held[queue.folder_key(folder)] = at
        # Due times are wall-clock (the queue outlives the process); events
        # were timed on the monotonic clock.
        now, mono = time.time(), time.monotonic()
        due = {key: now - (mono - at) + self.settle_seconds for key, at in held.items()}
        try:
            with self.db.session() as s:
                queue.enqueue(s, items.items(), due=due)
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
                for folder, at in folders.items():
                    self._folders.setdefault(folder, at)
            self._wake.set()
            return 0
        if self.failures:
            log.info("events written to the queue again", after_failures=self.failures)
        self.failures = 0
        log.debug("events flushed", rows=len(items))
        self.on_flushed(min(due.values()))
        return len(items)
