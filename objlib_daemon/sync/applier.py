"""The applier: the only code that writes to the store and to the `files` table.

`apply(path)` re-examines disk and database *now* (events are hints, state is
truth), asks the planner what to do, and does it with every remote mutation
bracketed by durable writes: an intent before an upload, the result after it,
the superseded document recorded as an orphan before it is deleted.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from objlib_daemon.config import MetadataRule
from objlib_daemon.errors import VolumeUnavailable
from objlib_daemon.library import paths
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.files import NotSettled, Snapshot, read_file
from objlib_daemon.library.metadata import enrich, enrichment_version
from objlib_daemon.library.mime import is_text, mime_type
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.logging import get_logger
from objlib_daemon.state.models import (
    FAILED,
    INDEXED,
    MISSING,
    PRUNED,
    File,
    Intent,
    JournalEntry,
    Orphan,
)
from objlib_daemon.stores.base import (
    MAX_DOCUMENT_BYTES,
    AuthError,
    PermanentError,
    Store,
    StoreError,
)
from objlib_daemon.sync.planner import Action, Disk, Row, decide, needs_hash

log = get_logger("objlibd.applier")


class Retry(Exception):
    """Not done now: try this path again; `soon` when it is only still being written."""

    def __init__(self, message: str, *, soon: bool = False) -> None:
        super().__init__(message)
        self.soon = soon


@dataclass(frozen=True)
class Library:
    """Everything the engine needs to know about the local side of one library."""

    root: Path
    library_id: str
    eligibility: Eligibility
    rules: tuple[MetadataRule, ...] | None = None
    skip_enrichment: bool = False

    @property
    def enrichment_version(self) -> str:
        return enrichment_version(self.rules, skip=self.skip_enrichment)


@dataclass
class Result:
    path: str
    action: str
    hashed: bool = False
    uploaded: int = 0
    deleted: int = 0
    error: str | None = None


def journal(
    session: Session,
    action: str,
    path: str | None,
    document: str | None = None,
    detail: str | None = None,
) -> None:
    session.add(
        JournalEntry(at=time.time(), path=path, action=action, document=document, detail=detail)
    )


def row_of(f: File | None) -> Row | None:
    if f is None:
        return None
    return Row(
        f.state, f.size, f.mtime_ns, f.sha256, f.upload_sha256, f.document, f.enrichment_version
    )


def observe(root: Path, path: str, eligibility: Eligibility) -> tuple[Disk, Path, str | None]:
    """Stat the path now: (disk, on-disk path, reason it is not eligible or None).

    An OSError other than "not there" is not absence: it raises Retry, so a
    flaky read never turns into a missing mark.
    """
    disk_path = paths.resolve(root, path)
    try:
        st = os.stat(disk_path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return Disk(present=False), disk_path, None
    except OSError as exc:
        raise Retry(f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        return Disk(present=False), disk_path, "not a regular file"
    problem = None if eligibility.path_ok(path) else "excluded by the include/exclude globs"
    problem = problem or eligibility.size_problem(st.st_size)
    return Disk(True, st.st_size, st.st_mtime_ns), disk_path, problem


class Applier:
    """Applies one path at a time; safe to call from several threads for distinct paths."""

    def __init__(
        self,
        db: object,
        store: Store,
        library: Library,
        guard: VolumeGuard,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.store = store
        self.lib = library
        self.guard = guard
        self.clock = clock
        self.version = library.enrichment_version

    # --- the one entry point -------------------------------------------------------

    def apply(self, path: str, *, force: bool = False) -> Result:
        with self.db.session() as s:
            f = s.get(File, path)
            row = row_of(f)
        try:
            disk, disk_path, problem = observe(self.lib.root, path, self.lib.eligibility)
        except Retry:
            self._require_volume(f"cannot look at {path}")
            raise
        if disk.present and problem:
            return self._ineligible(path, row, disk, problem)
        snap: Snapshot | None = None
        if needs_hash(row, disk, force=force):
            snap = self._read(path, disk_path, row)
            disk = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
        action = decide(row, disk, force=force, enrichment_version=self.version)
        hashed = snap is not None
        if row is None and not disk.present:
            return Result(path, "gone")  # e.g. the old end of a move already resolved
        if action is Action.UNCHANGED:
            return Result(path, "unchanged", hashed)
        if action is Action.REFRESH:
            self._refresh(path, disk, state=INDEXED)
            return Result(path, "unchanged", hashed)
        if action is Action.STILL_FAILED:
            self._refresh(path, disk, state=FAILED)
            return Result(path, "still_failed", hashed)
        if action in (Action.VANISHED, Action.FORGET):
            return self._vanished(path, action)
        if action is Action.RESTORED:
            self._restore(path, disk)
            return Result(path, "restored", hashed)
        assert snap is not None and snap.data is not None
        return self._upload_and_record(path, snap, action)

    # --- reading ---------------------------------------------------------------------

    def _read(self, path: str, disk_path: Path, row: Row | None) -> Snapshot:
        try:
            return read_file(disk_path)
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

    # --- actions ----------------------------------------------------------------------

    def _refresh(self, path: str, disk: Disk, *, state: str) -> None:
        with self.db.session() as s:
            f = s.get(File, path)
            f.size, f.mtime_ns, f.sha256 = disk.size, disk.mtime_ns, disk.sha256 or f.sha256
            f.state, f.updated_at = state, self.clock()
            if state == INDEXED:
                f.last_error = None

    def _restore(self, path: str, disk: Disk) -> None:
        with self.db.session() as s:
            f = s.get(File, path)
            f.size, f.mtime_ns, f.sha256 = disk.size, disk.mtime_ns, disk.sha256
            f.state, f.missing_since, f.updated_at = INDEXED, None, self.clock()
            f.last_error = None
            journal(s, "restored", path, f.document)

    def _vanished(self, path: str, action: Action) -> Result:
        self._require_volume(f"not marking {path} missing")
        with self.db.session() as s:
            f = s.get(File, path)  # first: holds the write lock from here to the commit
            if f is None:
                return Result(path, "gone")  # another applier resolved it as a move
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
                journal(s, "forgotten", path, detail="vanished before it was ever uploaded")
                return Result(path, "forgotten")
            f.state, f.missing_since, f.updated_at = MISSING, now, now
            s.add(JournalEntry(at=now, path=path, action="missing", document=f.document))
        return Result(path, "missing")

    def _ineligible(self, path: str, row: Row | None, disk: Disk, problem: str) -> Result:
        if row is None or row.state in (MISSING, PRUNED):
            return Result(path, "skipped", error=problem)
        # A tracked file that grew past the bounds keeps its last good document.
        self._record_failure(path, disk, problem)
        return Result(path, "failed", error=problem)

    def _record_failure(
        self, path: str, disk: Disk | None, message: str, *, unreadable: bool = False
    ) -> None:
        now = self.clock()
        with self.db.session() as s:
            f = s.get(File, path)
            if f is None:
                f = File(path=path, created_at=now, attempts=0)
                s.add(f)
            f.state = FAILED
            f.last_error = message
            f.attempts = (f.attempts or 0) + 1
            f.updated_at = now
            # An unreadable file gets no (size, mtime): the next pass looks at it
            # again, since fixing permissions does not change its mtime.
            f.size = None if unreadable or disk is None else disk.size
            f.mtime_ns = None if unreadable or disk is None else disk.mtime_ns
            if disk is not None and disk.sha256:
                f.sha256 = disk.sha256
            journal(s, "failed", path, f.document, message)

    def _upload_and_record(self, path: str, snap: Snapshot, action: Action) -> Result:
        enr = enrich(
            path,
            library_id=self.lib.library_id,
            sha256=snap.sha256,
            rules=self.lib.rules,
            skip=self.lib.skip_enrichment,
        )
        body = snap.data
        if enr.header and is_text(path):
            header = enr.header.encode("utf-8")
            # The header is a courtesy (the metadata says the same): a file the
            # size bounds let in must not be refused for the header's sake.
            if len(header) + len(snap.data) <= MAX_DOCUMENT_BYTES:
                body = header + snap.data
        with self.db.session() as s:
            intent = Intent(path=path, sha256=snap.sha256, started_at=self.clock())
            s.add(intent)
        try:
            upload = self.store.upload(
                io.BytesIO(body),
                display_name=enr.display_name,
                metadata=enr.metadata,
                mime_type=mime_type(path),
            )
            doc = self.store.wait(upload)
        except PermanentError as exc:
            if isinstance(exc, AuthError):
                self._attempt_ended(intent.id)
                raise  # not this file's fault: the drain stops and says so
            with self.db.session() as s:
                s.execute(delete(Intent).where(Intent.id == intent.id))
            disk = Disk(True, snap.size, snap.mtime_ns, snap.sha256)
            self._record_failure(path, disk, f"the store refused it: {exc}")
            return Result(path, "failed", True, error=str(exc))
        except BaseException:
            self._attempt_ended(intent.id)
            raise
        # The intent stays on transient errors: the import may have happened, and
        # `resolve_intents` adopts or removes whatever it left. It also stays when
        # the store had to repeat the upload: the failed attempt may have landed
        # too, and a later `resolve_intents` removes that copy.
        retried = getattr(upload, "retried", False)
        old = self._record_upload(path, snap, doc.name, intent.id, keep_intent=bool(retried))
        result = Result(path, "new" if action is Action.NEW else "modified", True, uploaded=1)
        if old:
            result.deleted += self.retire(old)
        moved_from = self._moved_from(path, snap.sha256)
        if moved_from:
            result.action = "moved"
            for doc_name in moved_from:
                result.deleted += self.retire(doc_name)
        return result

    def _attempt_ended(self, intent: int) -> None:
        """Note when an attempt that leaves its intent behind ended (best effort)."""
        try:
            with self.db.session() as s:
                s.execute(update(Intent).where(Intent.id == intent).values(ended_at=self.clock()))
        except Exception as exc:  # unknown end: the intent waits as a crash's would
            log.warning("could not note the end of an upload attempt", error=repr(exc))

    def _record_upload(
        self, path: str, snap: Snapshot, document: str, intent: int, *, keep_intent: bool
    ) -> str | None:
        """Point the row at the new document; the old one becomes an orphan. One commit."""
        now = self.clock()
        with self.db.session() as s:
            f = s.get(File, path)
            if f is None:
                f = File(path=path, created_at=now)
                s.add(f)
            old = f.document if f.document != document else None
            was_new = f.document is None
            f.size, f.mtime_ns, f.sha256 = snap.size, snap.mtime_ns, snap.sha256
            f.upload_sha256, f.document, f.enrichment_version = snap.sha256, document, self.version
            f.state, f.missing_since, f.last_error, f.attempts = INDEXED, None, None, 0
            f.updated_at = now
            if old:
                s.merge(Orphan(document=old, path=path, reason="superseded", created_at=now))
            if keep_intent:
                s.execute(update(Intent).where(Intent.id == intent).values(ended_at=now))
            else:
                s.execute(delete(Intent).where(Intent.id == intent))
            journal(s, "uploaded" if was_new else "replaced", path, document, snap.sha256)
        return old

    def _moved_from(self, path: str, sha256: str) -> list[str]:
        """Rows holding the same content at a path that is gone: the file moved here.

        Their documents become orphans at once (no 7-day limbo), but only while
        the volume is verified: an absent old path must mean really gone.
        """
        with self.db.session() as s:
            candidates = s.scalars(
                select(File).where(
                    File.upload_sha256 == sha256,
                    File.path != path,
                    File.document.is_not(None),
                    File.state.in_((INDEXED, MISSING, FAILED)),
                )
            ).all()
            gone = [f for f in candidates if not self._still_there(f.path)]
            if not gone or not self.guard.verify().available:
                return []
            now = self.clock()
            for f in gone:
                s.merge(Orphan(document=f.document, path=f.path, reason="moved", created_at=now))
                journal(s, "moved", f.path, f.document, f"to {path}")
                s.delete(f)
            return [f.document for f in gone]

    # --- orphans ----------------------------------------------------------------------

    def retire(self, document: str) -> int:
        """Delete a recorded orphan; on failure it stays recorded for a later retry."""
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
            journal(s, "deleted", o.path if o else None, document, o.reason if o else None)
        return 1
