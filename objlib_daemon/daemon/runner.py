"""The Daemon: one Workspace, its producers, its passes, and the one owner of their state.

Who may do what (docs/design.md):
- producers (watcher -> debouncer, reconcile) only enqueue paths;
- the drain is the only caller of the applier; it, the orphan sweep, prune
  and audit hold `writer`, so one of them touches the store at a time and
  `resolve_intents` never sees another pass's upload in flight (jobs.py);
- nothing that reads the library or the store runs while paused, and nothing
  that reads the library runs while the volume is unavailable. The queue is
  kept; nothing is marked missing.

Only this module writes the daemon's state (state.py): the pass bodies
(jobs.py), the watcher's keeper (supervisor.py) and reload (reload.py) get
what they need and return what changed, and it is applied here.

Threads: the main thread supervises (lifecycle.py) and the volume monitor
reports transitions; the drain and the reconcile run on their own workers
(worker.py), the sweeps on APScheduler's pool; watchdog and the debouncer
feed the queue; the control server answers requests (the `answer` given).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.base import SchedulerNotRunningError

from objlib_daemon.config import Config
from objlib_daemon.daemon import jobs, reload, sdnotify
from objlib_daemon.daemon.control import ControlServer, socket_path
from objlib_daemon.daemon.debounce import Debouncer
from objlib_daemon.daemon.scheduler import (
    DRAIN_INTERVAL,
    LIMITED_RECONCILE_INTERVAL,
    PRUNE_INTERVAL,
    make_scheduler,
    next_run,
    periodic,
)
from objlib_daemon.daemon.state import DaemonState, Progress
from objlib_daemon.daemon.supervisor import Started, Supervisor
from objlib_daemon.daemon.volume import VolumeMonitor
from objlib_daemon.daemon.watcher import OverflowHook, Watcher
from objlib_daemon.daemon.worker import Worker
from objlib_daemon.library.volume import VolumeState
from objlib_daemon.logging import get_logger
from objlib_daemon.state.db import Database
from objlib_daemon.stores.base import StoreError
from objlib_daemon.sync.passes import Engine
from objlib_daemon.workspace import Workspace, library_from, open_workspace

log = get_logger("objlibd.daemon")


class Daemon:
    """Everything `objlibd run` keeps alive. `start()`, then `supervise()` ticks, `stop()`.

    `answer` is what the control socket answers (answers.handle): the runner
    serves the socket but does not know its commands.
    """

    def __init__(
        self, config: Config, answer: Callable[[Daemon, dict[str, Any]], dict[str, Any]]
    ) -> None:
        self.config = config
        self.answer = answer
        self.state = DaemonState()
        self.ws: Workspace | None = None
        self.ro_db: Database | None = None
        # Guards the transitions of pause and volume, the pass stop event and the watcher.
        self.state_lock = threading.RLock()
        self.writer = threading.Lock()
        self.pass_stop = threading.Event()
        self.scheduler = make_scheduler()
        self.drain_job = Worker("drain", self._drain, at_least_every=DRAIN_INTERVAL)
        self.reconcile_job = Worker("reconcile", self._reconcile)
        self.watcher: Watcher | None = None
        self.supervisor: Supervisor | None = None
        self.debouncer: Debouncer | None = None
        self.monitor: VolumeMonitor | None = None
        self.control: ControlServer | None = None
        self.overflow = OverflowHook(self._on_overflow)

    @property
    def engine(self) -> Engine:
        assert self.ws is not None
        return self.ws.engine

    # --- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Open the library, serve the socket, start the passes; READY once DB + socket are up."""
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
            self.state.errors.record("start", f"could not resolve interrupted uploads yet: {exc}")

        self.control = ControlServer(socket_path(config), lambda m: self.answer(self, m))
        self.control.start()

        lib = self.ws.library
        self.debouncer = Debouncer(
            self.ws.db,
            config.daemon.settle_seconds,
            on_flushed=lambda at: self.kick_drain(at),
            on_overload=lambda: self.kick_reconcile("event burst"),
            on_error=lambda message: self.state.errors.record("events", message),
        )
        self.watcher = Watcher(
            lib.root, lib.eligibility, self.debouncer, on_root_gone=self._on_root_gone
        )
        self.supervisor = Supervisor(self.watcher, self.state.errors)
        self._add_jobs()
        self.drain_job.start()
        self.reconcile_job.start()
        self.scheduler.start()
        self.debouncer.start()
        self.overflow.install()
        sdnotify.notify("READY=1", f"STATUS={self.state.status_line()}")
        log.info(
            "daemon started",
            root=str(lib.root),
            store=f"{self.ws.meta.get('store_backend')}:{self.ws.meta.get('store_name')}",
            socket=str(self.control.path),
        )
        self.monitor = VolumeMonitor(
            lib.root, lib.library_id, config.daemon.volume_check_interval, self._on_volume
        )
        self.monitor.start()

    def _add_jobs(self) -> None:
        """The periodic sweeps; the reconcile's timer only kicks its worker."""
        d = self.config.daemon
        self.scheduler.add_job(
            self.kick_reconcile,
            "interval",
            args=["schedule"],
            seconds=periodic(d.reconcile_interval),
            id="reconcile",
        )
        # No sweep at start: each drain first deletes the orphans due (sync/drain.py),
        # and a one-off sweep a minute in landed in an idle daemon's quiet time.
        self.scheduler.add_job(
            self.orphan_sweep,
            "interval",
            seconds=periodic(d.orphan_sweep_interval),
            id="orphans",
        )
        self.scheduler.add_job(
            self.audit, "interval", seconds=periodic(d.audit_interval), id="audit"
        )
        if d.auto_prune:
            self._add_prune()

    def _add_prune(self) -> None:
        self.scheduler.add_job(self.prune, "interval", seconds=PRUNE_INTERVAL, id="prune")

    def stop(self, timeout: float) -> bool:
        """Finish the file in flight, flush the debouncer; False if work outlived `timeout`."""
        deadline = time.monotonic() + timeout
        sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing the file in flight")
        log.info("stopping")
        with self.state_lock:
            self.state.stopping = True
            self.pass_stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        if self.watcher is not None:
            self.watcher.stop(deliver_pending=True)  # a clean stop loses no event
        self.overflow.remove()
        if self.debouncer is not None:
            self.debouncer.stop()  # writes the last second of events to the queue
        for worker in (self.drain_job, self.reconcile_job):
            worker.close()
        with contextlib.suppress(SchedulerNotRunningError):  # start() failed before it
            self.scheduler.shutdown(wait=False)
        clean = all(
            w.join(deadline - time.monotonic()) for w in (self.drain_job, self.reconcile_job)
        )
        # A sweep still holding the writer is work in flight too.
        if clean and self.writer.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self.writer.release()
        else:
            clean = False
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

    # --- supervision (main thread) --------------------------------------------------------

    def supervise(self) -> None:
        """One tick: rebuild a dead watcher; called about every second."""
        if self.state.stopping or self.supervisor is None:
            return
        with self.state_lock:
            started = self.supervisor.revive() if self.state.volume.available else None
            if started is not None:
                self._watcher_started(started)
        if started is Started.OK:
            self.kick_reconcile("watcher restarted")

    def healthy(self) -> bool:
        """For WATCHDOG=1: every thread that should run is running."""
        parts = [
            self.scheduler.running,
            self.drain_job.is_alive(),
            self.reconcile_job.is_alive(),
            self.debouncer is not None and self.debouncer.is_alive(),
            self.control is not None and self.control.is_alive(),
            self.monitor is not None and self.monitor.is_alive(),
        ]
        watcher = self.watcher
        if self.state.volume.available and watcher is not None and watcher.running:
            parts.append(watcher.is_alive())
        return all(parts)

    def _on_volume(self, volume: VolumeState) -> None:
        """From the monitor thread: the volume came, went, or was remounted."""
        with self.state_lock:
            self.state.volume = volume
            if self.state.stopping or self.supervisor is None:
                return
            if volume.available:
                self._watcher_started(self.supervisor.start())
                self.state.reconciled_since_mount = False
            else:
                self.pass_stop.set()  # the drain stops after the file in flight
                self.supervisor.stop()
        if volume.available:
            self.kick_reconcile("mount")
            self.kick_drain()
        self.notify_status()

    def _watcher_started(self, started: Started) -> None:
        if started is Started.OK:  # counting folders is slow: on the scheduler's pool
            self.scheduler.add_job(self._check_watches, id="watch-check", replace_existing=True)
        elif started is Started.WATCH_LIMIT:
            self._limit_reconcile_interval()

    def _check_watches(self) -> None:
        report = self.supervisor.check_watches() if self.supervisor is not None else None
        if report is None:
            return
        self.state.watch_report = {
            "watches": report.watches,
            "directories": report.directories,
            "limit": report.limit,
        }
        if report.short:
            self._limit_reconcile_interval()

    def _limit_reconcile_interval(self) -> None:
        if self.state.watch_limited:
            return
        self.state.watch_limited = True
        self._reschedule_reconcile()
        log.warning(
            "reconcile interval shortened while not every folder is watched",
            seconds=self._reconcile_interval(),
        )

    def _reconcile_interval(self) -> float:
        interval = periodic(self.config.daemon.reconcile_interval)
        return min(interval, LIMITED_RECONCILE_INTERVAL) if self.state.watch_limited else interval

    def _reschedule_reconcile(self) -> None:
        self.scheduler.reschedule_job(
            "reconcile", trigger="interval", seconds=self._reconcile_interval()
        )

    def _on_root_gone(self) -> None:
        # From a watchdog thread: only ask; the monitor thread decides.
        if self.monitor is not None:
            self.monitor.request_check()

    def _on_overflow(self) -> None:
        log.warning("file events were lost (watchdog queue overflow); reconciling")
        self.state.errors.record("watcher", "event queue overflow; reconcile requested")
        self.kick_reconcile("overflow")

    # --- pause / resume -------------------------------------------------------------------

    def notify_status(self) -> None:
        sdnotify.notify(f"STATUS={self.state.status_line()}")

    def pause(self, reason: str = "paused by the user") -> None:
        with self.state_lock:
            self.state.paused = reason
            self.pass_stop.set()
        log.info("paused", reason=reason)
        self.notify_status()

    def resume(self) -> None:
        with self.state_lock:
            was = self.state.paused
            self.state.paused = None
        if was:
            log.info("resumed")
        if self.state.reconcile_skipped:
            self.kick_reconcile("resume")
        self.kick_drain()
        self.notify_status()

    # --- the passes -----------------------------------------------------------------------

    def kick_drain(self, at: float | None = None) -> int:
        return self.drain_job.kick(at)

    def kick_reconcile(
        self, why: str, *, force: bool = False, allow_mass_missing: bool = False
    ) -> int:
        return self.reconcile_job.kick(
            force=force, allow_mass_missing=allow_mass_missing, why={why}
        )

    def next_reconcile(self) -> float | None:
        return next_run(self.scheduler, "reconcile")

    def _new_pass_stop(self) -> threading.Event:
        with self.state_lock:
            self.pass_stop = threading.Event()
            if not self.state.may_read_library():
                self.pass_stop.set()
            return self.pass_stop

    def _drain(self, _options: dict[str, Any]) -> float | None:
        """The drain worker's pass; returns when the queue is next due."""
        state = self.state
        if not state.may_read_library():
            return None
        with self.writer:
            stop = self._new_pass_stop()
            if stop.is_set():
                return None
            engine = self.engine
            state.draining = Progress()
            try:
                out = jobs.drain(engine, stop, self.config, state.draining, state.errors)
            finally:
                state.draining = None
            state.totals.update(out.counts)
            state.last_drain = out.record()
        if out.volume_lost and self.monitor is not None:
            self.monitor.request_check()
        if out.pause is not None:
            self.pause(out.pause)
        if out.again is not None or stop.is_set():
            return out.again
        assert self.ro_db is not None
        return jobs.next_due(self.ro_db, engine)

    def _reconcile(self, options: dict[str, Any]) -> None:
        """The reconcile worker's pass: skipped (and reported so) while stopping,
        paused or away from the volume, so nothing is ever marked missing then."""
        state = self.state
        force = bool(options.get("force"))
        why = sorted(options.get("why") or {"schedule"})
        # A skipped pass is reported to `reconcile --wait` but does not replace
        # `last_reconcile`, which always describes the last pass that ran.
        if state.stopping:
            state.pass_record = {"outcome": "stopped", "skipped": True, "error": "stopping"}
            return
        if state.paused:
            state.reconcile_skipped = True
            state.pass_record = {"outcome": "paused", "skipped": True, "error": state.paused}
            return
        if not state.volume.available:
            error = f"skipped: {state.volume.reason}"
            state.pass_record = {"outcome": "volume unavailable", "skipped": True, "error": error}
            return
        state.reconcile_skipped = False
        state.last_reconcile = {
            "started_at": time.time(),
            "force": force,
            "why": why,
            "outcome": "running",
        }
        state.reconciling = True
        try:
            record = jobs.reconcile(
                self.engine,
                state.errors,
                force=force,
                allow_mass_missing=bool(options.get("allow_mass_missing")),
                why=why,
            )
        finally:
            state.reconciling = False
        state.last_reconcile = state.pass_record = record
        if record["outcome"] == "ok":
            state.reconciled_since_mount = True
        elif record["outcome"] == "volume unavailable" and self.monitor is not None:
            self.monitor.request_check()
        self.kick_drain()

    def orphan_sweep(self) -> None:
        if self.state.may_use_store() and jobs.orphan_sweep(
            self.engine, self.writer, self.state.errors
        ):
            self.kick_drain()

    def prune(self) -> None:
        # Only after a reconcile on a present volume: a file that came back
        # while we were away must be seen as restored before its missing
        # clock is trusted.
        if self.state.may_read_library() and self.state.reconciled_since_mount:
            jobs.prune(self.engine, self.writer, self.state.errors, self.config.sync.prune_after)

    def audit(self) -> None:
        if not self.state.may_use_store():
            return
        repair = self.config.daemon.audit_repair
        record = jobs.audit(self.engine, self.writer, self.state.errors, repair=repair)
        if record is None:
            return
        self.state.last_audit = record
        fixed = record.get("repair") or {}
        if fixed.get("requeued") or fixed.get("adopted"):
            self.kick_drain()

    # --- SIGHUP ---------------------------------------------------------------------------

    def reload(self, new: Config) -> str:
        """Apply a validated config; what needs a restart is refused (ConfigError, old kept)."""
        assert self.ws is not None
        change = reload.plan(self.config, new, self.ws.meta)
        self.config = new
        if self.debouncer is not None:
            self.debouncer.settle_seconds = new.daemon.settle_seconds
        if self.monitor is not None:
            self.monitor.interval = new.daemon.volume_check_interval
        for job_id, seconds in change.intervals.items():
            if job_id == "reconcile":
                self._reschedule_reconcile()
            else:
                self.scheduler.reschedule_job(job_id, trigger="interval", seconds=periodic(seconds))
        if change.auto_prune is True:
            self._add_prune()
        elif change.auto_prune is False:
            self.scheduler.remove_job("prune")
        if change.engine_changed:
            self.scheduler.add_job(self._swap_engine, id="swap-engine", replace_existing=True)
        return "reloaded" + (
            " (library rules change after the current pass)" if change.library_changed else ""
        )

    def _swap_engine(self) -> None:
        """A new Engine for the config, between drain passes (under the writer);
        a new Library too if its rules differ from the running one's."""
        ws = self.ws
        if ws is None:
            return
        with self.writer:
            config = self.config
            library_changed = reload.library_rules_changed(ws.engine.config, config)
            if library_changed:
                library = library_from(config, ws.meta, ws.db)
                if ws.library.enricher is not None:
                    ws.library.enricher.close()
                ws.library = library
                if self.watcher is not None:
                    self.watcher.set_eligibility(library.eligibility)
            ws.engine = Engine(ws.db, ws.store, ws.library, config)
        if library_changed:
            log.info("library rules reloaded; reconciling")
            self.kick_reconcile("config reload")
