"""The Daemon: one Workspace, its producers, its jobs, and the rules for when they may run.

Who may do what (design.md):
- producers (watcher -> debouncer, reconcile) only enqueue paths;
- the drain is the only caller of the applier; it, the orphan sweep and
  prune hold `_writer`, so one of them touches the store at a time and
  `resolve_intents` never sees another pass's upload in flight;
- nothing that reads the library or the store runs while paused, and nothing
  that reads the library runs while the volume is unavailable. The queue is
  kept; nothing is marked missing.

Threads: the main thread supervises (lifecycle.py); the volume monitor
reports transitions; APScheduler's pool runs the jobs; watchdog and the
debouncer feed the queue; the control server answers requests.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import replace
from typing import Any

import structlog
from sqlalchemy import select

from objlib_daemon.config import Config, ConfigError
from objlib_daemon.daemon import sdnotify
from objlib_daemon.daemon.control import ControlServer, socket_path
from objlib_daemon.daemon.debounce import Debouncer
from objlib_daemon.daemon.scheduler import KickedJob, MaxInstancesFilter, make_scheduler
from objlib_daemon.daemon.volume import VolumeMonitor
from objlib_daemon.daemon.watcher import OverflowHook, Watcher, check_watches, is_watch_limit
from objlib_daemon.errors import SafetyAbort, VolumeUnavailable
from objlib_daemon.library.volume import VolumeState
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import INFLIGHT, PendingChange
from objlib_daemon.stores.base import AuthError, StoreError
from objlib_daemon.sync.applier import Result
from objlib_daemon.sync.engine import Engine
from objlib_daemon.sync.status import database_status
from objlib_daemon.workspace import Workspace, check_matches, library_from, open_workspace

log = structlog.get_logger("objlibd.daemon")

RUNNING, PAUSED, UNAVAILABLE = "running", "paused", "volume unavailable"
# Drain's safety-net interval: its real schedule is the queue's next due
# time; this only bounds how long a scheduling bug could leave work waiting.
DRAIN_INTERVAL = 300.0
# Prune is a daily look: against a 7-day `prune_after` a day's slack is noise.
PRUNE_INTERVAL = 86400.0
# With fewer inotify watches than folders, changes in unwatched folders are
# found only by the reconcile: run it at least this often then.
LIMITED_RECONCILE_INTERVAL = 900.0
# A watcher that cannot start (watch limit, odd filesystem) is retried this often.
WATCHER_RETRY = 60.0
LAST_ERRORS = 20


class Daemon:
    """Everything `objlibd run` keeps alive. `start()`, then `supervise()` ticks, `stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ws: Workspace | None = None
        self.ro_db: Database | None = None
        self.started_at = time.time()
        self.stopping = threading.Event()
        self._state_lock = threading.RLock()
        self._writer = threading.Lock()
        self._pass_stop = threading.Event()
        self._paused: str | None = None
        self._volume = VolumeState(False, "not checked yet")
        self._reconcile_skipped = False
        self._reconciled_since_mount = False
        self._reconciling = False
        self._draining = False
        self._drain_progress: Counter[str] = Counter()
        self._progress_lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)
        self.last_reconcile: dict[str, Any] | None = None
        self._pass_record: dict[str, Any] = {}
        self.last_drain: dict[str, Any] | None = None
        self.last_audit: dict[str, Any] | None = None
        self.watch_report: dict[str, Any] | None = None
        self._watch_limited = False
        self._watcher_failed_at: float | None = None
        self.scheduler = make_scheduler()
        self.watcher: Watcher | None = None
        self.debouncer: Debouncer | None = None
        self.monitor: VolumeMonitor | None = None
        self.control: ControlServer | None = None
        self.overflow = OverflowHook(self._on_overflow)
        self.drain_job: KickedJob | None = None
        self.reconcile_job: KickedJob | None = None
        self._max_filter = MaxInstancesFilter({"drain", "reconcile"})

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
        with self.ws.db.session() as s:
            requeued = queue.reset_inflight(s)
        if requeued:
            log.info("requeued changes left in flight by the last run", count=requeued)
        try:
            resolved = self.engine.resolve_intents()
            if resolved:
                log.info("resolved uploads interrupted by the last run", count=resolved)
        except StoreError as exc:  # the store is down: the first drain tries again
            self._error("start", f"could not resolve interrupted uploads yet: {exc}")

        self.control = ControlServer(socket_path(config), self.handle)
        self.control.start()

        lib = self.ws.library
        self.debouncer = Debouncer(
            self.ws.db,
            lib.root,
            lib.eligibility,
            config.daemon.settle_seconds,
            on_flushed=lambda at: self._kick_drain(at),
            on_overload=lambda: self._kick_reconcile("event burst"),
        )
        self.watcher = Watcher(
            lib.root, lib.eligibility, self.debouncer, on_root_gone=self._on_root_gone
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
            lib.root, lib.library_id, config.daemon.volume_check_interval, self._on_volume
        )
        self.monitor.start()

    def _add_jobs(self) -> None:
        d = self.config.daemon
        self.drain_job = KickedJob(
            self.scheduler, "drain", self._drain_pass, interval=DRAIN_INTERVAL
        )
        self.reconcile_job = KickedJob(
            self.scheduler, "reconcile", self._reconcile_pass, interval=d.reconcile_interval
        )
        self.scheduler.add_job(
            self._orphan_sweep, "interval", seconds=d.orphan_sweep_interval, id="orphans"
        )
        self.scheduler.add_job(self._audit, "interval", seconds=d.audit_interval, id="audit")
        if d.auto_prune:
            self.scheduler.add_job(self._prune, "interval", seconds=PRUNE_INTERVAL, id="prune")

    def stop(self, timeout: float) -> bool:
        """Finish the file in flight, flush the debouncer; False if work outlived `timeout`."""
        deadline = time.monotonic() + timeout
        sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing the file in flight")
        log.info("stopping")
        self.stopping.set()
        with self._state_lock:
            self._pass_stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.overflow.remove()
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
        return self._draining or self._reconciling or self._writer.locked()

    # --- supervision (main thread) ----------------------------------------------------

    def supervise(self) -> None:
        """One tick: rebuild a dead watcher; called about every second."""
        if self.stopping.is_set():
            return
        with self._state_lock:
            if not self._volume.available or self.watcher is None:
                return
            if self.watcher.is_alive():
                return
            if self.watcher.running:
                log.error("the file watcher died; rebuilding it and reconciling")
                self._error("watcher", "file watcher died; rebuilt")
            elif (
                self._watcher_failed_at is not None
                and time.time() - self._watcher_failed_at < WATCHER_RETRY
            ):
                return
            if self._start_watcher():
                self._kick_reconcile("watcher restarted")

    def healthy(self) -> bool:
        """For WATCHDOG=1: every thread that should run is running."""
        parts = [
            self.scheduler.running,
            self.debouncer is not None and self.debouncer.is_alive(),
            self.control is not None and self.control.is_alive(),
            self.monitor is not None and self.monitor.is_alive(),
        ]
        if self._volume.available and self.watcher is not None and self.watcher.running:
            parts.append(self.watcher.is_alive())
        return all(parts)

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._paused:
            return PAUSED
        if not self._volume.available:
            return UNAVAILABLE
        return RUNNING

    def _may_read_library(self) -> bool:
        return not self.stopping.is_set() and not self._paused and self._volume.available

    def _may_use_store(self) -> bool:
        return not self.stopping.is_set() and not self._paused

    def activity(self) -> str:
        if self.stopping.is_set():
            return "stopping"
        doing = []
        if self._reconciling:
            doing.append("reconciling")
        if self._draining:
            done = sum(self._drain_progress.values())
            doing.append(f"applying changes ({done} done this pass)")
        if doing:
            return ", ".join(doing)
        if self._paused:
            return f"paused ({self._paused})"
        if not self._volume.available:
            return "waiting for the volume"
        return "idle"

    def status_line(self) -> str:
        return f"{self.state}; {self.activity()}"

    def _error(self, where: str, message: str) -> None:
        self.last_errors.append({"at": time.time(), "where": where, "error": message[:500]})

    def pause(self, reason: str = "paused by the user") -> None:
        with self._state_lock:
            self._paused = reason
            self._pass_stop.set()
        log.info("paused", reason=reason)
        sdnotify.notify(f"STATUS={self.status_line()}")

    def resume(self) -> None:
        with self._state_lock:
            was = self._paused
            self._paused = None
        if was:
            log.info("resumed")
        if self._reconcile_skipped:
            self._kick_reconcile("resume")
        self._kick_drain()
        sdnotify.notify(f"STATUS={self.status_line()}")

    # --- volume and watcher ---------------------------------------------------------------

    def _on_volume(self, state: VolumeState) -> None:
        """From the monitor thread: the volume came, went, or was remounted."""
        with self._state_lock:
            self._volume = state
            if self.stopping.is_set():
                return
            if state.available:
                # Old watches are dead after a remount: always a fresh observer.
                self._start_watcher()
                self._reconciled_since_mount = False
            else:
                self._pass_stop.set()  # the drain stops after the file in flight
                if self.watcher is not None:
                    self.watcher.stop()
        if state.available:
            self._kick_reconcile("mount")
            self._kick_drain()
        sdnotify.notify(f"STATUS={self.status_line()}")

    def _on_root_gone(self) -> None:
        # From a watchdog thread: only ask; the monitor thread decides.
        if self.monitor is not None:
            self.monitor.request_check()

    def _start_watcher(self) -> bool:
        assert self.watcher is not None
        try:
            self.watcher.start()
        except OSError as exc:
            self._watcher_failed_at = time.time()
            self.watcher.stop()
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
            self._error("watcher", message)
            return False
        self._watcher_failed_at = None
        self.scheduler.add_job(self._check_watches, id="watch-check", replace_existing=True)
        return True

    def _check_watches(self) -> None:
        watcher = self.watcher
        if watcher is None or not watcher.running:
            return
        report = check_watches(watcher.root)
        self.watch_report = {
            "watches": report.watches,
            "directories": report.directories,
            "limit": report.limit,
        }
        if report.short:
            log.warning(report.advice())
            self._error("watcher", report.advice())
            self._limit_reconcile_interval()

    def _limit_reconcile_interval(self) -> None:
        if self._watch_limited or self.reconcile_job is None:
            return
        self._watch_limited = True
        interval = min(self.config.daemon.reconcile_interval, LIMITED_RECONCILE_INTERVAL)
        self.reconcile_job.reschedule(interval)
        log.warning(
            "reconcile interval shortened while not every folder is watched", seconds=interval
        )

    def _on_overflow(self) -> None:
        log.warning("file events were lost (watchdog queue overflow); reconciling")
        self._error("watcher", "event queue overflow; reconcile requested")
        self._kick_reconcile("overflow")

    # --- jobs -----------------------------------------------------------------------------

    def _kick_drain(self, at: float | None = None) -> int:
        return self.drain_job.kick(at) if self.drain_job is not None else 0

    def _kick_reconcile(self, why: str, *, force: bool = False) -> int:
        if self.reconcile_job is None:
            return 0
        return self.reconcile_job.kick(force=force, why={why})

    def _new_pass_stop(self) -> threading.Event:
        with self._state_lock:
            self._pass_stop = threading.Event()
            if not self._may_read_library():
                self._pass_stop.set()
            return self._pass_stop

    def _drain_pass(self, _options: dict[str, Any]) -> float | None:
        if not self._may_read_library():
            return None
        with self._writer:
            stop = self._new_pass_stop()
            if stop.is_set():
                return None
            engine = self.engine
            self._draining = True
            self._drain_progress = Counter()
            started = time.time()
            counts: Counter[str] = Counter()
            again: float | None = None
            try:
                engine.require_volume()
                counts = engine.drain(stop=stop, on_result=self._on_result)
            except VolumeUnavailable as exc:
                log.warning("drain halted: volume unavailable", error=str(exc))
                self._error("drain", str(exc))
                if self.monitor is not None:
                    self.monitor.request_check()
                again = time.time() + self.config.daemon.volume_check_interval
            except AuthError as exc:
                self._error("drain", f"credentials rejected: {exc}")
                log.error("the store rejected our credentials; pausing", error=str(exc))
                self.pause("the store rejected the credentials: fix them, then `objlibd resume`")
            except StoreError as exc:  # e.g. listing for interrupted uploads failed
                self._error("drain", str(exc))
                log.warning("drain could not run", error=str(exc))
                again = time.time() + self.config.sync.retry_base
            except Exception as exc:  # database trouble (disk full, ...): retry, don't spin
                self._error("drain", f"{type(exc).__name__}: {exc}")
                log.exception("drain failed")
                again = time.time() + self.config.sync.retry_base
            finally:
                self._draining = False
            self.totals.update(counts)
            self.last_drain = {
                "started_at": started,
                "finished_at": time.time(),
                "counts": {k: v for k, v in counts.items() if v},
            }
            if any(v for k, v in counts.items() if k not in ("unchanged", "gone", "hashed")):
                log.info("changes applied", **{k: v for k, v in counts.items() if v})
            if counts.get("paused"):  # circuit breaker open: look again after its cooldown
                again = time.time() + self.config.store.breaker_cooldown
        if again is not None or stop.is_set():
            return again
        assert self.ro_db is not None
        with self.ro_db.session() as s:
            return queue.next_due(s)

    def _on_result(self, result: Result) -> None:
        with self._progress_lock:  # called from every applier thread
            self._drain_progress[result.action] += 1
        if result.action in ("unchanged", "gone"):
            log.debug("looked at", path=result.path, action=result.action)
        elif result.error:
            log.info("not applied", path=result.path, action=result.action, error=result.error)
            if result.action != "skipped":
                self._error("apply", f"{result.path}: {result.error}")
        else:
            log.info("applied", path=result.path, action=result.action)

    def _reconcile_pass(self, options: dict[str, Any]) -> None:
        force = bool(options.get("force"))
        why = sorted(options.get("why") or {"schedule"})
        if self.stopping.is_set():
            self._pass_record = {"outcome": "stopped", "skipped": True, "error": "stopping"}
            return
        # A skipped pass is reported to `reconcile --wait` but does not replace
        # `last_reconcile`, which always describes the last pass that ran.
        if self._paused:
            self._reconcile_skipped = True
            self._pass_record = {"outcome": "paused", "skipped": True, "error": self._paused}
            return
        if not self._volume.available:
            self._pass_record = {
                "outcome": "volume unavailable",
                "skipped": True,
                "error": f"skipped: {self._volume.reason}",
            }
            return
        self._reconcile_skipped = False
        started = time.time()
        self.last_reconcile = {
            "started_at": started,
            "force": force,
            "why": why,
            "outcome": "running",
        }
        self._reconciling = True
        log.info("reconcile started", force=force, why=why)
        record: dict[str, Any] = {"started_at": started, "force": force, "why": why}
        try:
            plan = self.engine.reconcile(force=force)
        except VolumeUnavailable as exc:
            record["outcome"] = "volume unavailable"
            record["error"] = str(exc)
            self._error("reconcile", str(exc))
            if self.monitor is not None:
                self.monitor.request_check()
        except SafetyAbort as exc:
            record["outcome"] = "aborted"
            record["error"] = str(exc)
            log.error("reconcile aborted", error=str(exc))
            self._error("reconcile", str(exc))
        except Exception as exc:
            record["outcome"] = "error"
            record["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("reconcile failed")
            self._error("reconcile", record["error"])
        else:
            record.update(
                outcome="ok",
                candidates=len(plan.candidates),
                vanished=len(plan.vanished),
                unchanged=plan.unchanged,
                problems=plan.problems[:20],
            )
            self._reconciled_since_mount = True
            for problem in plan.problems[:20]:
                log.info("library problem", problem=problem)
        finally:
            self._reconciling = False
        record["finished_at"] = time.time()
        self.last_reconcile = self._pass_record = record
        log.info(
            "reconcile finished",
            **{
                k: v
                for k, v in record.items()
                if k in ("outcome", "candidates", "vanished", "unchanged", "error")
            },
            seconds=round(record["finished_at"] - started, 3),
        )
        self._kick_drain()

    def _orphan_sweep(self) -> None:
        if not self._may_use_store():
            return
        with self._writer:
            try:
                cleaned = self.engine.cleanup_orphans()
            except StoreError as exc:
                self._error("orphans", str(exc))
                return
        if cleaned:
            log.info("orphans deleted", count=cleaned)

    def _prune(self) -> None:
        # Only right after a reconcile on a present volume: a file that came
        # back while we were away must be seen as restored before its
        # missing clock is trusted.
        if not self._may_read_library() or not self._reconciled_since_mount:
            return
        with self._writer:
            try:
                pruned = self.engine.prune(self.config.sync.prune_after)
            except StoreError as exc:
                self._error("prune", str(exc))
                return
        if pruned:
            log.info("pruned documents of long-missing files", count=pruned)

    def _audit(self) -> None:
        """Weekly remote audit via `objlib_daemon.sync.verify` when that module exists."""
        if not self._may_use_store():
            return
        try:
            verify = importlib.import_module("objlib_daemon.sync.verify")
        except ModuleNotFoundError as exc:
            if exc.name != "objlib_daemon.sync.verify":
                raise
            log.info("audit skipped: objlib_daemon.sync.verify is not available")
            return
        audit = getattr(verify, "audit", None) or getattr(verify, "verify", None)
        if audit is None:
            log.info("audit skipped: objlib_daemon.sync.verify has no audit()/verify()")
            return
        repair = self.config.daemon.audit_repair
        started = time.time()
        with self._writer:
            try:
                report = audit(self.engine, repair=repair)
            except Exception as exc:
                self._error("audit", f"{type(exc).__name__}: {exc}")
                log.exception("audit failed")
                return
        self.last_audit = {
            "started_at": started,
            "finished_at": time.time(),
            "repair": repair,
            "report": report if isinstance(report, dict | list) else str(report),
        }
        log.info("audit finished", repair=repair)

    # --- config reload --------------------------------------------------------------------

    def reload(self, new: Config) -> str:
        """Apply a validated config; what needs a restart is refused (old config kept)."""
        old = self.config
        assert self.ws is not None
        check_matches(new, self.ws.meta)  # Mismatch: another library or store
        restart_only = []
        if new.store != old.store:
            restart_only.append("[store]")
        if new.paths != old.paths or new.state_dir != old.state_dir:
            restart_only.append("[paths]")
        if new.library.root != old.library.root:
            restart_only.append("library.root")
        if restart_only:
            raise ConfigError(
                f"{', '.join(restart_only)} changed: restart objlibd to apply that; "
                "the running configuration is unchanged"
            )
        library_changed = (
            new.library != old.library
            or new.metadata_rules != old.metadata_rules
            or new.sync.skip_enrichment != old.sync.skip_enrichment
        )
        self.config = new
        self.engine.config = new
        d_old, d_new = old.daemon, new.daemon
        if self.debouncer is not None:
            self.debouncer.settle_seconds = d_new.settle_seconds
        if self.monitor is not None:
            self.monitor.interval = d_new.volume_check_interval
        if d_new.reconcile_interval != d_old.reconcile_interval and self.reconcile_job:
            interval = d_new.reconcile_interval
            if self._watch_limited:
                interval = min(interval, LIMITED_RECONCILE_INTERVAL)
            self.reconcile_job.reschedule(interval)
        for job_id, seconds in (
            ("orphans", d_new.orphan_sweep_interval),
            ("audit", d_new.audit_interval),
        ):
            self.scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
        if d_new.auto_prune and not self.scheduler.get_job("prune"):
            self.scheduler.add_job(self._prune, "interval", seconds=PRUNE_INTERVAL, id="prune")
        elif not d_new.auto_prune and self.scheduler.get_job("prune"):
            self.scheduler.remove_job("prune")
        if library_changed:
            # A new Library means a new Engine; swap it between drain passes.
            self.scheduler.add_job(self._swap_library, id="swap-library", replace_existing=True)
        return "reloaded" + (
            " (library rules change after the current pass)" if library_changed else ""
        )

    def _swap_library(self) -> None:
        assert self.ws is not None
        with self._writer:
            ws = self.ws
            library = library_from(self.config, ws.meta)
            ws.library = library
            ws.engine = Engine(ws.db, ws.store, library, self.config)
            if self.watcher is not None:
                self.watcher.eligibility = library.eligibility
                self.watcher._dir_ok_cache.clear()
            if self.debouncer is not None:
                self.debouncer.eligibility = library.eligibility
        log.info("library rules reloaded; reconciling")
        self._kick_reconcile("config reload")

    # --- control requests -----------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        cmd = message["cmd"]
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "pause":
            self.pause()
            return {"ok": True, "state": self.state}
        if cmd == "resume":
            self.resume()
            return {"ok": True, "state": self.state}
        if cmd == "reconcile":
            return self._reconcile_request(bool(message.get("force")), bool(message.get("wait")))
        if cmd == "ping":
            return {"ok": True, "pid": _pid()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _reconcile_request(self, force: bool, wait: bool) -> dict[str, Any]:
        assert self.reconcile_job is not None and self.drain_job is not None
        if self._paused:
            return {
                "ok": False,
                "state": self.state,
                "error": f"the daemon is paused ({self._paused}): `objlibd resume` first",
            }
        ticket = self._kick_reconcile("requested", force=force)
        if not wait:
            return {"ok": True, "queued": True, "force": force}
        self.reconcile_job.wait(ticket)
        result = dict(self._pass_record)
        answer: dict[str, Any] = {"ok": result.get("outcome") == "ok", "reconcile": result}
        if result.get("outcome") != "ok":
            answer["error"] = result.get("error") or str(result.get("outcome"))
            return answer
        # The pass enqueued what it found; wait for a drain that started after it.
        drain_ticket = self._kick_drain()
        self.drain_job.wait(drain_ticket)
        answer["drain"] = dict(self.last_drain or {})
        answer["state"] = self.state
        if self.ro_db is not None:
            with self.ro_db.session() as s:
                answer["queue"] = {"pending": queue.depth(s), "next_due": queue.next_due(s)}
        return answer

    def status(self) -> dict[str, Any]:
        assert self.ro_db is not None and self.ws is not None
        data = database_status(self.ro_db)
        with self.ro_db.session() as s:
            inflight = list(
                s.scalars(
                    select(PendingChange.path).where(PendingChange.state == INFLIGHT).limit(50)
                )
            )
        store = self.ws.store
        breaker = None
        health = getattr(store, "health", None)
        if callable(health):
            try:
                breaker = health().get("breaker")
            except Exception as exc:
                breaker = {"state": f"unknown ({exc})"}
        reconcile_job = self.reconcile_job
        data["daemon"] = {
            "state": self.state,
            "pid": _pid(),
            "started_at": self.started_at,
            "activity": self.activity(),
            "paused": self._paused,
            "volume": {
                "available": self._volume.available,
                "reason": self._volume.reason,
                "since": self.monitor.since if self.monitor else None,
                "mount_events": self.monitor.mount_events if self.monitor else 0,
            },
            "inflight": inflight,
            "breaker": breaker,
            "last_reconcile": self.last_reconcile,
            "next_reconcile": reconcile_job.next_run() if reconcile_job else None,
            "last_drain": self.last_drain,
            "last_audit": self.last_audit,
            "totals": dict(self.totals),
            "watcher": {
                "running": bool(self.watcher and self.watcher.running),
                "alive": bool(self.watcher and self.watcher.is_alive()),
                "events": self.watcher.events if self.watcher else 0,
                "handler_errors": self.watcher.errors if self.watcher else 0,
                "overflows": self.overflow.count,
                "watch_limit": self.watch_report,
                "pending_events": self.debouncer.pending() if self.debouncer else 0,
            },
            "last_errors": list(self.last_errors),
            "socket": str(self.control.path) if self.control else None,
        }
        return data


def _pid() -> int:
    return os.getpid()


def with_defaults(config: Config, **daemon: Any) -> Config:
    """A copy of `config` with some [daemon] values replaced (tests, tools)."""
    return replace(config, daemon=replace(config.daemon, **daemon))
