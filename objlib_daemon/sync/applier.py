"""The applier: the only code that writes the `files` table or mutates the store.

Every verb here re-examines disk and database *now* (events are hints, state
is truth) and brackets each remote mutation with durable writes: an intent
before an upload, the operation once the store accepted the bytes, the result
after the import is done, the superseded document recorded as an orphan before
it is deleted. A test (tests/test_layout.py) fails if another module writes
`files` or calls a store mutation.

An upload has two halves so that a worker's slot is held only while bytes go
up (sync/drain.py): `start` uploads and returns an `Indexing` for the store to
finish, `finish` records the document and only then retires the old one
(docs/design.md invariant 1: upload first).

A store that finishes imports inside `upload` (`Store.instant`, the embedded
one) takes a batch of files at once (`upload_batch`): each file is looked at
and decided alone (`prepare`), then the batch's intents are written in one
transaction, its uploads made in one store transaction, and its record in one
more, so a first sync does not pay several commits per file.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from objlib_daemon.config import MetadataRule
from objlib_daemon.enrichment.enricher import Enricher, EnrichmentResult
from objlib_daemon.errors import VolumeUnavailable
from objlib_daemon.library import paths
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.files import NotSettled, Snapshot, hash_file, read_file
from objlib_daemon.library.metadata import enrichment_version
from objlib_daemon.library.payload import Payload, Refused, payload
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.models import File, FileState, Intent, JournalAction, JournalEntry, Orphan
from objlib_daemon.stores.base import (
    InstantStore,
    PermanentError,
    RemoteDocument,
    Store,
    StoreError,
    StoreUnusable,
    Upload,
)
from objlib_daemon.sync.adoption import adoptable
from objlib_daemon.sync.outcome import Outcome
from objlib_daemon.sync.planner import Action, Disk, Row, decide, needs_hash

log = get_logger("objlibd.applier")


class Retry(Exception):
    """Not done now: try this path again; `soon` when it is only still being written."""

    def __init__(self, message: str, *, soon: bool = False) -> None:
        super().__init__(message)
        self.soon = soon


@dataclass(frozen=True)
class Library:
    """Everything the sync core needs to know about the local side of one library."""

    root: Path
    library_id: str
    eligibility: Eligibility
    rules: tuple[MetadataRule, ...] | None = None
    skip_enrichment: bool = False
    no_text: str = "upload"  # library.no_text: a document without text is uploaded or held
    enricher: Enricher | None = None  # AI enrichment (enrichment/); None: path rules only

    @property
    def enrichment_version(self) -> str:
        if self.enricher is not None:
            return self.enricher.version
        return enrichment_version(self.rules, skip=self.skip_enrichment)


@dataclass
class Result:
    path: str
    action: Outcome
    hashed: bool = False
    uploaded: int = 0
    deleted: int = 0
    error: str | None = None
    note: str | None = None  # said in the sync summary even without -v (e.g. no text layer)
    # A move: the path the content was at, shown as `old → new` (issue 15, finding 7).
    moved_from: str | None = None


class Gate(Protocol):
    """What the caller of `start` lets through: `check` raises to hand the row
    back (the drain stopped), `slot` bounds the uploads sending at once."""

    def check(self) -> None: ...

    def slot(self) -> AbstractContextManager[object]: ...


class _Open:
    def check(self) -> None:
        return None

    def slot(self) -> AbstractContextManager[object]:
        return nullcontext()


_OPEN = _Open()


@dataclass
class Indexing:
    """An upload the store accepted and is still indexing: all `finish` needs.

    Rebuilt from its intent row after a restart (`Applier.resumable`).
    """

    intent: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    version: str
    gen: int
    upload: Upload
    new: bool  # no live document before: "new", else "modified"
    # When waiting began (in this run: the deadline restarts after a restart).
    started: float = field(default_factory=time.time)
    polls: int = 0
    # Said with the result and journaled with the document (no text layer);
    # not kept across a restart.
    note: str | None = None


@dataclass(frozen=True)
class Look:
    """What `look` found for one path: the row, the disk, and the planner's action."""

    row: Row | None
    disk: Disk
    disk_path: Path
    action: Action
    problem: str | None = None  # present but not eligible (why)
    snap: Snapshot | None = None  # hashed (with its bytes when read for an upload)


@dataclass(frozen=True)
class Planned:
    """An upload the planner decided and `prepare` read the bytes for, not yet made."""

    path: str
    snap: Snapshot
    new: bool  # no live document before
    gen: int


@dataclass(frozen=True)
class Known:
    """What a batch read for its paths in one snapshot, instead of a read per file:
    their rows, and the paths with an earlier upload still indexing (`_resume`)."""

    rows: dict[str, Row]
    waiting: frozenset[str]


@dataclass(frozen=True)
class _Sending:
    """A planned upload with its metadata and the bytes the store gets."""

    planned: Planned
    enrichment: EnrichmentResult
    what: Payload


