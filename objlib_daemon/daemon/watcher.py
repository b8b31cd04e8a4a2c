"""The file watcher: a watchdog observer whose handler turns events into queue keys.

It never decides anything about a file (docs/design.md: events are hints). It maps
an event to library-relative NFC keys, drops what eligibility rules out, and
hands the keys to the debouncer. What docs/platform-notes.md measured shapes it:

- one exception in a handler stops delivery for good, so the handler catches
  everything, and the supervisor rebuilds an observer that died anyway;
- an atomic save is only `moved(tmp -> file)`: both ends of a move are keys;
- a renamed folder is `DirMovedEvent` plus a move per file, a folder moved out
  of the tree is one `DirDeletedEvent`: each end of a folder event is one
  folder hint, which the scanner expands (sync/reconcile.py);
- the root itself vanishing is an unmount (macOS says so this way), never a
  mass delete: it only asks the volume monitor to look;
- queue overflow is lost silently except for a WARNING containing "overflow"
  on the `watchdog.observers` loggers: `OverflowHook` turns it into a reconcile;
- past `fs.inotify.max_user_watches` subfolders silently get no events:
  `check_watches` compares watches with folders.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from objlib_daemon.daemon.debounce import Debouncer
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.paths import BadName, relative_key
from objlib_daemon.library.scan import count_folders
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue

log = get_logger("objlibd.watcher")

# Created/Deleted/Moved/Closed plus folder events: Opened and DirModified are
# pure noise for us (docs/platform-notes.md). On Linux IN_CLOSE_WRITE marks the end
# of a write, so the per-write Modified events add nothing; FSEvents, kqueue and
# Windows have no close event, so there Modified is the only "content changed".
EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
if not sys.platform.startswith("linux"):
    EVENT_TYPES.append(FileModifiedEvent)

# A handler error is logged at most this often: a systematic one would
# otherwise write a line per event (tens of thousands a second).
ERROR_LOG_INTERVAL = 60.0
OVERFLOW_LOGGER = "watchdog.observers"
# On Linux watchdog holds every event behind an unpaired IN_MOVED_FROM (a file
# moved out, or a rename whose halves it read apart) for this long, to pair it
# with its IN_MOVED_TO; stopping the observer drops what it holds.
try:
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    MOVE_PAIRING_DELAY: float = InotifyMoveEventGrouper.delay
except ImportError:  # not Linux: nothing is held back
    MOVE_PAIRING_DELAY = 0.0
# How long after that delay the emitter may take to hand the released events over.
DELIVERY_MARGIN = 0.2


class _Handler(FileSystemEventHandler):
    """Delivers to the watcher; swallows every exception (one would end delivery)."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.watcher.handle(event)
        except Exception as exc:
            self.watcher.errors += 1
            now = time.monotonic()
            if now - self.watcher.last_error_log >= ERROR_LOG_INTERVAL:
                self.watcher.last_error_log = now
                log.error(
                    "event handler error (event dropped; the next reconcile covers it)",
                    error=repr(exc),
                    errors=self.watcher.errors,
                )


