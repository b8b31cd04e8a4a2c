"""The one pass over a library, and `Engine`, which holds one library's sync parts.

`objlibd sync` and `objlibd reconcile` with no daemon both run `Engine.run_pass`;
the daemon runs the same parts on its own clock (its reconcile job enqueues,
its drain job drains, its sweeps retire orphans and prune), so the three
entry points behave alike (tests/test_entry_points.py holds them to it).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from objlib_daemon.config import Config
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File, FileState, PendingChange
from objlib_daemon.stores.base import Store
from objlib_daemon.sync.applier import Applier, Library, Result
from objlib_daemon.sync.drain import Drain
from objlib_daemon.sync.reconcile import Plan, Planned, Reconciler
from objlib_daemon.sync.recovery import Recovery

# How many outstanding files a pass names (the rest are counted).
EXAMPLES = 5


@dataclass
class Outstanding:
    """Files a pass left not in the store: failed, waiting, and a few named with why."""

    failed: int = 0
    waiting: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class PassResult:
    """What one pass did: the scan's plan, the drain's counts, the sweeps', and what is
    still outstanding afterwards (also from earlier passes)."""

    plan: Plan
    counts: Counter[str] = field(default_factory=Counter)
    cleaned: int = 0
    pruned: list[str] = field(default_factory=list)
    outstanding: Outstanding = field(default_factory=Outstanding)


class Engine:
    """One library, one store, one database: reconciler, applier, drain, recovery.

    With no store (a read-only look such as the dry run) only the reconciler
    and the applier's `look` work.
    """

    def __init__(self, db: Database, store: Store | None, library: Library, config: Config):
        self.db = db
        self.store = store
        self.lib = library
        self.config = config
        self.applier = Applier(db, store, library, VolumeGuard(library.root, library.library_id))
        self.reconciler = Reconciler(db, library, config, self.applier)
        self.recovery = Recovery(db, self.applier)
        self.drainer = Drain(db, self.applier, self.recovery, config, self.reconciler.expand_due)

    # --- the parts, for the daemon's jobs ------------------------------------------------

    def require_volume(self) -> None:
        self.reconciler.require_volume()

    def reconcile(self, *, force: bool = False, allow_mass_missing: bool = False) -> Plan:
        """Scan and enqueue, vanished paths due after the present ones."""
        return self.reconciler.reconcile(force=force, allow_mass_missing=allow_mass_missing)

    def drain(
        self,
        *,
        stop: threading.Event | None = None,
        on_result: Callable[[Result], None] | None = None,
        concurrency: int | None = None,
    ) -> Counter[str]:
        assert self.store is not None, "draining needs the store"
        return self.drainer.run(stop=stop, on_result=on_result, concurrency=concurrency)

    def dry_run(
        self,
        *,
        force: bool = False,
        allow_mass_missing: bool = False,
        prune_older: float | None = None,
    ) -> tuple[Counter[str], list[Planned], Plan]:
        return self.reconciler.dry_run(
            force=force, allow_mass_missing=allow_mass_missing, prune_older=prune_older
        )

    def cleanup_orphans(self, *, everything: bool = False) -> int:
        return self.applier.cleanup_orphans(everything=everything)

    def prune(self, older_than: float) -> list[str]:
        return self.applier.prune(older_than)

    # --- the one pass ------------------------------------------------------------------------

    def run_pass(
        self,
        *,
        force: bool = False,
        allow_mass_missing: bool = False,
        cleanup_all: bool = False,
        retry_failed: bool = False,
        prune_older: float | None = None,
        on_plan: Callable[[Plan], None] | None = None,
        on_result: Callable[[Result], None] | None = None,
        stop: threading.Event | None = None,
    ) -> PassResult:
        """Orphans due (or all), scan, drain present paths, then vanished ones, then
        files now analysed that were uploaded without AI metadata; prune.

        Present paths go first so a rename is one move, not a missing mark
        followed by a move. Rows backing off are due again: a person asked.
        """
        self.require_volume()
        cleaned = self.cleanup_orphans(everything=cleanup_all)
        plan = self.reconciler.reconcile(
            force=force,
            allow_mass_missing=allow_mass_missing,
            vanished=False,
            keep_backoff=False,
            retry_failed=retry_failed,
        )
        if on_plan is not None:
            on_plan(plan)
        counts = self.drain(stop=stop, on_result=on_result)
        if not (stop and stop.is_set()):
            self.reconciler.enqueue_vanished(plan)
            counts += self.drain(stop=stop, on_result=on_result)
        # Uploaded without their AI metadata: re-uploaded with it once the model answers.
        enricher = self.lib.enricher
        if (
            not (stop and stop.is_set())
            and enricher is not None
            and enricher.queue_ready(self.lib.root, respect_backoff=False)
        ):
            counts += self.drain(stop=stop, on_result=on_result)
        result = PassResult(plan, counts, cleaned)
        if prune_older is not None and not (stop and stop.is_set()):
            result.pruned = self.prune(prune_older)
        self.db.trim_journal()
        result.outstanding = self.outstanding()
        return result

    def outstanding(self) -> Outstanding:
        """Files not in the store as they are on disk, whatever this pass did:
        failed ones (and why), and ones still queued (waiting for a retry or
        indexing). A sync is complete only when both are zero."""
        with self.db.session() as s:
            failed = s.execute(
                select(File.path, File.last_error)
                .where(File.state == FileState.FAILED)
                .order_by(File.path)
            ).all()
            waiting = s.execute(
                select(PendingChange.path, PendingChange.last_error).order_by(PendingChange.path)
            ).all()
        return Outstanding(
            failed=len(failed),
            waiting=len(waiting),
            examples=[f"{p}: {e or 'failed'}" for p, e in failed[:EXAMPLES]]
            + [f"{p}: {e or 'queued'}" for p, e in waiting[: max(0, EXAMPLES - len(failed))]],
        )
