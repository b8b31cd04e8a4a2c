"""Supervision: keep the file watcher alive and follow the volume as it comes and goes.

Why apart from runner.py: the Daemon holds state and the rules for what may
run; this module holds the reactions to the world changing under it: the
volume monitor's transitions, an observer that died or could not start (the
inotify watch limit), too few watches for the library, events lost to a
queue overflow. Each ends in a reconcile being kicked (or the drain being
stopped), never in a path being acted on here.

Threads: `tick` runs on the main thread about every second, `on_volume` on
the volume monitor's; `on_root_gone` and `on_overflow` come from watchdog's
threads and only ask.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from objlib_daemon.daemon.scheduler import LIMITED_RECONCILE_INTERVAL, periodic
from objlib_daemon.daemon.watcher import check_watches, is_watch_limit
from objlib_daemon.library.volume import VolumeState
from objlib_daemon.logging import get_logger

if TYPE_CHECKING:
    from objlib_daemon.daemon.runner import Daemon

log = get_logger("objlibd.daemon")

# A watcher that cannot start (watch limit, odd filesystem) is retried this often.
WATCHER_RETRY = 60.0


class Supervisor:
    """The watcher's keeper, bound to one Daemon (its lock guards volume and watcher)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._watcher_failed_at: float | None = None

    def tick(self) -> None:
        """Rebuild a dead watcher (or retry one that could not start)."""
        d = self.d
        if d.stopping.is_set():
            return
        with d.state_lock:
            if not d.volume.available or d.watcher is None:
                return
            if d.watcher.is_alive():
                return
            if d.watcher.running:
                log.error("the file watcher died; rebuilding it and reconciling")
                d.record_error("watcher", "file watcher died; rebuilt")
            elif (
                self._watcher_failed_at is not None
                and time.time() - self._watcher_failed_at < WATCHER_RETRY
            ):
                return
            if self._start_watcher():
                d.kick_reconcile("watcher restarted")

    def healthy(self) -> bool:
        """For WATCHDOG=1: every thread that should run is running."""
        d = self.d
        parts = [
            d.scheduler.running,
            d.debouncer is not None and d.debouncer.is_alive(),
            d.control is not None and d.control.is_alive(),
            d.monitor is not None and d.monitor.is_alive(),
        ]
        if d.volume.available and d.watcher is not None and d.watcher.running:
            parts.append(d.watcher.is_alive())
        return all(parts)

    def on_volume(self, state: VolumeState) -> None:
        """From the monitor thread: the volume came, went, or was remounted."""
        d = self.d
        with d.state_lock:
            d.volume = state
            if d.stopping.is_set():
                return
            if state.available:
                # Old watches are dead after a remount: always a fresh observer.
                self._start_watcher()
                d.reconciled_since_mount = False
            else:
                d.pass_stop.set()  # the drain stops after the file in flight
                if d.watcher is not None:
                    d.watcher.stop()
        if state.available:
            d.kick_reconcile("mount")
            d.kick_drain()
        d.notify_status()

    def on_root_gone(self) -> None:
        # From a watchdog thread: only ask; the monitor thread decides.
        if self.d.monitor is not None:
            self.d.monitor.request_check()

    def on_overflow(self) -> None:
        log.warning("file events were lost (watchdog queue overflow); reconciling")
        self.d.record_error("watcher", "event queue overflow; reconcile requested")
        self.d.kick_reconcile("overflow")

    def _start_watcher(self) -> bool:
        d = self.d
        assert d.watcher is not None
        try:
            d.watcher.start()
        except OSError as exc:
            self._watcher_failed_at = time.time()
            d.watcher.stop()
            if is_watch_limit(exc):
                message = (
                    f"cannot watch the library ({exc.strerror}): raise the limit with "
                    "`sudo sysctl fs.inotify.max_user_watches=524288`; until then only the "
                    "periodic reconcile finds changes"
                )
                self._limit_reconcile_interval()
            else:
                message = f"cannot watch the library: {exc}"
            log.error(message)
            d.record_error("watcher", message)
            return False
        self._watcher_failed_at = None
        d.scheduler.add_job(self._check_watches, id="watch-check", replace_existing=True)
        return True

    def _check_watches(self) -> None:
        d = self.d
        watcher = d.watcher
        if watcher is None or not watcher.running:
            return
        report = check_watches(watcher.root)
        d.watch_report = {
            "watches": report.watches,
            "directories": report.directories,
            "limit": report.limit,
        }
        if report.short:
            log.warning(report.advice())
            d.record_error("watcher", report.advice())
            self._limit_reconcile_interval()

    def _limit_reconcile_interval(self) -> None:
        d = self.d
        if d.watch_limited or d.reconcile_job is None:
            return
        d.watch_limited = True
        interval = min(periodic(d.config.daemon.reconcile_interval), LIMITED_RECONCILE_INTERVAL)
        d.reconcile_job.reschedule(interval)
        log.warning(
            "reconcile interval shortened while not every folder is watched", seconds=interval
        )