# The `files` columns the planner reads (`Row`'s fields, in order): selected as a
# tuple, not loaded as an ORM object, since every look of every file reads one.
_ROW = (
    File.state,
    File.size,
    File.mtime_ns,
    File.sha256,
    File.upload_sha256,
    File.document,
    File.enrichment_version,
)


def journal(
    session: Session,
    action: JournalAction,
    path: str | None,
    document: str | None = None,
    detail: str | None = None,
) -> None:
    session.add(JournalEntry(**entry(action, path, document, detail)))


def entry(
    action: JournalAction, path: str | None, document: str | None = None, detail: str | None = None
) -> dict[str, object]:
    """A journal row's values, for writing many in one statement (`_record`)."""
    return {
        "at": time.time(),
        "path": path,
        "action": action,
        "document": document,
        "detail": detail,
    }


def observe(root: Path, path: str, eligibility: Eligibility) -> tuple[Disk, Path, str | None]:
    """Stat the path now: (disk, on-disk path, reason it is not eligible or None).

    An OSError other than "not there" is not absence: it raises Retry, so a
    flaky read never turns into a missing mark.
    """
    disk_path = root / path
    st = _lstat(disk_path)
    if st is None:  # not under this spelling: maybe under another normalisation
        spelled = paths.resolve(root, path)
        st = _lstat(spelled) if spelled != disk_path else None
        disk_path = spelled
        if st is None:
            return Disk(present=False), disk_path, None
    if not stat.S_ISREG(st.st_mode):
        return Disk(present=False), disk_path, "not a regular file"
    problem = None if eligibility.path_ok(path) else "excluded by the include/exclude globs"
    problem = problem or eligibility.size_problem(st.st_size)
    return Disk(True, st.st_size, st.st_mtime_ns), disk_path, problem


def _lstat(path: Path) -> os.stat_result | None:
    """The path's own stat (a symlink's, not its target's), None when absent; a stat
    of the path as spelled first, since `paths.resolve` costs a call more."""
    try:
        return os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Retry(f"cannot stat: {exc.strerror}") from None


