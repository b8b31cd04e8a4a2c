"""The pass bodies: what the drain, the reconcile and each sweep do, given what they need.

Each receives plain values and narrow objects (the engine, a stop event, the
writer lock, the error log) and returns what changed; the runner decides
when a pass may run and applies what it returns to the daemon's state.

- drain: the only caller of the applier, under the writer lock (so the
  orphan sweep, prune and audit never touch the store at the same time, and
  `resolve_intents` never sees another pass's upload in flight); it stops
  after the file in flight when its stop event is set, and says when the
  queue is next due.
- reconcile: a scan that only enqueues.
- orphan sweep, prune, and the weekly audit (sync/verify.py: report only
  unless `audit_repair`), each under the writer lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.daemon.state import ErrorLog, Progress
from objlib_daemon.errors import SafetyAbort, VolumeUnavailable
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.stores.base import AuthError, StoreError, StoreUnusable
from objlib_daemon.sync.applier import Result
from objlib_daemon.sync.outcome import Outcome
from objlib_daemon.sync.passes import Engine
from objlib_daemon.sync.verify import audit_engine

log = get_logger("objlibd.jobs")


# Drain outcomes that leave work behind: errors seen during such a drain stay shown.
UNFINISHED = frozenset(outcome for outcome in Outcome if outcome.unfinished)
# How often a long drain logs its running count (seconds): often enough to see
# it move in `journalctl -f`, rarely enough not to drown the per-file lines.
PROGRESS_LOG_EVERY = 10.0
# Problems a reconcile names in `status` and the log; the rest are counted.
PROBLEMS_SHOWN = 20


# --- drain ---------------------------------------------------------------------------------


@dataclass
class DrainOutcome:
    """What one drain did, and what the daemon should do about it."""

    started_at: float
    counts: Counter[str] = field(default_factory=Counter)
    finished_at: float = 0.0
    failed: bool = False
    again: float | None = None  # look again then (a retry after trouble)
    pause: str | None = None  # the store refused us: pause remote work, saying why
    volume_lost: bool = False  # the volume went away mid-drain: the monitor should look

    def record(self) -> dict[str, Any]:
        """`last_drain` in `status`."""
        counts = {k: v for k, v in self.counts.items() if v}
        return {"started_at": self.started_at, "finished_at": self.finished_at, "counts": counts}


class ResultLog:
    """Each applied file: counted for `status`, logged, its error kept (any applier thread)."""

    def __init__(self, progress: Progress, errors: ErrorLog) -> None:
        self.progress = progress
        self.errors = errors
        self._lock = threading.Lock()
        self._logged = time.time()

    def __call__(self, result: Result) -> None:
        counts = self.progress.add(result.action)
        with self._lock:
            now = time.time()
            due = now - self._logged >= PROGRESS_LOG_EVERY
            if due:
                self._logged = now
        if due:  # a running count, so a long drain is visible in the log
            log.info("draining", done=sum(counts.values()), **counts)
        if not result.action.acted:
            log.debug("looked at", path=result.path, action=result.action)
        elif result.error:
            log.info("not applied", path=result.path, action=result.action, error=result.error)
            if result.action is not Outcome.SKIPPED:
                self.errors.record("apply", f"{result.path}: {result.error}")
        elif result.note:  # uploaded, but worth hearing (no text layer: needs OCR)
            log.warning("applied", path=result.path, action=result.action, note=result.note)
        else:  # a rename is one line that names the old path too
            extra = {"moved_from": result.moved_from} if result.moved_from else {}
            log.info("applied", path=result.path, action=result.action, **extra)


def drain(
    engine: Engine, stop: threading.Event, config: Config, progress: Progress, errors: ErrorLog
) -> DrainOutcome:
    """One drain; the caller holds the writer lock."""
    out = DrainOutcome(started_at=time.time(), failed=True)
    try:
        engine.require_volume()
        out.counts = engine.drain(stop=stop, on_result=ResultLog(progress, errors))
        out.failed = False
    except VolumeUnavailable as exc:
        log.warning("drain halted: volume unavailable", error=str(exc))
        errors.record("drain", str(exc))
        out.volume_lost = True
        out.again = time.time() + config.daemon.volume_check_interval
    except AuthError as exc:
        errors.record("drain", f"credentials rejected: {exc}")
        log.error("the store rejected our credentials; pausing", error=str(exc))
        out.pause = "the store rejected the credentials: fix them, then `objlibd resume`"
    except StoreUnusable as exc:  # the store vanished, or is ambiguous: no retry helps
        errors.record("drain", str(exc))
        log.error("the store cannot be used; pausing remote work", error=str(exc))
        out.pause = f"the store cannot be used: {exc}; fix it, then `objlibd resume`"
    except StoreError as exc:  # e.g. listing for interrupted uploads failed
        errors.record("drain", str(exc))
        log.warning("drain could not run", error=str(exc))
        out.again = time.time() + config.sync.retry_base
    except Exception as exc:  # database trouble (disk full, ...): retry, don't spin
        errors.record("drain", f"{type(exc).__name__}: {exc}")
        log.exception("drain failed")
        out.again = time.time() + config.sync.retry_base
    out.finished_at = time.time()
    counts = out.counts
    if not (out.failed or set(counts) & UNFINISHED):
        errors.clear("drain", "apply", "start")
    if any(v for k, v in counts.items() if k not in ("unchanged", "gone", "hashed")):
        log.info("changes applied", **{k: v for k, v in counts.items() if v})
    if counts.get(Outcome.PAUSED):  # circuit breaker open: look again after its cooldown
        out.again = time.time() + config.store.breaker_cooldown
    return out


def next_due(ro_db: Database, engine: Engine) -> float | None:
    """When the next drain has work: the queue's next due row, or an unfinished
    upload kept for a later look at the store (recovery.py, INTENT_GRACE)."""
    with ro_db.session() as s:
        due = queue.next_due(s)
    times = [t for t in (due, engine.recovery.intent_recheck_at) if t is not None]
    return min(times) if times else None


# --- reconcile -----------------------------------------------------------------------------


def reconcile(
    engine: Engine, errors: ErrorLog, *, force: bool, allow_mass_missing: bool, why: list[str]
) -> dict[str, Any]:
    """One scan that enqueues; returns its record (`last_reconcile` in `status`)."""
    started = time.time()
    log.info("reconcile started", force=force, why=why)
    record: dict[str, Any] = {"started_at": started, "force": force, "why": why}
    try:
        plan = engine.reconcile(force=force, allow_mass_missing=allow_mass_missing)
    except VolumeUnavailable as exc:
        record.update(outcome="volume unavailable", error=str(exc))
        errors.record("reconcile", str(exc))
    except SafetyAbort as exc:
        record.update(outcome="aborted", error=str(exc))
        log.error("reconcile aborted", error=str(exc))
        errors.record("reconcile", str(exc))
    except Exception as exc:
        record.update(outcome="error", error=f"{type(exc).__name__}: {exc}")
        log.exception("reconcile failed")
        errors.record("reconcile", record["error"])
    else:
        errors.clear("reconcile")
        record.update(
            outcome="ok",
            candidates=len(plan.candidates),
            vanished=len(plan.vanished),
            unchanged=plan.unchanged,
            hashed=plan.hashed,
            problems=plan.problems[:PROBLEMS_SHOWN],
        )
        for problem in plan.problems[:PROBLEMS_SHOWN]:
            log.info("library problem", problem=problem)
    record["finished_at"] = time.time()
    log.info(
        "reconcile finished",
        **{
            k: v
            for k, v in record.items()
            if k in ("outcome", "candidates", "vanished", "unchanged", "error")
        },
        seconds=round(record["finished_at"] - started, 3),
    )
    return record


# --- sweeps --------------------------------------------------------------------------------


def orphan_sweep(engine: Engine, writer: threading.Lock, errors: ErrorLog) -> bool:
    """Retry deleting recorded orphans; True when enrichment has files for a drain."""
    with writer:
        try:
            cleaned = engine.cleanup_orphans()
        except StoreError as exc:
            errors.record("orphans", str(exc))
            return False
        engine.db.trim_journal()  # the daemon's turn of the journal's bound
    if cleaned:
        log.info("orphans deleted", count=cleaned)
    # Hourly too: files uploaded without AI metadata whose analysis is now due.
    lib = engine.lib
    return lib.enricher is not None and lib.enricher.queue_ready(lib.root)


def prune(engine: Engine, writer: threading.Lock, errors: ErrorLog, older_than: float) -> None:
    """Delete the documents of files missing longer than `older_than`."""
    with writer:
        try:
            pruned = len(engine.prune(older_than))
        except StoreError as exc:
            errors.record("prune", str(exc))
            return
    if pruned:
        log.info("pruned documents of long-missing files", count=pruned)


def audit(
    engine: Engine, writer: threading.Lock, errors: ErrorLog, *, repair: bool
) -> dict[str, Any] | None:
    """Weekly remote audit (sync/verify.py); returns its record, None if it failed.

    Under the writer lock, as verify.py requires: no drain may finish an
    upload between the listing and a repair. Repaired paths are only queued:
    the record's `repair` says whether a drain is due.
    """
    started = time.time()
    with writer:
        try:
            summary = audit_engine(engine, repair=repair)
        except Exception as exc:
            errors.record("audit", f"{type(exc).__name__}: {exc}")
            log.exception("audit failed")
            return None
    findings = summary.pop("findings", [])
    if not summary.get("clean"):
        errors.record("audit", f"store and database disagree: {summary.get('counts')}")
    log.info(
        "audit finished",
        clean=summary.get("clean"),
        counts={k: v for k, v in (summary.get("counts") or {}).items() if v},
        repair=repair,
    )
    return summary | {"started_at": started, "finished_at": time.time(), "findings": findings[:50]}
