"""Crash recovery: uploads whose outcome was never recorded, settled by one rule.

An intent is written before every upload and removed with the record of its
document. One left behind (a crash, a lost answer, an attempt that outlived
its deadline) may have produced a document anyway. `resolve_intents` lists
the store once for all of them and, for each of our documents at such a
path, either adopts it (the applier records it) or records it as an orphan
to delete. `adoptable` (adoption.py) is the rule, shared with the applier and
`objlibd verify --repair`.
Intents whose import the drain is tracking are not recovery's business.

A database lost, damaged or rebuilt (`objlibd init --rebuild`) has no row for
documents the store holds. `init` counts them and flags the database; while
it is flagged, each drain lists the store once (`index_identities`, never once
per file) and the applier adopts a new file's document by its identity
(library id, path, sha256) instead of uploading it again.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace

from sqlalchemy import delete, select, update

from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File, Intent, Orphan, PendingChange
from objlib_daemon.stores.base import ACTIVE, PENDING, RemoteDocument, TransientError
from objlib_daemon.sync.adoption import adoptable
from objlib_daemon.sync.applier import Applier

log = get_logger("objlibd.recovery")

# An upload whose document a listing does not show may still land: a listing
# shows a new document only 0.25-1.5 s after its operation is done
# (docs/gemini-file-search.md), and a finalize in flight when the daemon died is
# finished by the server all the same. So a listing proves an attempt left
# nothing only when it starts this long after the attempt ended. (An attempt
# of an earlier run ended before this run started; none outlives an hour.)
INTENT_GRACE = 20.0
MAX_ATTEMPT = 3600.0
# How often a listing looks again at a document still PENDING for an intent.
PENDING_RECHECK = 60.0
# Database meta key: set by `init` when the store holds documents of this
# library that no row records; cleared once a drain empties the queue.
ADOPT_META = "adopt_by_identity"


class Recovery:
    """Settles leftover intents of one library; remembers which it already listed."""

    def __init__(self, db: Database, applier: Applier) -> None:
        self.db = db
        self.applier = applier
        self.started_at = time.time()
        # Intents a listing has already looked at, and when the ones it had to
        # keep (too young to call lost) are worth another listing.
        self._listed: set[int] = set()
        self.intent_recheck_at: float | None = None

    # --- adoption by identity (a lost or rebuilt database) ---------------------------

    def identity_index(self) -> dict[tuple[str, str], list[RemoteDocument]]:
        """One listing: this library's ACTIVE documents no row or orphan holds, by
        (path, sha256), oldest first (the one to keep; later ones are copies)."""
        store = self.applier.store
        assert store is not None
        library_id = self.applier.lib.library_id
        with self.db.session() as s:
            held = set(s.scalars(select(File.document).where(File.document.is_not(None))))
            held.update(s.scalars(select(Orphan.document)))
        index: dict[tuple[str, str], list[RemoteDocument]] = {}
        for doc in store.list():
            path, sha = doc.metadata.get("path"), doc.metadata.get("sha256")
            if (
                doc.metadata.get("library_id") == library_id
                and doc.state == ACTIVE
                and doc.name not in held
                and isinstance(path, str)
                and isinstance(sha, str)
            ):
                index.setdefault((path, sha), []).append(doc)
        for docs in index.values():
            docs.sort(key=lambda d: d.create_time or "")
        return index

    def expect_adoption(self) -> int:
        """At `init`: how many documents of ours the store holds unrecorded (one per
        path and content); flags the database so the next drains adopt them."""
        index = self.identity_index()
        if index:
            with self.db.session() as s:
                self.db.set_meta(s, **{ADOPT_META: str(len(index))})
        return len(index)

    def index_identities(self) -> None:
        """While the database is flagged, hand the applier the index of a listing made
        for this drain (a failing listing propagates: uploading blind would duplicate)."""
        if self.db.get_meta(ADOPT_META) is not None:
            self.applier.by_identity = self.identity_index()

    def identities_settled(self) -> None:
        """After a drain that ran to its end: with nothing left queued, every file
        the index could serve has been looked at; later drains list nothing."""
        self.applier.by_identity = {}
        if self.db.get_meta(ADOPT_META) is None:
            return
        with self.db.session() as s:
            if queue.depth(s) == 0:
                self.db.set_meta(s, **{ADOPT_META: None})

    # --- intents ------------------------------------------------------------------------

    def resolve_quietly(self, busy: Collection[int] = ()) -> None:
        """A store that fails now leaves the intents for the next drain; never fatal."""
        try:
            self.resolve_intents(busy)
        except TransientError as exc:
            log.warning("could not resolve unfinished uploads yet", error=str(exc))

    def resolve_intents(self, busy: Collection[int] = ()) -> int:
        """Adopt or delete documents left by uploads whose result was never recorded.

        `busy`: intents whose import the drain is tracking right now.

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
        An intent whose document is still PENDING, and would be adopted once
        indexed, stays too: its retry waits on it instead of uploading.
        Returns how many intents were settled.
        """
        store = self.applier.store
        assert store is not None
        now = time.time()
        with self.db.session() as s:
            every = s.scalars(select(Intent)).all()
            # The tracker's imports are not ours to judge: their documents may
            # be listed already while it still waits to record them.
            tracked = {(i.path, i.sha256) for i in every if i.id in busy}
            intents = [i for i in every if i.id not in busy]
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
        library_id = self.applier.lib.library_id
        found: dict[str, list[RemoteDocument]] = {}
        for doc in store.list():
            meta = doc.metadata
            if meta.get("library_id") == library_id and meta.get("path") in wanted:
                found.setdefault(str(meta["path"]), []).append(doc)
        extra: list[str] = []
        waiting: set[str] = set()  # paths with a PENDING document of the current content
        with self.db.session() as s:
            for path in wanted:
                attempts: dict[str, float] = {}  # sha256 -> its earliest attempt
                for i in intents:
                    if i.path == path:
                        attempts[i.sha256] = min(attempts.get(i.sha256, i.started_at), i.started_at)
                f = s.get(File, path)
                for doc in sorted(found.get(path, []), key=lambda d: d.create_time or ""):
                    if f is not None and f.document == doc.name:
                        continue
                    sha = doc.metadata.get("sha256")
                    if (path, sha) in tracked:
                        continue
                    if doc.state == PENDING and adoptable(
                        replace(doc, state=ACTIVE), f, attempts=attempts
                    ):  # the one to keep, once indexed: wait for it
                        waiting.add(path)
                        continue
                    if adoptable(doc, f, attempts=attempts):
                        why = "upload finished before a crash"
                        superseded = self.applier.adopt(
                            s, path, doc.name, str(sha), why=why, now=now
                        )
                        # Its import is settled: the intent stays only as a
                        # guard for the next listing, never waited on again.
                        s.execute(
                            update(Intent)
                            .where(Intent.path == path, Intent.sha256 == sha)
                            .values(operation=None, document=None)
                        )
                        if superseded:
                            extra.append(superseded)
                        f = s.get(File, path)
                    else:
                        extra.append(doc.name)
                        self.applier.orphan(s, doc.name, path, "duplicate upload", now)
            quiet = {i.id: self._attempt_ended(i, now) + INTENT_GRACE for i in intents}
            for i in intents:  # a PENDING document: look again in a while, not every drain
                if i.path in waiting:
                    quiet[i.id] = max(quiet[i.id], now + PENDING_RECHECK)
            settled = [i.id for i in intents if quiet[i.id] <= now and i.path not in waiting]
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