class Watcher:
    """One observer on the library root; `start()` always builds a fresh one."""

    def __init__(
        self,
        root: Path,
        eligibility: Eligibility,
        debouncer: Debouncer,
        *,
        on_root_gone: Callable[[], None],
    ) -> None:
        self.root = root
        self.eligibility = eligibility
        self.debouncer = debouncer
        self.on_root_gone = on_root_gone
        self._root_str = os.path.normpath(str(root))
        self._observer: Observer | None = None
        self._dir_ok_cache: dict[str, bool] = {}
        self.events = 0
        self.errors = 0
        self.last_error_log = float("-inf")
        self.started_at: float | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Watch the root recursively. Raises OSError (root absent, watch limit)."""
        self.stop()
        self._dir_ok_cache.clear()
        observer = Observer()
        observer.name = "watchdog-observer"
        observer.schedule(_Handler(self), self._root_str, recursive=True, event_filter=EVENT_TYPES)
        try:
            observer.start()
        except BaseException:
            observer.stop()
            raise
        self._observer = observer
        self.started_at = time.time()
        log.info("watching", root=self._root_str)

    def stop(self, *, deliver_pending: bool = False) -> None:
        """Stop watching. With `deliver_pending` (a clean shutdown, which promises
        to lose nothing) the events the kernel has already reported reach the
        debouncer first, including those held behind an unpaired move."""
        observer, self._observer = self._observer, None
        if observer is None:
            return
        if deliver_pending and observer.is_alive():
            self._deliver_pending(observer)
        try:
            observer.stop()
            if observer is not threading.current_thread():
                observer.join(timeout=5)
        except Exception as exc:  # a dead or half-started observer: nothing left to stop
            log.debug("observer stop", error=repr(exc))

    @staticmethod
    def _deliver_pending(observer: Observer) -> None:
        # Whatever was held is released after the pairing delay, then queued
        # for the dispatcher; wait for the dispatcher to have handled it all.
        time.sleep(MOVE_PAIRING_DELAY + DELIVERY_MARGIN)
        events = observer.event_queue
        with events.all_tasks_done:
            events.all_tasks_done.wait_for(lambda: events.unfinished_tasks == 0, timeout=2.0)

    def set_eligibility(self, eligibility: Eligibility) -> None:
        """New include/exclude rules (config reload)."""
        self.eligibility = eligibility
        self._dir_ok_cache.clear()

    @property
    def running(self) -> bool:
        return self._observer is not None

    def is_alive(self) -> bool:
        """The dispatcher thread and every emitter thread are alive."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(e.is_alive() for e in list(observer.emitters))

    # --- events -------------------------------------------------------------------------

    def handle(self, event: FileSystemEvent) -> None:
        self.events += 1
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if kind in ("deleted", "moved") and os.path.normpath(src) == self._root_str:
                self.on_root_gone()  # an unmount or a renamed root: never a deletion
                return
            self._folder(src)
            if kind == "moved":
                self._folder(os.fsdecode(event.dest_path))
            return
        if kind == "moved":
            self._file(src, queue.MOVED_FROM)
            self._file(os.fsdecode(event.dest_path), queue.EVENT)
        else:
            self._file(src, queue.EVENT)

    def _file(self, path: str, reason: str) -> None:
        rel = self._key(path)
        if rel is None or not self.eligibility.path_ok(rel):
            return
        parent = rel.rpartition("/")[0]
        if parent and not self._parents_ok(parent):
            return
        self.debouncer.add(rel, reason)

    def _folder(self, path: str) -> None:
        rel = self._key(path)
        if rel and self._parents_ok(rel):
            self.debouncer.add_folder(rel)

    def _key(self, path: str) -> str | None:
        try:
            return relative_key(self.root, path)
        except BadName:
            return None  # the reconcile reports it once

    def _parents_ok(self, folder: str) -> bool:
        """The folder and each folder above it is walked by the scanner (not excluded)."""
        cached = self._dir_ok_cache.get(folder)
        if cached is not None:
            return cached
        parent = folder.rpartition("/")[0]
        ok = self.eligibility.dir_ok(folder) and (not parent or self._parents_ok(parent))
        if len(self._dir_ok_cache) > 10_000:  # bounded: folders renamed all day long
            self._dir_ok_cache.clear()
        self._dir_ok_cache[folder] = ok
        return ok


# --- overflow ---------------------------------------------------------------------------


class OverflowHook(logging.Handler):
    """A logging handler on watchdog's loggers: "overflow" in a record -> callback.

    watchdog 7.1 has no API for a kernel queue overflow; it only logs a
    WARNING (docs/platform-notes.md). This handler never raises into watchdog.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "overflow" in record.getMessage().lower():
                self.count += 1
                self.on_overflow()
        except Exception:  # a logging handler must not break the emitter thread
            pass

    def install(self) -> OverflowHook:
        logger = logging.getLogger(OVERFLOW_LOGGER)
        logger.addHandler(self)
        # Child loggers inherit this level: keep their WARNINGs from being
        # filtered out before they reach us, whatever the root level is.
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        return self

    def remove(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self)


# --- the inotify watch limit ------------------------------------------------------------


@dataclass(frozen=True)
class WatchReport:
    watches: int | None
    directories: int
    limit: int | None

    @property
    def short(self) -> bool:
        return self.watches is not None and self.watches < self.directories

    def advice(self) -> str:
        wanted = max(524288, 2 * self.directories)
        return (
            f"only {self.watches} of {self.directories} folders are watched "
            f"(fs.inotify.max_user_watches = {self.limit}); changes in the rest are found "
            f"only by the periodic reconcile. Raise the limit: "
            f"`sudo sysctl fs.inotify.max_user_watches={wanted}` (and put it in "
            f"/etc/sysctl.d/ to keep it)"
        )


def inotify_watches() -> int | None:
    """Inotify watches this process holds (Linux: /proc/self/fdinfo), else None."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    total = 0
    found = False
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                total += sum(1 for line in fh if line.startswith("inotify wd:"))
            found = True
        except OSError:
            continue
    return total if found else None


def max_user_watches() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def check_watches(root: Path) -> WatchReport:
    return WatchReport(inotify_watches(), count_folders(root), max_user_watches())


def is_watch_limit(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE)