class Applier:
    """Applies paths; safe to call from several threads for distinct paths."""

    def __init__(
        self,
        db: object,
        store: Store | None,
        library: Library,
        guard: VolumeGuard,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.store = store  # None: a read-only look (the dry run)
        self.lib = library
        self.guard = guard
        self.clock = clock
        self.version = library.enrichment_version
        self.enricher = library.enricher or Enricher(
            db, library_id=library.library_id, rules=library.rules, skip=library.skip_enrichment
        )
        # This library's documents no row holds, by (path, sha256): filled by
        # recovery's one listing while a fresh or rebuilt database is drained
        # (`Recovery.index_identities`), so a NEW file already in the store is
        # adopted, not uploaded again. Empty in steady state.
        self.by_identity: dict[tuple[str, str], list[RemoteDocument]] = {}

    # --- looking (read-only: the dry run runs exactly this) ----------------------------

    @property
    def instant(self) -> bool:
        """The store finishes imports inside `upload`: the drain batches (`upload_batch`)."""
        return self.store is not None and self.store.instant

    @property
    def asks_model(self) -> bool:
        """An upload of new content may first wait seconds for the model (AI enrichment)."""
        return self.enricher.ai and self.enricher.analyst is not None

    def known(self, of: Iterable[str]) -> Known:
        """The rows of paths `of`, and those with an upload still indexing, in one read."""
        keys = list(of)
        with self.db.reading() as s:
            found = s.execute(select(File.path, *_ROW).where(File.path.in_(keys)))
            rows = {r[0]: Row(*r[1:]) for r in found}
            waiting = frozenset(
                s.scalars(
                    select(Intent.path).where(Intent.path.in_(keys), Intent.operation.is_not(None))
                )
            )
        return Known(rows, waiting)

    def look(
        self,
        path: str,
        *,
        force: bool = False,
        keep_bytes: bool = False,
        disk: Disk | None = None,
        retry: bool = False,
        known: Known | None = None,
    ) -> Look:
        """Observe, hash when the planner needs it, decide. Writes nothing.

        `keep_bytes` reads the content into memory (for an upload); else a
        candidate is only hashed. `disk`: what a forced scan already hashed.
        `retry`: a failed file is tried again even with the same content.
        `known`: the row as a batch read it.
        """
        if known is not None:
            row = known.rows.get(path)
        else:
            with self.db.reading() as s:
                found = s.execute(select(*_ROW).where(File.path == path)).first()
            row = Row(*found) if found is not None else None
        if disk is not None:
            action = decide(row, disk, force=force, enrichment_version=self.version, retry=retry)
            return Look(row, disk, paths.resolve(self.lib.root, path), action)
        try:
            disk, disk_path, problem = observe(self.lib.root, path, self.lib.eligibility)
        except Retry:
            self._require_volume(f"cannot look at {path}")
            raise
        if disk.present and problem:
            return Look(row, disk, disk_path, Action.UNCHANGED, problem)
        snap = None
        if needs_hash(row, disk, force=force, retry=retry):
            snap = self._read(path, disk_path, keep_bytes=keep_bytes)
            disk = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
        action = decide(row, disk, force=force, enrichment_version=self.version, retry=retry)
        return Look(row, disk, disk_path, action, snap=snap)

    # --- applying ------------------------------------------------------------------------

    def start(
        self,
        path: str,
        *,
        force: bool = False,
        gen: int = 0,
        retry: bool = False,
        gate: Gate | None = None,
    ) -> Result | Indexing:
        """Apply what the planner decides for `path`; an upload returns its `Indexing`
        (or, when the store finished it at once, its final Result).

        `gate` (the drain's) may hand the row back before the model is asked
        and bounds the uploads in flight: its slot is held only while the
        bytes go up, so no upload waits in it for the model's answer.
        """
        planned = self.prepare(path, force=force, gen=gen, retry=retry)
        if not isinstance(planned, Planned):
            return planned
        ix = self._upload(planned, gate or _OPEN)
        if isinstance(ix, Result) or not ix.upload.document:
            return ix
        # Finished in the upload's own answer (an instant import): record it now, no poll.
        doc = RemoteDocument(name=ix.upload.document, display_name=ix.upload.display_name)
        return self.finish(ix, doc)

    def prepare(
        self,
        path: str,
        *,
        force: bool = False,
        gen: int = 0,
        retry: bool = False,
        known: Known | None = None,
    ) -> Result | Indexing | Planned:
        """Apply what the planner decides for `path`, except an upload: that is
        returned `Planned` (bytes read) for `start` or `upload_batch`, or resumed
        when an earlier upload of the same content is still indexing."""
        look = self.look(path, force=force, keep_bytes=True, retry=retry, known=known)
        row, disk, action, snap = look.row, look.disk, look.action, look.snap
        hashed = snap is not None
        if look.problem:
            return self._ineligible(path, row, disk, look.problem)
        if row is None and not disk.present:
            return Result(path, Outcome.GONE)  # e.g. the old end of a move already resolved
        if action in (Action.VANISHED, Action.FORGET):
            return self._vanished(path, action)
        if action is Action.REFRESH:
            self._refresh(path, disk, state=FileState.INDEXED)
        elif action is Action.STILL_FAILED:
            self._refresh(path, disk, state=FileState.FAILED)
        elif action is Action.RESTORED:
            self._restore(path, disk)
        if action not in (Action.NEW, Action.MODIFIED):  # nothing to upload
            return Result(path, action.outcome, hashed)
        assert snap is not None and snap.data is not None
        if action is Action.NEW and self.by_identity:
            adopted = self._adopt_by_identity(path, disk)
            if adopted is not None:
                return adopted
        if known is None or path in known.waiting:
            resumed = self._resume(path, snap.sha256, gen)
            if resumed is not None:
                return resumed
        return Planned(path, snap, action is Action.NEW, gen)

    def _adopt_by_identity(self, path: str, disk: Disk) -> Result | None:
        """Record the store's document of exactly this path and content instead of
        uploading a second copy (the database was lost or rebuilt after it was
        uploaded); further copies of it are duplicates, deleted."""
        sha = str(disk.sha256)
        docs = self.by_identity.pop((path, sha), [])
        now = self.clock()
        with self.db.session() as s:
            f = s.get(File, path)
            keep = next((d for d in docs if adoptable(d, f, attempts={}, disk_sha256=sha)), None)
            if keep is None:
                return None
            why = "found in the store by its identity (path, sha256)"
            self.adopt(s, path, keep.name, sha, why=why, now=now, disk=disk)
            extra = [d.name for d in docs if d is not keep]
            for name in extra:
                self.orphan(s, name, path, "duplicate upload", now)
        deleted = sum(self.retire(name) for name in extra)
        return Result(path, Outcome.ADOPTED, hashed=True, deleted=deleted)

    def _read(self, path: str, disk_path: Path, *, keep_bytes: bool) -> Snapshot:
        try:
            return read_file(disk_path) if keep_bytes else hash_file(disk_path)
        except NotSettled as exc:
            raise Retry(str(exc), soon=True) from None
        except FileNotFoundError:
            raise Retry("vanished while being read", soon=True) from None
        except OSError as exc:
            # A pulled USB stick answers EIO (or ENODEV, ...): that is the
            # volume going away, not this file's fault, and nothing is recorded.
            self._require_volume(f"cannot read {path}")
            message = f"cannot read: {exc.strerror}"
            if exc.errno in (errno.EACCES, errno.EPERM):
                message += "; fix its permissions"
            if keep_bytes:  # a look that only plans records nothing
                self._record_failure(path, None, message, unreadable=True)
            raise Retry(message) from None

    def _still_there(self, path: str) -> bool:
        """A regular file at `path` now, as `observe` sees one (trouble looking = there)."""
        try:
            return observe(self.lib.root, path, self.lib.eligibility)[0].present
        except Retry:
            return True

    def _require_volume(self, what: str) -> None:
        """Raise VolumeUnavailable unless the library is verifiably still here."""
        state = self.guard.verify()
        if not state.available:
            raise VolumeUnavailable(
                f"{what}: {state.reason}. Reconnect the drive; nothing was changed"
            )

    # --- row-only actions ------------------------------------------------------------

    def _refresh(self, path: str, disk: Disk, *, state: FileState) -> None:
        with self.db.session() as s:
            f = s.get(File, path)
            f.size, f.mtime_ns, f.sha256 = disk.size, disk.mtime_ns, disk.sha256 or f.sha256
            f.state, f.updated_at = state, self.clock()
            if state == FileState.INDEXED:
                f.last_error = None

    def _restore(self, path: str, disk: Disk) -> None:
        with self.db.session() as s:
            f = s.get(File, path)
            f.size, f.mtime_ns, f.sha256 = disk.size, disk.mtime_ns, disk.sha256
            f.state, f.missing_since, f.updated_at = FileState.INDEXED, None, self.clock()
            f.last_error = None
            journal(s, JournalAction.RESTORED, path, f.document)

    def _vanished(self, path: str, action: Action) -> Result:
        self._require_volume(f"not marking {path} missing")
        with self.db.session() as s:
            f = s.get(File, path)  # first: holds the write lock from here to the commit
            if f is None:
                return Result(path, Outcome.GONE)  # another worker resolved it as a move
            # The absence seen by `observe` may date from an unmount that has
            # since been undone (a bind mount keeps its device number, so the
            # guard cannot tell): look again, and only then verify the volume.
            # Absent now and the marker still ours afterwards = really gone.
            now = self.clock()
            if self._still_there(path):
                raise Retry(f"{path} is there again", soon=True)
            self._require_volume(f"not marking {path} missing")
            if action is Action.FORGET:
                s.delete(f)
                journal(
                    s, JournalAction.FORGOTTEN, path, detail="vanished before it was ever uploaded"
                )
                return Result(path, action.outcome)
            f.state, f.missing_since, f.updated_at = FileState.MISSING, now, now
            s.add(
                JournalEntry(at=now, path=path, action=JournalAction.MISSING, document=f.document)
            )
        return Result(path, action.outcome)

    def _ineligible(self, path: str, row: Row | None, disk: Disk, problem: str) -> Result:
        if row is None or row.state in (FileState.MISSING, FileState.PRUNED):
            return Result(path, Outcome.SKIPPED, error=problem)
        # A tracked file that grew past the bounds keeps its last good document.
        self._record_failure(path, disk, problem)
        return Result(path, Outcome.FAILED, error=problem)

    def _record_failure(
        self, path: str, disk: Disk | None, message: str, *, unreadable: bool = False
    ) -> None:
        now = self.clock()
        with self.db.session() as s:
            f = s.get(File, path)
            if f is None:
                f = File(path=path, created_at=now, attempts=0)
                s.add(f)
            f.state = FileState.FAILED
            f.last_error = message
            f.attempts = (f.attempts or 0) + 1
            f.updated_at = now
            # An unreadable file gets no (size, mtime): the next pass looks at it
            # again, since fixing permissions does not change its mtime.
            f.size = None if unreadable or disk is None else disk.size
            f.mtime_ns = None if unreadable or disk is None else disk.mtime_ns
            if disk is not None and disk.sha256:
                f.sha256 = disk.sha256
            journal(s, JournalAction.FAILED, path, f.document, message)

    def note_error(self, path: str, error: str) -> None:
        """Say on the row why its last attempt did not complete (it will be retried)."""
        with self.db.session() as s:
            f = s.get(File, path)
            if f is not None:
                f.last_error = error[:2000]

    # --- uploading: start ------------------------------------------------------------

    def _upload(self, planned: Planned, gate: Gate) -> Indexing | Result:
        """Intent, upload, and the operation recorded: the file is now indexing."""
        gate.check()
        sending = self._sending(planned)
        if isinstance(sending, Result):
            return sending
        with gate.slot():
            with self.db.session() as s:
                [intent] = self._intents(s, [sending])
            try:
                answer = self._send(sending)
            except BaseException:  # an interrupt: the intent stays, as after a crash
                self.attempt_ended(intent)
                raise
        upload = self._answered(sending, intent, answer)
        if isinstance(upload, Result):
            return upload
        enr = sending.enrichment.enrichment
        if not upload.document:  # indexing: durably, so a restart resumes the wait
            with self.db.session() as s:
                s.execute(
                    update(Intent)
                    .where(Intent.id == intent)
                    .values(
                        operation=upload.operation,
                        display_name=upload.display_name or enr.display_name,
                        retried=int(upload.retried),
                    )
                )
                queue.indexing(s, queue.Claim(planned.path, planned.gen, 0, ""))
        return self._indexing(sending, intent, upload)

    def upload_batch(self, batch: list[Planned]) -> dict[str, Result | Exception]:
        """Upload planned files to an instant store and record them, three
        transactions for the whole batch instead of several per file.

        Crash safety as for one file: every intent is written before any
        upload, the store commits the batch's documents together (content
        first), and the record (rows, journal, intents, and the queue rows
        completed with the gen check of `queue.complete`) is one transaction;
        superseded documents are retired after it. A file refused or failing
        on its own gets its own outcome: a Result, or the exception its
        upload raised (its intent ended) for the caller to handle as for one
        file. If the store cannot commit the batch, every file's outcome is
        that error. An error writing the record is raised: the intents stay,
        and recovery adopts the documents the store holds.
        """
        store = cast(InstantStore, self.store)
        out: dict[str, Result | Exception] = {}
        sending: list[_Sending] = []
        for planned in batch:
            prepared = self._sending(planned)
            if isinstance(prepared, Result):
                out[planned.path] = prepared
            else:
                sending.append(prepared)
        if not sending:
            return out
        with self.db.session() as s:
            intents = self._intents(s, sending)
        answers: list[Upload | Exception] = []
        try:
            # Only the uploads inside: their rows are held until the batch ends.
            with store.batch():
                answers = [self._send(x) for x in sending]
        except Exception as exc:  # none of the batch's documents exist
            self.attempt_ended(*intents)
            return out | {x.planned.path: exc for x in sending}
        done: list[Indexing] = []
        for x, intent, answer in zip(sending, intents, answers, strict=True):
            try:
                upload = self._answered(x, intent, answer)
            except Exception as exc:
                out[x.planned.path] = exc
                continue
            if isinstance(upload, Result):
                out[x.planned.path] = upload
            else:
                done.append(self._indexing(x, intent, upload))
        if not done:
            return out
        now = self.clock()
        with self.db.session() as s:
            recorded = self._record(s, [(ix, ix.upload.document or "") for ix in done], now)
            self._close_intents(s, done, now)
            queue.complete(s, [queue.Claim(ix.path, ix.gen, 0, "") for ix in done])
        for ix, (old, moved_from) in zip(done, recorded, strict=True):
            out[ix.path] = self._retire_after(ix, old, moved_from)
        return out

    def _sending(self, planned: Planned) -> _Sending | Result:
        """Metadata (path rules + AI) and the bytes to send; a file that cannot be
        sent as its format says (corrupt, encrypted, no text and held) is failed."""
        snap = planned.snap
        assert self.store is not None and snap.data is not None
        up = self.enricher.for_upload(planned.path, snap.sha256, snap.data)
        try:
            what = payload(planned.path, snap.data, up.enrichment, no_text=self.lib.no_text)
        except Refused as exc:
            disk = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
            self._record_failure(planned.path, disk, str(exc))
            return Result(planned.path, Outcome.FAILED, True, error=str(exc), note=str(exc))
        return _Sending(planned, up, what)

    def _intents(self, s: Session, sendings: list[_Sending]) -> list[int]:
        """Write the intents of these uploads, before any is made; their ids, in order."""
        now = self.clock()
        rows = [
            {
                "path": x.planned.path,
                "sha256": x.planned.snap.sha256,
                "started_at": now,
                "size": x.planned.snap.size,
                "mtime_ns": x.planned.snap.mtime_ns,
                "version": x.enrichment.version,  # with AI metadata, or pending it
                "gen": x.planned.gen,
                "retried": 0,
            }
            for x in sendings
        ]
        ids = s.scalars(insert(Intent).returning(Intent.id, sort_by_parameter_order=True), rows)
        return list(ids)

    def _send(self, sending: _Sending) -> Upload | Exception:
        """The store's answer to one upload: an Upload, or the error it raised."""
        assert self.store is not None
        what = sending.what
        try:
            return self.store.upload(
                io.BytesIO(what.body),
                display_name=sending.enrichment.enrichment.display_name,
                metadata=what.metadata,
                mime_type=what.mime_type,
                text=what.text,
            )
        except Exception as exc:
            return exc

    def _answered(
        self, sending: _Sending, intent: int, answer: Upload | Exception
    ) -> Upload | Result:
        """A refusal is recorded as the file's failure; any other error ends the
        attempt and is raised (the intent stays: the import may have happened,
        and recovery adopts or removes whatever it left)."""
        if isinstance(answer, Upload):
            return answer
        if isinstance(answer, PermanentError) and not isinstance(answer, StoreUnusable):
            # An import refused in the upload's own answer may have left a FAILED
            # document: the intent stays for recovery to find and delete it.
            self.attempt_ended(intent, lost=True)
            path, snap = sending.planned.path, sending.planned.snap
            disk = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
            self._record_failure(path, disk, f"the store refused it: {answer}")
            return Result(path, Outcome.FAILED, True, error=str(answer))
        # A StoreUnusable is not this file's fault: the drain stops and says so.
        self.attempt_ended(intent)
        raise answer

    def _indexing(self, sending: _Sending, intent: int, upload: Upload) -> Indexing:
        planned, snap = sending.planned, sending.planned.snap
        return Indexing(
            intent=intent,
            path=planned.path,
            sha256=snap.sha256,
            size=snap.size,
            mtime_ns=snap.mtime_ns,
            version=sending.enrichment.version,
            gen=planned.gen,
            upload=upload,
            new=planned.new,
            started=self.clock(),
            note=sending.what.note,
        )

    def _resume(self, path: str, sha256: str, gen: int) -> Indexing | None:
        """An earlier upload of this very content still indexing: wait for it instead."""
        with self.db.reading() as s:  # almost never: a write only when there is one
            waiting = s.scalar(
                select(Intent.id).where(
                    Intent.path == path, Intent.sha256 == sha256, Intent.operation.is_not(None)
                )
            )
        if waiting is None:
            return None
        with self.db.session() as s:
            intent = s.scalars(
                select(Intent)
                .where(Intent.path == path, Intent.sha256 == sha256, Intent.operation.is_not(None))
                .order_by(Intent.id.desc())
                .limit(1)
            ).first()
            if intent is None or not self.enricher.current(intent.version):
                return None
            intent.gen, intent.ended_at = gen, None
            f = s.get(File, path)
            queue.indexing(s, queue.Claim(path, gen, 0, ""))
        return self._indexing_of(intent, new=f is None or f.document is None)

    def resumable(self) -> list[Indexing]:
        """Every upload the store accepted whose wait was cut short, not given up
        (a crash, a stop): a drain's start resumes them. One given up at the
        deadline waits for its row's retry (`_resume`)."""
        with self.db.session() as s:
            intents = s.scalars(
                select(Intent)
                .where(Intent.operation.is_not(None), Intent.ended_at.is_(None))
                .order_by(Intent.id)
            ).all()
            docs = {
                f.path: f.document
                for f in s.scalars(select(File).where(File.path.in_({i.path for i in intents})))
            }
        latest: dict[str, Intent] = {}
        for intent in intents:  # an older attempt of a path is recovery's to settle
            latest[intent.path] = intent
        return [self._indexing_of(i, new=docs.get(i.path) is None) for i in latest.values()]

    @staticmethod
    def _indexing_of(intent: Intent, *, new: bool) -> Indexing:
        upload = Upload(
            operation=intent.operation or "",
            document=intent.document,
            retried=bool(intent.retried),
            display_name=intent.display_name or "",
            identity={"sha256": intent.sha256, "path": intent.path},
        )
        return Indexing(
            intent=intent.id,
            path=intent.path,
            sha256=intent.sha256,
            size=intent.size or 0,
            mtime_ns=intent.mtime_ns or 0,
            version=intent.version or "",
            gen=intent.gen or 0,
            upload=upload,
            new=new,
        )

    def attempt_ended(self, *intents: int, lost: bool = False) -> None:
        """Note when attempts that leave their intents behind ended (best effort);
        `lost`: their operation is gone too, so only a listing can settle them."""
        values: dict = {"ended_at": self.clock()}
        if lost:
            values |= {"operation": None, "document": None}
        try:
            with self.db.session() as s:
                s.execute(update(Intent).where(Intent.id.in_(intents)).values(**values))
        except Exception as exc:  # unknown end: the intent waits as a crash's would
            log.warning("could not note the end of an upload attempt", error=repr(exc))

    # --- uploading: finish -----------------------------------------------------------

    def poll(self, ix: Indexing) -> RemoteDocument | None:
        """One look at an import in progress (no sleep): its document once done."""
        assert self.store is not None
        ix.polls += 1
        return self.store.poll(ix.upload)

    def refused(self, ix: Indexing, error: StoreError) -> Result:
        """The store finished the import with a permanent failure: record it.

        The intent stays (its operation forgotten): the import may have left a
        FAILED document, which recovery's next listing records and deletes
        rather than leaving it for `verify` to call a crash leftover.
        """
        self.attempt_ended(ix.intent, lost=True)
        disk = Disk(True, ix.size, ix.mtime_ns, ix.sha256)
        self._record_failure(ix.path, disk, f"the store refused it: {error}")
        return Result(ix.path, Outcome.FAILED, True, error=str(error))

    def finish(self, ix: Indexing, doc: RemoteDocument) -> Result:
        """Record the finished upload, then retire what it supersedes (upload first)."""
        now = self.clock()
        with self.db.session() as s:
            [(old, moved_from)] = self._record(s, [(ix, doc.name)], now)
            self._close_intents(s, [ix], now)
        return self._retire_after(ix, old, moved_from)

    def _retire_after(
        self, ix: Indexing, old: str | None, moved_from: list[tuple[str, str]]
    ) -> Result:
        """The upload is recorded: retire what it superseded, look at the file again."""
        action = Outcome.NEW if ix.new else Outcome.MODIFIED
        result = Result(ix.path, action, True, uploaded=1, note=ix.note)
        if old:
            result.deleted += self.retire(old)
        if moved_from:
            result.action = Outcome.MOVED
            result.moved_from = moved_from[0][0]
            for _old_path, doc_name in moved_from:
                result.deleted += self.retire(doc_name)
        self._recheck(ix)
        return result

    def _record(
        self, s: Session, uploads: list[tuple[Indexing, str]], now: float
    ) -> list[tuple[str | None, list[tuple[str, str]]]]:
        """Point each row at its new document (`uploads`: (upload, document)), in the
        caller's transaction; the old one, and those of rows the file moved from,
        become orphans. Returns them to retire, per upload.

        Rows and journal entries are written a statement for all (a first sync
        records a batch of thousands of files); a row moved from is looked for
        only for content some row already holds, one query for all to know.
        """
        paths = [ix.path for ix, _ in uploads]
        current = dict(
            s.execute(select(File.path, File.document).where(File.path.in_(paths))).all()
        )
        held = set(
            s.scalars(
                select(File.upload_sha256).where(
                    File.upload_sha256.in_({ix.sha256 for ix, _ in uploads}),
                    File.document.is_not(None),
                )
            )
        )
        rows: list[dict[str, object]] = []
        entries: list[dict[str, object]] = []
        out: list[tuple[str | None, list[tuple[str, str]]]] = []
        for ix, document in uploads:
            moved_from: list[tuple[str, str]] = []
            if ix.sha256 in held:  # rows of this batch first: one may be what moved
                self._write_rows(s, rows, entries)
                moved_from = self._moved_from(s, ix.path, ix.sha256, now)
            held.add(ix.sha256)
            previous = current.get(ix.path)
            old = previous if previous != document else None
            if old:
                s.merge(Orphan(document=old, path=ix.path, reason="superseded", created_at=now))
            rows.append(
                {
                    "path": ix.path,
                    "size": ix.size,
                    "mtime_ns": ix.mtime_ns,
                    "sha256": ix.sha256,
                    "upload_sha256": ix.sha256,
                    "document": document,
                    "enrichment_version": ix.version,
                    "state": FileState.INDEXED,
                    "missing_since": None,
                    "last_error": None,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            action = JournalAction.UPLOADED if previous is None else JournalAction.REPLACED
            entries.append(entry(action, ix.path, document, ix.sha256))
            if ix.note:  # `status` lists a live document noted so (sync/status.py)
                entries.append(entry(JournalAction.NOTED, ix.path, document, ix.note))
            out.append((old, moved_from))
        self._write_rows(s, rows, entries)
        return out

    @staticmethod
    def _write_rows(s: Session, rows: list[dict], entries: list[dict]) -> None:
        """Upsert the recorded `files` rows (a row keeps its created_at) and add
        their journal entries; both lists are emptied."""
        if rows:
            stmt = sqlite_insert(File)
            keep = {"path", "created_at"}
            stmt = stmt.on_conflict_do_update(
                index_elements=[File.path],
                set_={k: stmt.excluded[k] for k in rows[0] if k not in keep},
            )
            s.execute(stmt, rows)
            rows.clear()
        if entries:
            s.execute(insert(JournalEntry), entries)
            entries.clear()

    @staticmethod
    def _close_intents(s: Session, recorded: list[Indexing], now: float) -> None:
        """The recorded uploads' intents are done, except when the store had to
        repeat an upload: the failed attempt may have landed too, and recovery
        removes that copy (the intent stays, ended)."""
        retried = [ix.intent for ix in recorded if ix.upload.retried]
        if retried:
            s.execute(
                update(Intent)
                .where(Intent.id.in_(retried))
                .values(ended_at=now, operation=None, document=None)
            )
        done = [ix.intent for ix in recorded if not ix.upload.retried]
        if done:
            s.execute(
                delete(Intent)
                .where(Intent.id.in_(done))
                .execution_options(synchronize_session=False)
            )

    def _recheck(self, ix: Indexing) -> None:
        """A file changed while it was uploaded or indexed is queued again at once,
        so a one-shot sync does not end on a stale document (the daemon's watcher
        would also see it; this costs one stat)."""
        try:
            disk = observe(self.lib.root, ix.path, self.lib.eligibility)[0]
        except Retry:
            return
        if disk.present and (disk.size, disk.mtime_ns) != (ix.size, ix.mtime_ns):
            with self.db.session() as s:
                queue.enqueue(s, [(ix.path, queue.EVENT)])

    def _moved_from(self, s: Session, path: str, sha256: str, now: float) -> list[tuple[str, str]]:
        """Rows holding the same content at a path that is gone: the file moved here.
        Returns (old path, its document) for each.

        Their documents become orphans at once (no 7-day limbo), but only while
        the volume is verified: an absent old path must mean really gone.
        """
        candidates = s.scalars(
            select(File).where(
                File.upload_sha256 == sha256,
                File.path != path,
                File.document.is_not(None),
                File.state.in_((FileState.INDEXED, FileState.MISSING, FileState.FAILED)),
            )
        ).all()
        gone = [f for f in candidates if not self._still_there(f.path)]
        if not gone or not self.guard.verify().available:
            return []
        for f in gone:
            s.merge(Orphan(document=f.document, path=f.path, reason="moved", created_at=now))
            journal(s, JournalAction.MOVED, f.path, f.document, f"to {path}")
            s.delete(f)
        return [(f.path, f.document) for f in gone]

    # --- recovery and repair verbs ---------------------------------------------------

    def adopt(
        self,
        s: Session,
        path: str,
        document: str,
        sha256: str,
        *,
        why: str,
        now: float,
        disk: Disk | None = None,
    ) -> str | None:
        """Record an unrecorded finished upload as the file's document, in the caller's
        transaction; returns the superseded document (now an orphan), if any.

        Without `disk` the row forgets its stat so the next look re-examines the
        file on disk (it may have changed since), and the path is queued for
        that look; with `disk` (just hashed, this content) the row takes its stat.
        """
        row = s.get(File, path)
        superseded = None
        if row is None:
            row = File(path=path, created_at=now, attempts=0)
            s.add(row)
        elif row.document and row.document != document:
            superseded = row.document
            s.merge(Orphan(document=superseded, path=path, reason="superseded", created_at=now))
        row.document, row.upload_sha256, row.sha256 = document, sha256, sha256
        row.size, row.mtime_ns = (disk.size, disk.mtime_ns) if disk else (None, None)
        row.state, row.missing_since = FileState.INDEXED, None
        row.last_error, row.updated_at = None, now
        row.enrichment_version = self.version
        journal(s, JournalAction.ADOPTED, path, document, why)
        if disk is None:
            queue.enqueue(s, [(path, queue.REPAIR)])
        return superseded

    def requeue(self, s: Session, path: str, document: str | None, why: str, now: float) -> list:
        """Mark a row for a fresh upload (its document is absent or FAILED in the
        store), in the caller's transaction; returns documents to retire."""
        row = s.get(File, path)
        retire: list[str] = []
        if row is None or row.document != document:
            return retire
        if why == "absent":
            row.document = None
        elif row.state == FileState.MISSING and row.document:
            # A failed document for a file that is not on disk: nothing to replace
            # it with now; the file is uploaded afresh if it comes back.
            s.merge(Orphan(document=row.document, path=path, reason="failed", created_at=now))
            retire.append(row.document)
            row.document = None
        # No recorded content: the planner sees a new (no document) or modified
        # (failed document still recorded, replaced upload-first) file.
        row.upload_sha256 = None
        if row.state != FileState.MISSING:
            row.state = FileState.PENDING
        row.updated_at = now
        journal(s, JournalAction.REQUEUED, path, document, f"verify: {why}")
        queue.enqueue(s, [(path, queue.REPAIR)])
        return retire

    def _prunable(self, older_than: float) -> Select[tuple[File]]:
        """Rows missing for longer than `older_than` seconds: what prune deletes."""
        cutoff = self.clock() - older_than
        return (
            select(File)
            .where(File.state == FileState.MISSING, File.missing_since < cutoff)
            .order_by(File.path)
        )

    def prunable(self, older_than: float) -> list[str]:
        """The paths `prune(older_than)` would prune now (the dry run's preview)."""
        with self.db.session() as s:
            return [f.path for f in s.scalars(self._prunable(older_than))]

    def prune(self, older_than: float) -> list[str]:
        """Delete the documents of files missing for longer than `older_than` seconds;
        returns the pruned paths."""
        now = self.clock()
        with self.db.session() as s:
            victims = s.scalars(self._prunable(older_than)).all()
            for f in victims:
                if f.document:
                    s.merge(
                        Orphan(document=f.document, path=f.path, reason="pruned", created_at=now)
                    )
                journal(s, JournalAction.PRUNED, f.path, f.document)
                f.state, f.document, f.upload_sha256, f.updated_at = (
                    FileState.PRUNED,
                    None,
                    None,
                    now,
                )
            pruned = [f.path for f in victims]
        with self.db.session() as s:
            docs = s.scalars(select(Orphan.document).where(Orphan.reason == "pruned")).all()
        for d in docs:
            self.retire(d)
        return pruned

    # --- orphans ----------------------------------------------------------------------

    def orphan(self, s: Session, document: str, path: str | None, reason: str, now: float) -> None:
        """Record a document of ours to delete (in the caller's transaction)."""
        s.merge(Orphan(document=document, path=path, reason=reason, created_at=now))

    def retire(self, document: str) -> int:
        """Delete a recorded orphan; on failure it stays recorded for a later retry."""
        assert self.store is not None
        try:
            self.store.delete(document)
        except StoreError as exc:
            delay = getattr(exc, "retry_after", None) or 60.0
            with self.db.session() as s:
                o = s.get(Orphan, document)
                if o is not None:
                    o.attempts += 1
                    o.last_error = str(exc)[:2000]
                    o.next_attempt_at = self.clock() + min(3600.0, delay * 2**o.attempts)
            log.warning("orphan delete failed", document=document, error=str(exc))
            return 0
        with self.db.session() as s:
            o = s.get(Orphan, document)
            if o is not None:
                s.delete(o)
            journal(
                s, JournalAction.DELETED, o.path if o else None, document, o.reason if o else None
            )
        return 1

    def cleanup_orphans(self, *, everything: bool = False) -> int:
        """Retry deleting recorded orphans (those due, or all with `everything`)."""
        with self.db.session() as s:
            q = select(Orphan.document)
            if not everything:
                q = q.where(Orphan.next_attempt_at <= self.clock())
            docs = s.scalars(q).all()
        return sum(self.retire(d) for d in docs)
