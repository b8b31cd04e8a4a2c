"""The job bodies: what each scheduled pass does, and when it must not run.

- drain: the only caller of the applier. It holds the daemon's writer lock
  (so the orphan sweep, prune and audit never touch the store at the same
  time, and `resolve_intents` never sees another pass's upload in flight),
  runs only while not paused and the volume is present, stops after the file
  in flight when either changes, and returns when the queue is next due.
- reconcile: a scan that only enqueues; skipped (and reported so) while
  paused or while the volume is away, so nothing is ever marked missing then.
- orphan sweep, prune (after a reconcile on a present volume), and the
  weekly audit (sync/verify.py: report only unless `audit_repair`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from objlib_daemon.errors import SafetyAbort, VolumeUnavailable
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.stores.base import AuthError, StoreError, StoreUnusable
from objlib_daemon.sync.applier import Result
from objlib_daemon.sync.outcome import Outcome
from objlib_daemon.sync.verify import audit_engine

if TYPE_CHECKING:
    from objlib_daemon.daemon.runner import Daemon

log = get_logger("objlibd.jobs")


# Drain outcomes that leave work behind: errors seen during such a drain stay shown.
UNFINISHED = frozenset(outcome for outcome in Outcome if outcome.unfinished)
# How often a long drain logs its running count (seconds): often enough to see
# it move in `journalctl -f`, rarely enough not to drown the per-file lines.
PROGRESS_LOG_EVERY = 10.0


class Jobs:
    """The pass bodies, bound to one Daemon (its state decides what may run)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.progress_logged = 0.0

    def drain(self, _options: dict[str, Any]) -> float | None:
        d = self.d
        if not d.may_read_library():
            return None
        with d.writer:
            stop = d.new_pass_stop()
            if stop.is_set():
                return None
            engine = d.engine
            d.draining = True
            d.drain_progress = Counter()
            started = time.time()
            counts: Counter[str] = Counter()
            again: float | None = None
            failed = True
            self.progress_logged = started
            try:
                engine.require_volume()
                counts = engine.drain(stop=stop, on_result=self.on_result)
                failed = False
            except VolumeUnavailable as exc:
                log.warning("drain halted: volume unavailable", error=str(exc))
                d.record_error("drain", str(exc))
                if d.monitor is not None:
                    d.monitor.request_check()
                again = time.time() + d.config.daemon.volume_check_interval
            except AuthError as exc:
                d.record_error("drain", f"credentials rejected: {exc}")
                log.error("the store rejected our credentials; pausing", error=str(exc))
                d.pause("the store rejected the credentials: fix them, then `objlibd resume`")
            except StoreUnusable as exc:  # the store vanished, or is ambiguous: no retry helps
                d.record_error("drain", str(exc))
                log.error("the store cannot be used; pausing remote work", error=str(exc))
                d.pause(f"the store cannot be used: {exc}; fix it, then `objlibd resume`")
            except StoreError as exc:  # e.g. listing for interrupted uploads failed
                d.record_error("drain", str(exc))
                log.warning("drain could not run", error=str(exc))
                again = time.time() + d.config.sync.retry_base
            except Exception as exc:  # database trouble (disk full, ...): retry, don't spin
                d.record_error("drain", f"{type(exc).__name__}: {exc}")
                log.exception("drain failed")
                again = time.time() + d.config.sync.retry_base
            finally:
                d.draining = False
            d.totals.update(counts)
            if not (failed or set(counts) & UNFINISHED):
                d.clear_errors("drain", "apply", "start")
            d.last_drain = {
                "started_at": started,
                "finished_at": time.time(),
                "counts": {k: v for k, v in counts.items() if v},
            }
            if any(v for k, v in counts.items() if k not in ("unchanged", "gone", "hashed")):
                log.info("changes applied", **{k: v for k, v in counts.items() if v})
            if counts.get(Outcome.PAUSED):  # circuit breaker open: look again after its cooldown
                again = time.time() + d.config.store.breaker_cooldown
        if again is not None or stop.is_set():
            return again
        assert d.ro_db is not None
        with d.ro_db.session() as s:
            due = queue.next_due(s)
        # Unfinished uploads kept for a later look at the store (recovery.py,
        # INTENT_GRACE) need a drain then, even with nothing queued.
        times = [t for t in (due, engine.recovery.intent_recheck_at) if t is not None]
        return min(times) if times else None

    def on_result(self, result: Result) -> None:
        d = self.d
        with d.progress_lock:  # called from every applier thread
            d.drain_progress[result.action] += 1
            now = time.time()
            due = now - self.progress_logged >= PROGRESS_LOG_EVERY
            if due:
                self.progress_logged = now
                progress = dict(d.drain_progress)
        if due:  # a running count, so a long drain is visible in the log
            log.info("draining", done=sum(progress.values()), **progress)
        if not result.action.acted:
            log.debug("looked at", path=result.path, action=result.action)
        elif result.error:
            log.info("not applied", path=result.path, action=result.action, error=result.error)
            if result.action is not Outcome.SKIPPED:
                d.record_error("apply", f"{result.path}: {result.error}")
        elif result.note:  # uploaded, but worth hearing (no text layer: needs OCR)
            log.warning("applied", path=result.path, action=result.action, note=result.note)
        else:  # a rename is one line that names the old path too
            extra = {"moved_from": result.moved_from} if result.moved_from else {}
            log.info("applied", path=result.path, action=result.action, **extra)

    def reconcile(self, options: dict[str, Any]) -> None:
        d = self.d
        force = bool(options.get("force"))
        allow_mass_missing = bool(options.get("allow_mass_missing"))
        why = sorted(options.get("why") or {"schedule"})
        if d.stopping.is_set():
            d.pass_record = {"outcome": "stopped", "skipped": True, "error": "stopping"}
            return
        # A skipped pass is reported to `reconcile --wait` but does not replace
        # `last_reconcile`, which always describes the last pass that ran.
        if d.paused:
            d.reconcile_skipped = True
            d.pass_record = {"outcome": "paused", "skipped": True, "error": d.paused}
            return
        if not d.volume.available:
            d.pass_record = {
                "outcome": "volume unavailable",
                "skipped": True,
                "error": f"skipped: {d.volume.reason}",
            }
            return
        d.reconcile_skipped = False
        started = time.time()
        d.last_reconcile = {
            "started_at": started,
            "force": force,
            "why": why,
            "outcome": "running",
        }
        d.reconciling = True
        log.info("reconcile started", force=force, why=why)
        record: dict[str, Any] = {"started_at": started, "force": force, "why": why}
        try:
            plan = d.engine.reconcile(force=force, allow_mass_missing=allow_mass_missing)
        except VolumeUnavailable as exc:
            record["outcome"] = "volume unavailable"
            record["error"] = str(exc)
            d.record_error("reconcile", str(exc))
            if d.monitor is not None:
                d.monitor.request_check()
        except SafetyAbort as exc:
            record["outcome"] = "aborted"
            record["error"] = str(exc)
            log.error("reconcile aborted", error=str(exc))
            d.record_error("reconcile", str(exc))
        except Exception as exc:
            record["outcome"] = "error"
            record["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("reconcile failed")
            d.record_error("reconcile", record["error"])
        else:
            d.clear_errors("reconcile")
            record.update(
                outcome="ok",
                candidates=len(plan.candidates),
                vanished=len(plan.vanished),
                unchanged=plan.unchanged,
                hashed=plan.hashed,
                problems=plan.problems[:20],
            )
            d.reconciled_since_mount = True
            for problem in plan.problems[:20]:
                log.info("library problem", problem=problem)
        finally:
            d.reconciling = False
        record["finished_at"] = time.time()
        d.last_reconcile = d.pass_record = record
        log.info(
            "reconcile finished",
            **{
                k: v
                for k, v in record.items()
                if k in ("outcome", "candidates", "vanished", "unchanged", "error")
            },
            seconds=round(record["finished_at"] - started, 3),
        )
        d.kick_drain()

    def orphan_sweep(self) -> None:
        d = self.d
        if not d.may_use_store():
            return
        with d.writer:
            try:
                cleaned = d.engine.cleanup_orphans()
            except StoreError as exc:
                d.record_error("orphans", str(exc))
                return
            d.engine.db.trim_journal()  # the daemon's turn of the journal's bound
        if cleaned:
            log.info("orphans deleted", count=cleaned)
        # Hourly too: files uploaded without AI metadata whose analysis is now due.
        lib = d.engine.lib
        if lib.enricher is not None and lib.enricher.queue_ready(lib.root):
            d.kick_drain()

    def prune(self) -> None:
        d = self.d
        # Only right after a reconcile on a present volume: a file that came
        # back while we were away must be seen as restored before its
        # missing clock is trusted.
        if not d.may_read_library() or not d.reconciled_since_mount:
            return
        with d.writer:
            try:
                pruned = len(d.engine.prune(d.config.sync.prune_after))
            except StoreError as exc:
                d.record_error("prune", str(exc))
                return
        if pruned:
            log.info("pruned documents of long-missing files", count=pruned)

    def audit(self) -> None:
        """Weekly remote audit (sync/verify.py); repairs only with `audit_repair`.

        Under the writer lock, as verify.py requires: no drain may finish an
        upload between the listing and a repair. Repaired paths are only
        queued, so the drain is kicked afterwards.
        """
        d = self.d
        if not d.may_use_store():
            return
        repair = d.config.daemon.audit_repair
        started = time.time()
        with d.writer:
            try:
                summary = audit_engine(d.engine, repair=repair)
            except Exception as exc:
                d.record_error("audit", f"{type(exc).__name__}: {exc}")
                log.exception("audit failed")
                return
        fixed = summary.get("repair") or {}
        findings = summary.pop("findings", [])
        d.last_audit = summary | {
            "started_at": started,
            "finished_at": time.time(),
            "findings": findings[:50],
        }
        if not summary.get("clean"):
            d.record_error("audit", f"store and database disagree: {summary.get('counts')}")
        log.info(
            "audit finished",
            clean=summary.get("clean"),
            counts={k: v for k, v in (summary.get("counts") or {}).items() if v},
            repair=repair,
        )
        if fixed.get("requeued") or fixed.get("adopted"):
            d.kick_drain()
