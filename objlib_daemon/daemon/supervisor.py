"""The file watcher's keeper: start it, rebuild it when it dies, report its watch shortfall.

Why apart from runner.py: the runner owns the daemon's state and follows the
volume; this module holds the watcher's failure modes: an observer that
died, one that could not start (the inotify watch limit, an odd
filesystem), too few watches for the library. It returns what happened and
the runner reacts (a reconcile, a shorter reconcile interval); nothing here
acts on a path or on the daemon's state.

Threads: `revive` runs on the main thread about every second, `start` and
`stop` also on the volume monitor's; the runner's state lock serialises them.
"""

from __future__ import annotations

import time
from enum import Enum

from objlib_daemon.daemon.state import ErrorLog
from objlib_daemon.daemon.watcher import Watcher, WatchReport, check_watches, is_watch_limit
from objlib_daemon.logging import get_logger

log = get_logger("objlibd.daemon")

# A watcher that cannot start (watch limit, odd filesystem) is retried this often.
WATCHER_RETRY = 60.0


class Started(Enum):
    OK = "ok"
    FAILED = "failed"
    WATCH_LIMIT = "watch limit"  # until raised, only the periodic reconcile finds changes


class Supervisor:
    """Starts and rebuilds one Watcher; errors go to the daemon's error log."""

    def __init__(self, watcher: Watcher, errors: ErrorLog) -> None:
        self.watcher = watcher
        self.errors = errors
        self._failed_at: float | None = None

    def revive(self) -> Started | None:
        """Rebuild a dead watcher (or retry one that could not start); None if nothing to do."""
        watcher = self.watcher
        if watcher.is_alive():
            return None
        if watcher.running:
            log.error("the file watcher died; rebuilding it and reconciling")
            self.errors.record("watcher", "file watcher died; rebuilt")
        elif self._failed_at is not None and time.time() - self._failed_at < WATCHER_RETRY:
            return None
        return self.start()

    def start(self) -> Started:
        """A fresh observer (old watches are dead after a remount)."""
        try:
            self.watcher.start()
        except OSError as exc:
            self._failed_at = time.time()
            self.watcher.stop()
            if is_watch_limit(exc):
                message = (
                    f"cannot watch the library ({exc.strerror}): raise the limit with "
                    "`sudo sysctl fs.inotify.max_user_watches=524288`; until then only the "
                    "periodic reconcile finds changes"
                )
            else:
                message = f"cannot watch the library: {exc}"
            log.error(message)
            self.errors.record("watcher", message)
            return Started.WATCH_LIMIT if is_watch_limit(exc) else Started.FAILED
        self._failed_at = None
        return Started.OK

    def stop(self) -> None:
        self.watcher.stop()

    def check_watches(self) -> WatchReport | None:
        """Count the watches against the folders (slow on a big tree: not on the main thread)."""
        if not self.watcher.running:
            return None
        report = check_watches(self.watcher.root)
        if report.short:
            log.warning(report.advice())
            self.errors.record("watcher", report.advice())
        return report
