"""The Daemon: one Workspace, its producers, its jobs, and the rules for when they may run.

Who may do what (design.md):
- producers (watcher -> debouncer, reconcile) only enqueue paths;
- the drain is the only caller of the applier; it, the orphan sweep, prune
  and audit hold `writer`, so one of them touches the store at a time and
  `resolve_intents` never sees another pass's upload in flight (jobs.py);
- nothing that reads the library or the store runs while paused, and nothing
  that reads the library runs while the volume is unavailable. The queue is
  kept; nothing is marked missing.

Threads: the main thread supervises and the volume monitor reports
transitions (lifecycle.py, supervisor.py); APScheduler's pool runs the jobs
(jobs.py); watchdog and the debouncer feed the queue; the control server
answers requests (answers.py); SIGHUP applies a new config (reload.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.daemon import answers, reload, sdnotify
from objlib_daemon.daemon.control import ControlServer, socket_path
from objlib_daemon.daemon.debounce import Debouncer
from objlib_daemon.daemon.jobs import Jobs
from objlib_daemon.daemon.scheduler import (
    DRAIN_INTERVAL,
    FIRST_SWEEP_DELAY,
    PRUNE_INTERVAL,
    KickedJob,
    MaxInstancesFilter,
    make_scheduler,
    periodic,
    utc,
)
from objlib_daemon.daemon.supervisor import Supervisor
from objlib_daemon.daemon.volume import VolumeMonitor
from objlib_daemon.daemon.watcher import OverflowHook, Watcher
from objlib_daemon.library.volume import VolumeState
from objlib_daemon.logging import get_logger
from objlib_daemon.state.db import Database
from objlib_daemon.stores.base import StoreError
from objlib_daemon.sync.passes import Engine
from objlib_daemon.workspace import Workspace, open_workspace

log = get_logger("objlibd.daemon")

RUNNING, PAUSED, UNAVAILABLE = "running", "paused", "volume unavailable"
# Errors kept for `status`: enough to see a pattern, small enough to read.
LAST_ERRORS = 20


class Daemon:
    """Everything `objlibd run` keeps alive. `start()`, then `supervise()` ticks, `stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ws: Workspace | None = None
        self.ro_db: Database | None = None
        self.started_at = time.time()
        self.stopping = threading.Event()
        self.state_lock = threading.RLock()
        self.writer = threading.Lock()
        self.pass_stop = threading.Event()
        self.paused: str | None = None
        self.volume = VolumeState(False, "not checked yet")
        self.reconcile_skipped = False
        self.reconciled_since_mount = False
        self.reconciling = False
        self.draining = False
        self.drain_progress: Counter[str] = Counter()
        self.progress_lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)
        self.last_reconcile: dict[str, Any] | None = None
        self.pass_record: dict[str, Any] = {}
        self.last_drain: dict[str, Any] | None = None
        self.last_audit: dict[str, Any] | None = None
        self.watch_report: dict[str, Any] | None = None
        self.watch_limited = False
        self.scheduler = make_scheduler()
        self.watcher: Watcher | None = None
        self.debouncer: Debouncer | None = None
        self.monitor: VolumeMonitor | None = None
        self.control: ControlServer | None = None
        self.supervisor = Supervisor(self)
        self.overflow = OverflowHook(self.supervisor.on_overflow)
        self.drain_job: KickedJob | None = None
        self.reconcile_job: KickedJob | None = None
        self._max_filter = MaxInstancesFilter({"drain", "reconcile"})
        self.jobs = Jobs(self)

    @property
    def engine(self) -> Engine:
        assert self.ws is not None
        return self.ws.engine

    # --- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Open the library, serve the socket, start jobs; READY once DB + socket are up."""
        config = self.config
        self.ws = open_workspace(config)
        self.ro_db = Database(config.database_path, readonly=True)
        # Rows left claimed or indexing by the last run are the first drain's:
        # it resumes the imports the store accepted and re-queues the rest.
        try:
            resolved = self.engine.recovery.resolve_intents(
                busy={ix.intent for ix in self.engine.applier.resumable()}
            )
            if resolved:
                log.info("resolved uploads interrupted by the last run", count=resolved)
        except StoreError as exc:  # the store is down: the first drain tries again
            self.record_error("start", f"could not resolve interrupted uploads yet: {exc}")

        self.control = ControlServer(socket_path(config), self.handle)
        self.control.start()

        lib = self.ws.library
        self.debouncer = Debouncer(
            self.ws.db,
            lib.root,
            lib.eligibility,
            config.daemon.settle_seconds,
            on_flushed=lambda at: self.kick_drain(at),
            on_overload=lambda: self.kick_reconcile("event burst"),
            on_error=lambda message: self.record_error("events", message),
        )
        self.watcher = Watcher(
            lib.root, lib.eligibility, self.debouncer, on_root_gone=self.supervisor.on_root_gone
        )
        self._add_jobs()
        logging.getLogger("apscheduler.scheduler").addFilter(self._max_filter)
        self.scheduler.start()
        self.debouncer.start()
        self.overflow.install()
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        log.info(
            "daemon started",
            root=str(lib.root),
            store=f"{self.ws.meta.get('store_backend')}:{self.ws.meta.get('store_name')}",
            socket=str(self.control.path),
        )
        self.monitor = VolumeMonitor(
            lib.root, lib.library_id, config.daemon.volume_check_interval, self.supervisor.on_volume
        )
        self.monitor.start()

    def _add_jobs(self) -> None:
        d = self.config.daemon
        self.drain_job = KickedJob(
            self.scheduler, "drain", self.jobs.drain, interval=DRAIN_INTERVAL
        )
        self.reconcile_job = KickedJob(
            self.scheduler,
            "reconcile",
            self.jobs.reconcile,
            interval=periodic(d.reconcile_interval),
        )
        self.scheduler.add_job(
            self.jobs.orphan_sweep,
            "interval",
            seconds=periodic(d.orphan_sweep_interval),
            id="orphans",
            next_run_time=utc(time.time() + FIRST_SWEEP_DELAY),
        )
        self.scheduler.add_job(
            self.jobs.audit, "interval", seconds=periodic(d.audit_interval), id="audit"
        )
        if d.auto_prune:
            self.scheduler.add_job(self.jobs.prune, "interval", seconds=PRUNE_INTERVAL, id="prune")

    def stop(self, timeout: float) -> bool:
        """Finish the file in flight, flush the debouncer; False if work outlived `timeout`."""
        deadline = time.monotonic() + timeout
        sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing the file in flight")
        log.info("stopping")
        self.stopping.set()
        with self.state_lock:
            self.pass_stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        if self.watcher is not None:
            self.watcher.stop(deliver_pending=True)  # a clean stop loses no event
        self.overflow.remove()
        logging.getLogger("apscheduler.scheduler").removeFilter(self._max_filter)
        if self.debouncer is not None:
            self.debouncer.stop()  # writes the last second of events to the queue
        for job in (self.drain_job, self.reconcile_job):
            if job is not None:
                job.close()
        with contextlib.suppress(Exception):
            self.scheduler.shutdown(wait=False)
        while time.monotonic() < deadline and self._busy():
            time.sleep(0.05)
        clean = not self._busy()
        if self.control is not None:
            self.control.stop()
        if clean:
            if self.ro_db is not None:
                self.ro_db.close()
            if self.ws is not None:
                self.ws.close()
            log.info("stopped")
        else:
            log.warning(
                "work still running at the shutdown deadline; leaving it to the next start",
                timeout=timeout,
            )
        return clean

    def _busy(self) -> bool:
        return self.draining or self.reconciling or self.writer.locked()

    # --- supervision (main thread; supervisor.py) -----------------------------------------

    def supervise(self) -> None:
        """One tick: rebuild a dead watcher; called about every second."""
        self.supervisor.tick()

    def healthy(self) -> bool:
        """For WATCHDOG=1: every thread that should run is running."""
        return self.supervisor.healthy()

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.paused:
            return PAUSED
        if not self.volume.available:
            return UNAVAILABLE
        return RUNNING

    def may_read_library(self) -> bool:
        return not self.stopping.is_set() and not self.paused and self.volume.available

    def may_use_store(self) -> bool:
        return not self.stopping.is_set() and not self.paused

    def activity(self) -> str:
        if self.stopping.is_set():
            return "stopping"
        doing = []
        if self.reconciling:
            doing.append("reconciling")
        if self.draining:
            done = sum(self.drain_progress.values())
            doing.append(f"applying changes ({done} done this pass)")
        if doing:
            return ", ".join(doing)
        if self.paused:
            return f"paused ({self.paused})"
        if not self.volume.available:
            return "waiting for the volume"
        return "idle"

    def status_line(self) -> str:
        return f"{self.state}; {self.activity()}"

    def notify_status(self) -> None:
        sdnotify.notify(f"STATUS={self.status_line()}")

    def record_error(self, where: str, message: str) -> None:
        with self.progress_lock:
            self.last_errors.append({"at": time.time(), "where": where, "error": message[:500]})

    def clear_errors(self, *wheres: str) -> None:
        """A clean run of a job retires its earlier errors: `status` showed them
        long after their cause was gone (issue 15, finding 4)."""
        with self.progress_lock:
            kept = [e for e in self.last_errors if e["where"] not in wheres]
            self.last_errors.clear()
            self.last_errors.extend(kept)

    def pause(self, reason: str = "paused by the user") -> None:
        with self.state_lock:
            self.paused = reason
            self.pass_stop.set()
        log.info("paused", reason=reason)
        self.notify_status()

    def resume(self) -> None:
        with self.state_lock:
            was = self.paused
            self.paused = None
        if was:
            log.info("resumed")
        if self.reconcile_skipped:
            self.kick_reconcile("resume")
        self.kick_drain()
        self.notify_status()

    # --- jobs -----------------------------------------------------------------------------

    def kick_drain(self, at: float | None = None) -> int:
        return self.drain_job.kick(at) if self.drain_job is not None else 0

    def kick_reconcile(
        self, why: str, *, force: bool = False, allow_mass_missing: bool = False
    ) -> int:
        if self.reconcile_job is None:
            return 0
        return self.reconcile_job.kick(
            force=force, allow_mass_missing=allow_mass_missing, why={why}
        )

    def new_pass_stop(self) -> threading.Event:
        with self.state_lock:
            self.pass_stop = threading.Event()
            if not self.may_read_library():
                self.pass_stop.set()
            return self.pass_stop

    # --- the outside world: control requests and SIGHUP ---------------------------------

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        return answers.handle(self, message)

    def status(self) -> dict[str, Any]:
        return answers.live_status(self)

    def reload(self, new: Config) -> str:
        return reload.apply_config(self, new)
