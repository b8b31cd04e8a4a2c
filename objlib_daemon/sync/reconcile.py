"""Reconcile: walk the library, compare with the `files` table, enqueue what differs.

A reconcile never decides what to do with a file; it only says "look at this
path" (docs/design.md: producers enqueue hints, one applier applies). The dry run
is the same walk followed by the applier's read-only `look` on each
candidate, so the plan shown is the plan executed.

A folder hint (a folder created, moved or deleted, or one that had too many
events to track each: daemon/debounce.py) is the same comparison on one
folder's subtree: `expand_due` turns due hints into file rows before the
drain claims any.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from objlib_daemon.config import Config
from objlib_daemon.errors import SafetyAbort, VolumeUnavailable
from objlib_daemon.library.files import HashStream
from objlib_daemon.library.paths import resolve
from objlib_daemon.library.scan import Entry, ScanResult, scan
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.state import queue
from objlib_daemon.state.background import BackgroundQuery
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import FileState, Lane, Meta
from objlib_daemon.sync.applier import Applier, Library, Retry
from objlib_daemon.sync.outcome import Outcome
from objlib_daemon.sync.planner import Action, Disk

# Sets, not enum attributes, in the loops over every row (an attribute of an
# enum class costs ~0.1 µs in Python 3.11: 20 ms a pass for 100k rows).
TRACKED = frozenset({FileState.INDEXED, FileState.PENDING, FileState.FAILED})
# Rows whose unchanged (size, mtime) means unchanged content: not looked at.
SETTLED = frozenset({FileState.INDEXED, FileState.FAILED})
# From this many rows a reconcile fetches them in a helper process during the
# walk (state/background.py); fewer are not worth its start (~15 ms).
BACKGROUND_ROWS = 5000
# Database meta key: a fingerprint of the settings that can make the store or
# the payload refuse a file (eligibility, metadata rules, enrichment); when it
# changes, every failed file is tried again.
FAILURE_SETTINGS = "failure_settings"


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
    # Files the walk passed over as not eligible (hidden, excluded, too small,
    # other formats): counted so a summary can say so, and `objlibd why` says why.
    untracked: int = 0


@dataclass(frozen=True)
class Planned:
    """One line of the dry run: a path and what a sync would do to it."""

    path: str
    action: Outcome
    moved_from: str | None = None  # a move: shown as `old → new`
    error: str | None = None


# (path, state, size, mtime_ns): what a reconcile needs of each `files` row.
_PlanRow = tuple[str, str, int | None, int | None]
_PLAN_ROWS = "SELECT path, state, size, mtime_ns FROM files"
# A forced one also needs the hash a file must have to be plainly unchanged:
# indexed, uploaded with the content last hashed, with this enrichment. SQLite
# says which rows qualify, so one string per row crosses over, not four.
_FORCE_ROWS = (
    f"SELECT path, state, size, mtime_ns, CASE WHEN state = '{FileState.INDEXED}' "
    "AND document IS NOT NULL "
    "AND upload_sha256 = sha256 AND enrichment_version = ? THEN sha256 END FROM files"
)


# The rows below one folder: a range of the primary key ("/" + 1 is "0").
_FOLDER_ROWS = _PLAN_ROWS + " WHERE path >= ? AND path < ?"
# Folder hints expanded per drain round: each is one walk and one range read.
FOLDER_BATCH = 64


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


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compare(
    entries: dict[str, Entry], rows: dict[str, tuple], plan: Plan, *, force: bool = False
) -> dict[str, int]:
    """Fill `plan` (candidates, unchanged, vanished) from the walk and the rows;
    returns the paths with no row yet, with their sizes (for `likely_moves`).

    Without `force` the mtime shortcut decides: an indexed (or failed) row with
    the same size and mtime is unchanged. With it, what the walk hashed does
    (`plan.seen` holds every file that is not plainly unchanged).
    """
    new: dict[str, int] = {}
    candidates = plan.candidates
    unchanged = 0
    get, seen = rows.get, plan.seen
    for path, entry in entries.items():  # entry: (path, size, mtime_ns, on_disk)
        f = get(path)  # (path, state, size, mtime_ns, ...)
        if f is not None and f[1] in SETTLED:
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
            if f is None or f[1] == FileState.PRUNED:
                new[path] = entry[1]
    plan.unchanged = unchanged
    # A set difference (in C) finds the rows not on disk.
    gone = rows.keys() - entries.keys()
    plan.vanished = sorted(p for p in gone if rows[p][1] in TRACKED)
    return new


def likely_moves(vanished: list[str], sizes: dict[str, int | None], new: dict[str, int]) -> int:
    """Vanished paths whose (name, size) reappears among new paths: probably moves.

    Only the mass-missing guard counts with this (before anything is hashed);
    the applier decides what really moved, by content (`Applier._moved_from`).
    """
    new_keys = Counter((PurePosixPath(p).name, size) for p, size in new.items())
    moves = 0
    for path in vanished:
        k = (PurePosixPath(path).name, sizes[path])
        if new_keys[k]:
            new_keys[k] -= 1
            moves += 1
    return moves


class Reconciler:
    """Scans one library against its database and enqueues the differences."""

    def __init__(self, db: Database, library: Library, config: Config, applier: Applier):
        self.db = db
        self.lib = library
        self.config = config
        self.applier = applier

    def require_volume(self) -> VolumeGuard:
        """A fresh guard for this pass; raises VolumeUnavailable when the library is away."""
        guard = VolumeGuard(self.lib.root, self.lib.library_id)
        self.applier.guard = guard
        if not guard.available:
            raise VolumeUnavailable(
                f"library unavailable: {guard.start.reason}. Plug in or mount the "
                "drive (nothing was marked missing)"
            )
        return guard

    def scan_plan(self, *, force: bool = False, allow_mass_missing: bool = False) -> Plan:
        """Stat walk vs the files table: which paths need the applier's attention."""
        with _no_gc():  # 100k+ tuples and no cycles: the collector's passes cost 15%
            return self._scan_plan(force, allow_mass_missing)

    def _scan_plan(self, force: bool, allow_mass_missing: bool) -> Plan:
        guard = self.require_volume()
        if force:
            result, rows, plan = self._hashed_scan()
        else:
            result, rows = self._scan_and_rows()
            plan = Plan(problems=result.problems)
        if not guard.verify().available:
            raise VolumeUnavailable(
                "the library went away during the scan; nothing was changed. "
                "Reconnect the drive and run again"
            )
        new = compare(result.entries, rows, plan, force=force)
        # The walk passed over our own marker too (the guard just read it): not the user's.
        plan.untracked = max(0, result.ineligible - 1)
        # The tracked count matters only when some are gone (the mass-missing guard).
        if not plan.vanished:
            return plan
        plan.tracked = sum(1 for f in rows.values() if f[1] in TRACKED)
        limit = max(
            self.config.sync.max_missing_count,
            int(self.config.sync.max_missing_fraction * plan.tracked),
        )
        sizes = {p: rows[p][2] for p in plan.vanished}
        missing = len(plan.vanished) - likely_moves(plan.vanished, sizes, new)
        if missing > limit and not allow_mass_missing:
            raise SafetyAbort(
                f"{missing} of {plan.tracked} tracked files vanished in one pass (limit {limit}): "
                "is the right drive mounted? Nothing was marked missing. If they were really "
                "deleted, run again with --allow-mass-missing"
            )
        return plan

    def expand_due(self) -> int:
        """Turn the due folder hints into rows for the files below each folder
        that differ from the `files` table (an event's reasons: the fresh lane),
        vanished ones after the present ones. Returns the hints expanded.

        Like a reconcile of the folders' subtrees, with the volume verified
        around the walk; unlike one, no mass-missing guard: a folder the watcher
        saw deleted was deleted by someone (the applier still marks each file
        missing only on a verified volume). Raises VolumeUnavailable when the
        library is away; the hints then wait for it.
        """
        with self.db.reading() as s:  # the drain asks before every claim: no write lock
            due = queue.next_due(s, lane=Lane.FOLDERS)
        if due is None or due > time.time():
            return 0
        with self.db.session() as s:
            hints = queue.claim(s, limit=FOLDER_BATCH, lanes=(Lane.FOLDERS,))
        if not hints:
            return 0
        root = self.lib.root
        guard = VolumeGuard(root, self.lib.library_id)
        entries: dict[str, Entry] = {}
        bounds = []
        for hint in hints if guard.available else []:
            folder = hint.path[:-1]
            under = os.path.relpath(resolve(root, folder), root)
            entries |= scan(root, self.lib.eligibility, under=under).entries
            bounds.append((hint.path, folder + "0"))
        volume = guard.verify()
        if not volume.available:
            with self.db.session() as s:
                queue.release(s, hints)
            raise VolumeUnavailable(f"library unavailable: {volume.reason}")
        plan = Plan()
        with self.db.session() as s:
            raw = s.connection().connection.driver_connection
            rows = {r[0]: r for bound in bounds for r in raw.execute(_FOLDER_ROWS, bound)}
            compare(entries, rows, plan)
            # The walks' problems are left to the next reconcile, which reports them.
            queue.enqueue(s, ((p, queue.EVENT) for p in plan.candidates), keep_backoff=True)
            queue.enqueue(
                s,
                ((p, queue.MOVED_FROM) for p in plan.vanished),
                not_before=time.time(),
                keep_backoff=True,
            )
            queue.complete(s, hints)
        return len(hints)

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
        """The walk with every file hashed as it is found (on a process pool
        when many: docs/benchmarks.md, benchmark 2), and the rows loaded while
        the workers finish. `plan.seen` keeps what was found for each file that is not
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
        self,
        *,
        force: bool = False,
        allow_mass_missing: bool = False,
        vanished: bool = True,
        keep_backoff: bool = True,
        retry_failed: bool = False,
    ) -> Plan:
        """Scan and enqueue (vanished paths too unless the caller does it later).

        Paths backing off after failures keep their due time unless
        `keep_backoff` is off (a user's one-shot sync retries everything now).
        Failed files are queued to be tried again as `_failed_due` says.
        """
        plan = self.scan_plan(force=force, allow_mass_missing=allow_mass_missing)
        reason = queue.FORCE if force else queue.SCAN
        with self.db.session() as s:
            queue.enqueue(
                s, ((p, reason) for p in plan.candidates), keep_backoff=keep_backoff and not force
            )
            if not keep_backoff:
                queue.due_now(s)
            retry = self._failed_due(s, every=retry_failed) - set(plan.vanished)
            queue.enqueue(s, ((p, queue.RETRY) for p in sorted(retry)))
            self.db.set_meta(s, last_reconcile_at=str(time.time()))
        if vanished:
            self.enqueue_vanished(plan)
        return plan

    def _failed_due(self, s: Session, *, every: bool) -> set[str]:
        """Failed files whose refusal may have had a cause outside them that has gone:
        all of them when asked (`sync --retry-failed`) or when the settings that
        decide refusals changed since the last reconcile, else those failed for
        longer than `[sync] retry_failed_after` (the daemon's reconciles make
        that the slow schedule). Records the settings' fingerprint."""
        settings = hashlib.sha256(
            repr(
                (self.config.library, self.config.metadata_rules, self.lib.enrichment_version)
            ).encode()
        ).hexdigest()
        recorded = s.get(Meta, FAILURE_SETTINGS)  # in this transaction: a second one would wait
        changed = recorded is None or recorded.value != settings
        if changed:
            self.db.set_meta(s, **{FAILURE_SETTINGS: settings})
        raw = s.connection().connection.driver_connection
        cutoff = time.time() - self.config.sync.retry_failed_after
        if every or changed:
            rows = raw.execute("SELECT path FROM files WHERE state = ?", (FileState.FAILED,))
        else:
            query = "SELECT path FROM files WHERE state = ? AND updated_at <= ?"
            rows = raw.execute(query, (FileState.FAILED, cutoff))
        return {r[0] for r in rows}

    def enqueue_vanished(self, plan: Plan) -> None:
        """Vanished paths are due after the present ones, so moves resolve first."""
        with self.db.session() as s:
            queue.enqueue(
                s,
                ((p, queue.SCAN) for p in plan.vanished),
                not_before=time.time(),
                keep_backoff=True,
            )

    def dry_run(
        self,
        *,
        force: bool = False,
        allow_mass_missing: bool = False,
        prune_older: float | None = None,
    ) -> tuple[Counter[str], list[Planned], Plan]:
        """The plan as it would be applied: the applier's own read-only look at
        every candidate, and what a prune would delete. No writes, no remote calls."""
        plan = self.scan_plan(force=force, allow_mass_missing=allow_mass_missing)
        counts: Counter[str] = Counter(
            unchanged=plan.unchanged, hashed=plan.hashed, untracked=plan.untracked
        )
        items: list[Planned] = []
        new_hashes: dict[str, int] = {}  # content → its `new` item (a move if it vanished)
        for path in plan.candidates:
            seen = plan.seen.get(path)
            if isinstance(seen, Exception):
                counts[Outcome.FAILED] += 1
                items.append(Planned(path, Outcome.FAILED, error=str(seen)))
                continue
            try:
                look = self.applier.look(path, force=force, disk=seen)
            except (Retry, OSError) as exc:
                counts[Outcome.FAILED] += 1
                items.append(Planned(path, Outcome.FAILED, error=str(exc)))
                continue
            if look.snap is not None:
                counts["hashed"] += 1
            if look.problem:
                outcome = Outcome.SKIPPED if look.row is None else Outcome.FAILED
            else:
                outcome = look.action.outcome
            if look.action in (Action.NEW, Action.MODIFIED):
                new_hashes[look.disk.sha256 or ""] = len(items)
            counts[outcome.counted_as] += 1
            if outcome.acted:
                items.append(Planned(path, outcome, error=look.problem))
        for path in plan.vanished:
            look = self.applier.look(path)
            row = look.row
            at = new_hashes.get(row.upload_sha256 or "") if row else None
            if at is not None and items[at].action is Outcome.NEW:  # its content is there now
                counts[Outcome.MOVED] += 1
                counts[Outcome.NEW] -= 1
                items[at] = Planned(items[at].path, Outcome.MOVED, moved_from=path)
            elif look.action is Action.VANISHED:
                counts[Outcome.MISSING] += 1
                items.append(Planned(path, Outcome.MISSING))
        if prune_older is not None:
            pruned = self.applier.prunable(prune_older)
            counts["pruned"] = len(pruned)
            items += [Planned(p, Outcome.PRUNED) for p in pruned]
        return counts, items, plan
