"""Passes over a library: reconcile (scan → enqueue), drain (queue → applier), sweeps.

The one-shot `objlibd sync` and the daemon share these: sync is reconcile +
drain + orphan sweep (+ prune), the daemon schedules each on its own.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from objlib_daemon.config import Config
from objlib_daemon.errors import SafetyAbort, VolumeUnavailable
from objlib_daemon.library.files import HashStream, hash_files
from objlib_daemon.library.paths import resolve
from objlib_daemon.library.scan import ScanResult, scan
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.background import BackgroundQuery
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import (
    FAILED,
    INDEXED,
    MISSING,
    PENDING,
    PRUNED,
    File,
    Intent,
    Orphan,
    PendingChange,
)
from objlib_daemon.stores.base import (
    AuthError,
    CircuitOpen,
    Store,
    StoreError,
    TransientError,
)
from objlib_daemon.sync.adoption import adopt as adopt_document
from objlib_daemon.sync.applier import Applier, Library, Result, Retry, journal, row_of
from objlib_daemon.sync.planner import Action, Disk, Row, decide, needs_hash

log = get_logger("objlibd.engine")

TRACKED = (INDEXED, PENDING, FAILED)

# An upload whose document a listing does not show may still land: a listing
# shows a new document only 0.25-1.5 s after its operation is done
# (gemini-file-search.md), and a finalize in flight when the daemon died is
# finished by the server all the same. So a listing proves an attempt left
# nothing only when it starts this long after the attempt ended. (An attempt
# of an earlier run ended before this run started; none outlives an hour.)
INTENT_GRACE = 20.0
# From this many rows a reconcile fetches them in a helper process during the
# walk (state/background.py); fewer are not worth its start (~15 ms).
BACKGROUND_ROWS = 5000
MAX_ATTEMPT = 3600.0


@dataclass
class Plan:
    """What a reconcile found: candidates to look at and vanished paths."""

    candidates: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)
    tracked: int = 0  # counted only when some vanished (for the mass-missing guard)
    # A forced reconcile hashes every present file during the walk: how many,
    # and what it found for the candidates (the unchanged ones are left out).
    hashed: int = 0
    seen: dict[str, Disk | Exception] = field(default_factory=dict)


# (path, state, size, mtime_ns): what a reconcile needs of each `files` row.
_PlanRow = tuple[str, str, int | None, int | None]
_PLAN_ROWS = "SELECT path, state, size, mtime_ns FROM files"
# A forced one also needs the hash a file must have to be plainly unchanged:
# indexed, uploaded with the content last hashed, with this enrichment. SQLite
# says which rows qualify, so one string per row crosses over, not four.
_FORCE_ROWS = (
    "SELECT path, state, size, mtime_ns, CASE WHEN state = 'indexed' AND document IS NOT NULL "
    "AND upload_sha256 = sha256 AND enrichment_version = ? THEN sha256 END FROM files"
)


def _plan_rows(s: Session, *, version: str | None = None) -> dict[str, _PlanRow]:
    """Every row as a plain tuple, read through the driver; with an enrichment
    `version`, a fifth item: the hash of an unchanged file (see _FORCE_ROWS).

    A reconcile reads the whole table; ORM objects for 100k rows cost 1.9 s
    and 200 MB, SQLAlchemy rows 0.25 s, sqlite3 tuples 0.12 s
    (docs/benchmarks.md, benchmark 1).
    """
    raw = s.connection().connection.driver_connection
    rows = raw.execute(_PLAN_ROWS) if version is None else raw.execute(_FORCE_ROWS, (version,))
    return {r[0]: r for r in rows}


_ROW_COLUMNS = "state, size, mtime_ns, sha256, upload_sha256, document, enrichment_version"


def _planner_rows(s: Session, paths: list[str]) -> dict[str, Row | None]:
    """The planner's view of each path's row (None: no row), in one pass over the table
    when there are many (a query per path costs 60 us: 6 s for 100k)."""
    if len(paths) < 1000:
        return {p: row_of(s.get(File, p)) for p in paths}
    out: dict[str, Row | None] = dict.fromkeys(paths)
    raw = s.connection().connection.driver_connection
    for r in raw.execute(f"SELECT path, {_ROW_COLUMNS} FROM files"):
        if r[0] in out:
            out[r[0]] = Row(*r[1:])
    return out


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _likely_moves(vanished: list[str], rows: dict[str, _PlanRow], new: dict[str, int]) -> int:
    """Vanished rows whose (name, size) reappears among new paths: probably moves."""
    new_keys = Counter((PurePosixPath(p).name, size) for p, size in new.items())
    moves = 0
    for path in vanished:
        k = (PurePosixPath(path).name, rows[path][2])
        if new_keys[k]:
            new_keys[k] -= 1
            moves += 1
    return moves


class Engine:
    """One library, one store, one database."""

    def __init__(self, db: Database, store: Store | None, library: Library, config: Config):
        self.db = db
        self.store = store
        self.lib = library
        self.config = config
        self.guard = VolumeGuard(library.root, library.library_id)
        self.applier = Applier(db, store, library, self.guard) if store is not None else None
        self.started_at = time.time()
        # Intents a listing has already looked at, and when the ones it had to
        # keep (too young to call lost) are worth another listing.
        self._listed: set[int] = set()
        self.intent_recheck_at: float | None = None

    # --- reconcile ----------------------------------------------------------------------

    def require_volume(self) -> None:
        self.guard = VolumeGuard(self.lib.root, self.lib.library_id)
        if self.applier is not None:
            self.applier.guard = self.guard
        if not self.guard.available:
            raise VolumeUnavailable(
                f"library unavailable: {self.guard.start.reason}. Plug in or mount the "
                "drive (nothing was marked missing)"
            )

    def scan_plan(self, *, force: bool = False) -> Plan:
        """Stat walk vs the files table: which paths need the applier's attention."""
        with _no_gc():  # 100k+ tuples and no cycles: the collector's passes cost 15%
            return self._scan_plan(force)

    def _scan_plan(self, force: bool) -> Plan:
        self.require_volume()
        if force:
            result, rows, plan = self._hashed_scan()
        else:
            result, rows = self._scan_and_rows()
            plan = Plan(problems=result.problems)
        if not self.guard.verify().available:
            raise VolumeUnavailable(
                "the library went away during the scan; nothing was changed. "
                "Reconnect the drive and run again"
            )
        new: dict[str, int] = {}
        candidates = plan.candidates
        unchanged = 0
        entries = result.entries
        get, seen = rows.get, plan.seen
        for path, entry in entries.items():  # entry: (path, size, mtime_ns, on_disk)
            f = get(path)  # (path, state, size, mtime_ns, ...)
            if f is not None and (f[1] == INDEXED or f[1] == FAILED):
                if force:
                    if path in seen:
                        candidates.append(path)
                    else:
                        unchanged += 1
                elif f[2] == entry[1] and f[3] == entry[2]:
                    unchanged += 1
                else:
                    candidates.append(path)
            else:
                candidates.append(path)
                if f is None or f[1] == PRUNED:
                    new[path] = entry[1]
        plan.unchanged = unchanged
        # A set difference (in C) finds the rows not on disk; the tracked count
        # matters only when some are gone (the mass-missing guard).
        gone = rows.keys() - entries.keys()
        plan.vanished = sorted(p for p in gone if rows[p][1] in TRACKED)
        if not plan.vanished:
            return plan
        plan.tracked = sum(1 for f in rows.values() if f[1] in TRACKED)
        limit = max(
            self.config.sync.max_missing_count,
            int(self.config.sync.max_missing_fraction * plan.tracked),
        )
        missing = len(plan.vanished) - _likely_moves(plan.vanished, rows, new)
        if missing > limit and not force:
            raise SafetyAbort(
                f"{missing} of {plan.tracked} tracked files vanished in one pass (limit {limit}): "
                "is the right drive mounted? Nothing was marked missing. If they were really "
                "deleted, run again with --force"
            )
        return plan

    def _scan_and_rows(self) -> tuple[ScanResult, dict[str, _PlanRow]]:
        """The walk, and every row: for a large table fetched by a helper process
        meanwhile (state/background.py), else here before the walk."""
        with self.db.session() as s:
            raw = s.connection().connection.driver_connection
            (count,) = raw.execute("SELECT count(*) FROM files").fetchone()
            if count < BACKGROUND_ROWS:
                return scan(self.lib.root, self.lib.eligibility), _plan_rows(s)
        pending = BackgroundQuery(self.db.path, _PLAN_ROWS)
        try:
            result = scan(self.lib.root, self.lib.eligibility)
            fetched = pending.rows()
        finally:
            pending.close()
        if fetched is None:
            with self.db.session() as s:
                return result, _plan_rows(s)
        return result, {r[0]: r for r in fetched}

    def _hashed_scan(self) -> tuple[ScanResult, dict[str, tuple], Plan]:
        """The walk with every file hashed as it is found (on every core when many:
        docs/benchmarks.md, benchmark 2), and the rows loaded while the workers
        finish. `plan.seen` keeps what was found for each file that is not
        plainly unchanged: indexed, with this content, enrichment and stat."""
        with HashStream(root=os.fspath(self.lib.root)) as hashes:
            add = hashes.add
            result = scan(self.lib.root, self.lib.eligibility, lambda e: add(e.on_disk))
            with self.db.session() as s:
                rows = _plan_rows(s, version=self.lib.enrichment_version)
            snapshots = hashes.results()
        plan = Plan(problems=result.problems)
        seen = plan.seen
        hashed = 0
        for path, snap in zip(result.entries, snapshots, strict=True):
            if isinstance(snap, Exception):
                seen[path] = snap
                continue
            hashed += 1
            f = rows.get(path)
            if f is None or f[4] != snap.sha256 or f[2] != snap.size or f[3] != snap.mtime_ns:
                seen[path] = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
        plan.hashed = hashed
        return result, rows, plan

    def reconcile(
        self, *, force: bool = False, vanished: bool = True, keep_backoff: bool = True
    ) -> Plan:
        """Scan and enqueue (vanished paths too unless the caller does it later).

        Paths backing off after failures keep their due time unless
        `keep_backoff` is off (a user's one-shot sync retries everything now).
        """
        plan = self.scan_plan(force=force)
        reason = queue.FORCE if force else queue.SCAN
        with self.db.session() as s:
            queue.enqueue(
                s, ((p, reason) for p in plan.candidates), keep_backoff=keep_backoff and not force
            )
            self.db.set_meta(s, last_reconcile_at=str(time.time()))
        if vanished:
            self.enqueue_vanished(plan)
        return plan

    def enqueue_vanished(self, plan: Plan) -> None:
        """Vanished paths are due after the present ones, so moves resolve first."""
        with self.db.session() as s:
            queue.enqueue(
                s,
                ((p, queue.SCAN) for p in plan.vanished),
                not_before=time.time(),
                keep_backoff=True,
            )

    def dry_run(self, *, force: bool = False) -> tuple[Counter[str], list[tuple[str, str]]]:
        """The plan as it would be applied, from a read-only look: no writes, no remote calls."""
        plan = self.scan_plan(force=force)
        counts: Counter[str] = Counter(unchanged=plan.unchanged, hashed=plan.hashed)
        items: list[tuple[str, str]] = []
        with self.db.session() as s:
            rows = _planner_rows(s, plan.candidates + plan.vanished)
        new_hashes: set[str] = set()
        version = self.lib.enrichment_version
        # What each candidate is on disk: a forced scan has hashed them all; else
        # stat, and hash (batched: hash_files) those the planner needs hashed.
        looked: list[tuple[str, Disk | Exception | None]] = []
        to_hash: list[str] = []
        for path in plan.candidates:
            if path in plan.seen:
                looked.append((path, plan.seen[path]))
                continue
            try:
                full, st = self._stat(path)
            except OSError as exc:
                looked.append((path, exc))
                continue
            disk = Disk(True, st.st_size, st.st_mtime_ns)
            if needs_hash(rows[path], disk, force=force):
                to_hash.append(full)
                looked.append((path, None))
            else:
                looked.append((path, disk))
        snapshots = hash_files(to_hash)
        for path, seen in looked:
            if seen is None:  # hashed now
                snap = next(snapshots)
                if isinstance(snap, Exception):
                    seen = snap
                else:
                    counts["hashed"] += 1
                    seen = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
            if isinstance(seen, Exception):
                counts["failed"] += 1
                items.append((path, f"error: {seen}"))
                continue
            action = decide(rows[path], seen, force=force, enrichment_version=version)
            if action in (Action.NEW, Action.MODIFIED):
                new_hashes.add(seen.sha256 or "")
            name = {Action.REFRESH: "unchanged", Action.STILL_FAILED: "failed"}.get(
                action, action.value
            )
            counts[name] += 1
            if name != "unchanged":
                items.append((path, name))
        for path in plan.vanished:
            row = rows[path]
            if row and row.upload_sha256 in new_hashes:
                counts["moved"] += 1
                counts["new"] -= 1
                items.append((path, "moved"))
            elif row and row.document:
                counts["missing"] += 1
                items.append((path, "missing"))
        return counts, items

    def _stat(self, path: str) -> tuple[str, os.stat_result]:
        """(on-disk path, stat) of a key; the NFC-equal spelling only when the key is not there."""
        full = os.path.join(self.lib.root, path)
        try:
            return full, os.stat(full)
        except FileNotFoundError:
            real = os.fspath(resolve(self.lib.root, path))
            if real == full:
                raise
            return real, os.stat(real)

    # --- drain --------------------------------------------------------------------------

    def backoff(self, attempts: int, hint: float | None = None) -> float:
        base = self.config.sync.retry_base * 2 ** min(attempts, 20)
        delay = min(self.config.sync.retry_max, base) * random.uniform(0.8, 1.2)
        return max(delay, hint or 0.0)

    def drain(
        self,
        *,
        stop: threading.Event | None = None,
        on_result: Callable[[Result], None] | None = None,
        concurrency: int | None = None,
    ) -> Counter[str]:
        """Apply every due queue row; a failing row is rescheduled, never blocks the rest."""
        assert self.applier is not None
        stop = stop or threading.Event()
        halt = threading.Event()  # volume gone, breaker open, credentials rejected
        fatal: list[BaseException] = []
        counts: Counter[str] = Counter()
        lock = threading.Lock()
        with self.db.session() as s:
            # One applier, one drain at a time: a row in flight now was claimed by
            # a drain that could not write its outcome (the state dir's disk
            # full). It is due again, or no later change to it would be applied.
            queue.reset_inflight(s)
        self._resolve_intents_quietly()

        def worker() -> None:
            while not stop.is_set() and not halt.is_set():
                with self.db.session() as s:
                    claims = queue.claim(s, limit=1)
                if not claims:
                    return
                claim = claims[0]
                outcome = self._apply_one(claim, halt, fatal)
                with lock:
                    counts[outcome.action] += 1
                    counts["hashed"] += outcome.hashed
                    counts["uploaded"] += outcome.uploaded
                    counts["deleted"] += outcome.deleted
                if on_result is not None:
                    on_result(outcome)

        workers = concurrency or self.config.store.concurrency
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="applier") as pool:
            for future in [pool.submit(worker) for _ in range(workers)]:
                future.result()
        with self.db.session() as s:
            has_intents = s.scalar(select(Intent.id).limit(1)) is not None
        if has_intents and not halt.is_set():
            self._resolve_intents_quietly()
        if fatal:
            raise fatal[0]
        return counts

    def _apply_one(self, claim: queue.Claim, halt: threading.Event, fatal: list) -> Result:
        assert self.applier is not None
        try:
            result = self.applier.apply(claim.path, force=claim.reason == queue.FORCE)
        except Retry as exc:
            if exc.soon:  # still being written: look again once it has settled
                delay = self.config.daemon.settle_seconds
            else:
                delay = self.backoff(claim.attempts)
            return self._later(claim, str(exc), delay)
        except CircuitOpen as exc:
            halt.set()
            with self.db.session() as s:
                queue.release(s, [claim])
            return Result(claim.path, "paused", error=str(exc))
        except TransientError as exc:
            return self._later(claim, str(exc), self.backoff(claim.attempts, exc.retry_after))
        except (VolumeUnavailable, AuthError) as exc:
            halt.set()
            fatal.append(exc)
            with self.db.session() as s:
                queue.release(s, [claim])
            return Result(claim.path, "paused", error=str(exc))
        except StoreError as exc:
            return self._later(claim, str(exc), self.backoff(claim.attempts))
        except Exception as exc:  # a bug must not stop the other files
            log.exception("applier error", path=claim.path)
            return self._later(claim, f"internal error: {exc!r}", self.backoff(claim.attempts))
        with self.db.session() as s:
            queue.complete(s, claim)
        return result

    def _later(self, claim: queue.Claim, error: str, delay: float) -> Result:
        log.info("retry later", path=claim.path, error=error, delay=round(delay, 1))
        with self.db.session() as s:
            queue.retry_later(s, claim, error=error, delay=delay)
            f = s.get(File, claim.path)
            if f is not None:
                f.last_error = error[:2000]
        return Result(claim.path, "retrying", error=error)

    # --- crash leftovers ----------------------------------------------------------------

    def _resolve_intents_quietly(self) -> None:
        """A store that fails now leaves the intents for the next drain; never fatal."""
        try:
            self.resolve_intents()
        except TransientError as exc:
            log.warning("could not resolve unfinished uploads yet", error=str(exc))

    def resolve_intents(self) -> int:
        """Adopt or delete documents left by uploads whose result was never recorded.

        One listing of the store covers every leftover intent; an adopted
        document is re-queued so the applier checks it against the disk.

        Only intents whose path is not queued, or due now, are settled. A path
        backing off is not uploaded again yet, so its leftovers wait for the
        listing just before its retry: an import that outlived the operation
        deadline is still indexing (not listed) right after the failure, but
        listed by then, and adopted instead of uploaded twice. A storm of
        failing uploads costs no listings either.

        An intent stays until a listing that starts `INTENT_GRACE` after its
        attempt ended: an earlier one may miss a document that is still on
        its way, which would then be left behind as a second copy. Such an
        intent is listed again at `intent_recheck_at`, not at every drain.
        Returns how many intents were settled.
        """
        assert self.store is not None and self.applier is not None
        now = time.time()
        with self.db.session() as s:
            intents = s.scalars(select(Intent)).all()
            queued = {
                q.path: q.next_attempt_at
                for q in s.scalars(
                    select(PendingChange).where(PendingChange.path.in_({i.path for i in intents}))
                ).all()
            }
        intents = [i for i in intents if queued.get(i.path, 0.0) <= now]
        fresh = [i for i in intents if i.id not in self._listed]
        if not intents or (not fresh and now < (self.intent_recheck_at or 0.0)):
            return 0
        wanted = {i.path for i in intents}
        found: dict[str, list] = {}
        for doc in self.store.list():
            meta = doc.metadata
            if meta.get("library_id") == self.lib.library_id and meta.get("path") in wanted:
                found.setdefault(str(meta["path"]), []).append(doc)
        extra: list[str] = []
        with self.db.session() as s:
            for path in wanted:
                began: dict[str, float] = {}  # sha256 -> its earliest attempt
                for i in intents:
                    if i.path == path:
                        began[i.sha256] = min(began.get(i.sha256, i.started_at), i.started_at)
                f = s.get(File, path)
                for doc in sorted(found.get(path, []), key=lambda d: d.create_time or ""):
                    if f is not None and f.document == doc.name:
                        continue
                    sha = doc.metadata.get("sha256")
                    # Never over a newer upload: a row changed since the attempt
                    # began holds something later than that attempt's content.
                    adopt = (
                        sha in began
                        and doc.state != "failed"
                        and (
                            f is None
                            or (f.upload_sha256 != sha and (f.updated_at or 0.0) <= began[sha])
                        )
                    )
                    if adopt:
                        superseded = adopt_document(
                            s,
                            path,
                            doc.name,
                            str(sha),
                            version=self.lib.enrichment_version,
                            now=now,
                            why="upload finished before a crash",
                            settle_intents=False,
                        )
                        if superseded:
                            extra.append(superseded)
                        f = s.get(File, path)
                    else:
                        extra.append(doc.name)
                        s.merge(
                            Orphan(
                                document=doc.name,
                                path=path,
                                reason="duplicate upload",
                                created_at=now,
                            )
                        )
            quiet = {i.id: self._attempt_ended(i, now) + INTENT_GRACE for i in intents}
            settled = [i.id for i in intents if quiet[i.id] <= now]
            s.execute(delete(Intent).where(Intent.id.in_(settled)))
        self._listed.update(i.id for i in intents)
        kept = [t for i, t in quiet.items() if i not in settled]
        self.intent_recheck_at = min(kept) if kept else None
        for name in extra:
            self.applier.retire(name)
        return len(settled)

    def _attempt_ended(self, intent: Intent, now: float) -> float:
        """When the upload attempt of `intent` ended, or the latest it could have."""
        if intent.ended_at is not None:
            return intent.ended_at
        if intent.started_at < self.started_at:  # an earlier run's: it died before we began
            return min(self.started_at, intent.started_at + MAX_ATTEMPT)
        return now  # ours and not ended: still running, somewhere

    # --- sweeps -------------------------------------------------------------------------

    def cleanup_orphans(self, *, everything: bool = False) -> int:
        """Retry deleting recorded orphans (those due, or all with `everything`)."""
        assert self.applier is not None
        with self.db.session() as s:
            q = select(Orphan.document)
            if not everything:
                q = q.where(Orphan.next_attempt_at <= time.time())
            docs = s.scalars(q).all()
        return sum(self.applier.retire(d) for d in docs)

    def prune(self, older_than: float) -> int:
        """Delete the documents of files missing for longer than `older_than` seconds."""
        assert self.applier is not None
        cutoff = time.time() - older_than
        with self.db.session() as s:
            victims = s.scalars(
                select(File).where(File.state == MISSING, File.missing_since < cutoff)
            ).all()
            now = time.time()
            for f in victims:
                if f.document:
                    s.merge(
                        Orphan(document=f.document, path=f.path, reason="pruned", created_at=now)
                    )
                journal(s, "pruned", f.path, f.document)
                f.state, f.document, f.upload_sha256, f.updated_at = PRUNED, None, None, now
        with self.db.session() as s:
            docs = [
                o.document for o in s.scalars(select(Orphan).where(Orphan.reason == "pruned")).all()
            ]
        for d in docs:
            self.applier.retire(d)
        return len(victims)
