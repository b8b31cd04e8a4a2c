"""The remote audit: compare every document in the store with the database, and repair.

Events and passes only ever look at paths that changed; this is the one place
that looks at the whole store, to catch what slipped through: a crash between
an upload and its commit, a superseded document whose delete was lost, a
document someone removed by hand, an import the server marked FAILED. Our
documents carry their identity in `custom_metadata` (library_id, path, sha256),
so strays are recognised without guessing, and anything without our library
id is reported and never touched.

API (used by `objlibd verify` and the daemon's weekly audit job)::

    report = audit(db, store, library)        # one listing; changes nothing
    if not report.clean:
        result = repair(db, store, library, report)

    summary = audit_engine(engine, repair=True)   # the same for an Engine, as a dict

`repair` must not run while an applier is draining the same library (hold the
library lock, or the daemon's writer lock): it re-checks each finding against
the database before acting, but an upload finishing in between is exactly the
race it cannot see. Re-queued files are uploaded by the next drain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from objlib_daemon.library import paths
from objlib_daemon.library.files import NotSettled, hash_file
from objlib_daemon.library.volume import VolumeGuard
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File, Intent, JournalAction, Orphan
from objlib_daemon.stores.base import FAILED as DOC_FAILED
from objlib_daemon.stores.base import PENDING as DOC_PENDING
from objlib_daemon.stores.base import RemoteDocument, Store
from objlib_daemon.sync.adoption import adoptable
from objlib_daemon.sync.applier import Applier, Library, journal

if TYPE_CHECKING:
    from objlib_daemon.sync.passes import Engine

# Finding kinds. The first four are drift (`Report.clean` is False while any
# is present); the last two are reported only: a pending deletion is already
# recorded and retried by the orphan sweep, and foreign documents are not ours.
UNRECORDED = "unrecorded"  # ours, not referenced by the database
ABSENT = "absent"  # recorded for a file, not in the store
FAILED = "failed"  # recorded, but the store says STATE_FAILED
DUPLICATE = "duplicate"  # two or more of our documents for one path
# Still indexing on the server (an upload in flight, or one the service never
# finishes): reported, never deleted here, since an intent may be waiting on it.
PENDING = "pending"
PENDING_DELETION = "pending_deletion"  # a recorded orphan still in the store
FOREIGN = "foreign"  # another library's, or made by hand: never touched
KINDS = (UNRECORDED, ABSENT, FAILED, DUPLICATE, PENDING, PENDING_DELETION, FOREIGN)
DRIFT = frozenset({UNRECORDED, ABSENT, FAILED, DUPLICATE})

# What `repair` does with a finding (None: nothing, it is information only).
ADOPT = "adopt"  # record it as the file's document instead of uploading again
DELETE = "delete"  # record as an orphan, then delete (the orphan mechanism)
REQUEUE = "requeue"  # mark the row for a fresh upload and queue the path


@dataclass(frozen=True)
class Finding:
    kind: str
    path: str | None
    document: str | None
    detail: str
    action: str | None = None
    sha256: str | None = None


@dataclass
class Report:
    """What one audit saw: counts, and every finding (one per document or path)."""

    documents: int = 0  # listed in the store
    ours: int = 0  # of those, carrying our library id
    recorded: int = 0  # documents the database references
    findings: list[Finding] = field(default_factory=list)

    @property
    def drift(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in DRIFT]

    @property
    def clean(self) -> bool:
        return not self.drift

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def counts(self) -> dict[str, int]:
        return {kind: len(self.of(kind)) for kind in KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "documents": self.documents,
            "ours": self.ours,
            "recorded": self.recorded,
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass
class RepairResult:
    adopted: list[str] = field(default_factory=list)  # paths
    requeued: list[str] = field(default_factory=list)  # paths
    deleted: list[str] = field(default_factory=list)  # documents
    not_deleted: list[str] = field(default_factory=list)  # still recorded as orphans
    skipped: list[str] = field(default_factory=list)  # the database changed since the audit

    @property
    def complete(self) -> bool:
        return not (self.not_deleted or self.skipped)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete}


# --- audit ------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _disk_sha256(library: Library, path: str) -> str | None:
    """The content of an eligible file at `path` now (None: none there, or unreadable).

    What lets a rebuilt database adopt the documents its files already have:
    they carry this library's id, the path and the sha256 (docs/design.md).
    """
    disk_path = paths.resolve(library.root, path)
    try:
        st = disk_path.stat()
        if not disk_path.is_file() or not library.eligibility.path_ok(path):
            return None
        if library.eligibility.size_problem(st.st_size):
            return None
        return hash_file(disk_path).sha256
    except (OSError, NotSettled):
        return None


def audit(db: Database, store: Store, library: Library) -> Report:
    """List the store once and compare every document with the database.

    Changes nothing. A recorded document missing from the listing is looked up
    by name before it is called absent (a fresh document can lag the listing).
    Raises StoreError when the store cannot be listed.
    """
    documents = list(store.list())
    with db.session() as s:
        rows = s.scalars(select(File)).all()
        orphans = {o.document: o.reason for o in s.scalars(select(Orphan)).all()}
        intents = s.execute(select(Intent.path, Intent.sha256, Intent.started_at)).all()
    by_document = {f.document: f for f in rows if f.document}
    by_path = {f.path: f for f in rows}
    intent_shas: dict[str, dict[str, float]] = {}
    for path, sha, began in intents:
        shas = intent_shas.setdefault(path, {})
        shas[sha] = min(shas.get(sha, began), began)

    report = Report(documents=len(documents), recorded=len(by_document))
    live: dict[str, list[str]] = {}  # path -> our documents that are not orphans
    keep: dict[str, str] = {}  # path -> the document that stays
    strays: dict[str | None, list[RemoteDocument]] = {}
    listed: set[str] = set()
    for doc in documents:
        listed.add(doc.name)
        meta = doc.metadata
        path = _text(meta.get("path"))
        if meta.get("library_id") != library.library_id:
            owner = _text(meta.get("library_id"))
            why = (
                f"belongs to library {owner}"
                if owner
                else "has no objlibd identity (made by hand or by another tool)"
            )
            report.findings.append(Finding(FOREIGN, path, doc.name, f"{why}; left alone"))
            continue
        report.ours += 1
        row = by_document.get(doc.name)
        if row is not None:
            live.setdefault(row.path, []).append(doc.name)
            keep[row.path] = doc.name
            if doc.state == DOC_FAILED:
                report.findings.append(_failed(row, doc.name))
            elif doc.state == DOC_PENDING:
                detail = "recorded for this file, but the store is still indexing it"
                report.findings.append(Finding(PENDING, row.path, doc.name, detail))
        elif doc.name in orphans:
            report.findings.append(
                Finding(
                    PENDING_DELETION,
                    path,
                    doc.name,
                    f"recorded orphan ({orphans[doc.name]}) awaiting deletion",
                    DELETE,
                )
            )
        elif doc.state == DOC_FAILED:  # an import that failed on the server: retry the file
            sha = _text(meta.get("sha256"))
            detail = "an import the store marked FAILED: delete it and upload the file again"
            report.findings.append(Finding(FAILED, path, doc.name, detail, DELETE, sha))
        elif doc.state == DOC_PENDING:
            detail = "not recorded and still indexing on the server: left for its upload"
            report.findings.append(Finding(PENDING, path, doc.name, detail))
        else:
            strays.setdefault(path, []).append(doc)

    for path, docs in strays.items():
        row = by_path.get(path) if path else None
        shas = intent_shas.get(path, {}) if path else {}
        # The newest finished attempt is the one to keep; older copies are extras.
        newest_first = sorted(docs, key=lambda d: d.create_time or "", reverse=True)
        disk = _disk_sha256(library, path) if path and row is None else None
        adopted = next(
            (
                d
                for d in newest_first
                if path and adoptable(d, row, attempts=shas, disk_sha256=disk)
            ),
            None,
        )
        for doc in docs:
            sha = _text(doc.metadata.get("sha256"))
            if doc is adopted:
                detail = "finished upload that was never recorded (same content): adopt it"
                report.findings.append(Finding(UNRECORDED, path, doc.name, detail, ADOPT, sha))
                keep[path] = doc.name
            else:
                detail = "ours but not in the database (crash leftover or superseded version)"
                report.findings.append(Finding(UNRECORDED, path, doc.name, detail, DELETE, sha))
            if path:
                live.setdefault(path, []).append(doc.name)

    for path, names in live.items():
        if len(names) > 1:
            kept = keep.get(path)
            detail = f"{len(names)} documents of ours for this path; " + (
                f"keeping this one, deleting {len(names) - 1}" if kept else "deleting all"
            )
            report.findings.append(Finding(DUPLICATE, path, kept, detail))

    for row in rows:
        if not row.document or row.document in listed:
            continue
        found = store.get(row.document)
        if found is None:
            report.findings.append(
                Finding(
                    ABSENT,
                    row.path,
                    row.document,
                    "recorded for this file but not in the store: upload again",
                    REQUEUE,
                    row.upload_sha256,
                )
            )
        elif found.state == DOC_FAILED:
            report.findings.append(_failed(row, row.document))
    report.findings.sort(key=lambda f: (KINDS.index(f.kind), f.path or "", f.document or ""))
    return report


def _failed(row: File, document: str) -> Finding:
    return Finding(
        FAILED,
        row.path,
        document,
        "the store could not index it (STATE_FAILED): upload again",
        REQUEUE,
        row.upload_sha256,
    )


# --- repair -----------------------------------------------------------------------------


def repair(
    db: Database,
    store: Store,
    library: Library,
    report: Report,
    *,
    applier: Applier | None = None,
    clock: Callable[[], float] = time.time,
) -> RepairResult:
    """Fix exactly our drift in `report`; foreign documents are never touched.

    Absent and failed documents: the row is marked for a fresh upload and the
    path queued (reason "repair"). Unrecorded documents are adopted when they
    are the finished upload whose commit was lost, else deleted through the
    orphan mechanism (recorded, then deleted; a failed delete stays recorded
    for the orphan sweep), keeping the recorded document of a duplicated path.
    Database changes happen in one transaction before any remote call.
    """
    if applier is None:
        applier = Applier(db, store, library, VolumeGuard(library.root, library.library_id))
    result = RepairResult()
    to_delete: list[str] = []
    now = clock()
    with db.session() as s:
        for finding in report.findings:
            if finding.action == ADOPT:
                _adopt(s, finding, applier, now, result, to_delete)
            elif finding.action == DELETE:
                _orphan(s, finding, applier, now, result, to_delete)
            elif finding.action == REQUEUE:
                _requeue(s, finding, applier, now, result, to_delete)
    for document in dict.fromkeys(to_delete):
        if applier.retire(document):
            result.deleted.append(document)
        else:
            result.not_deleted.append(document)
    return result


_repair = repair  # for audit_engine, whose `repair` flag shadows the function


def _adopt(
    s: Session,
    finding: Finding,
    applier: Applier,
    now: float,
    result: RepairResult,
    to_delete: list[str],
) -> None:
    path, document, sha = finding.path, finding.document, finding.sha256
    assert path and document and sha
    row = s.get(File, path)
    if row is not None and row.document == document:
        return  # recorded meanwhile: nothing to do
    shas: dict[str, float] = {}
    for intent_sha, began in s.execute(
        select(Intent.sha256, Intent.started_at).where(Intent.path == path)
    ).all():
        shas[intent_sha] = min(shas.get(intent_sha, began), began)
    still = RemoteDocument(name=document, display_name="", metadata={"sha256": sha, "path": path})
    disk = _disk_sha256(applier.lib, path) if row is None else None
    if not adoptable(still, row, attempts=shas, disk_sha256=disk) or s.scalar(
        select(File.path).where(File.document == document)
    ):
        result.skipped.append(document)
        return
    why = "found by verify: upload finished, never recorded"
    superseded = applier.adopt(s, path, document, sha, why=why, now=now)
    s.execute(delete(Intent).where(Intent.path == path, Intent.sha256 == sha))
    if superseded:
        to_delete.append(superseded)
    result.adopted.append(path)


def _orphan(
    s: Session,
    finding: Finding,
    applier: Applier,
    now: float,
    result: RepairResult,
    to_delete: list[str],
) -> None:
    document = finding.document
    assert document
    if finding.kind == PENDING_DELETION:
        if s.get(Orphan, document) is not None:
            to_delete.append(document)
        return
    if s.scalar(select(File.path).where(File.document == document)) is not None:
        result.skipped.append(document)  # recorded since the audit: not a stray
        return
    applier.orphan(s, document, finding.path, "stray", now)
    if finding.path and finding.sha256:
        # Whatever upload attempt left this document is resolved now.
        s.execute(
            delete(Intent).where(Intent.path == finding.path, Intent.sha256 == finding.sha256)
        )
    journal(s, JournalAction.STRAY, finding.path, document, finding.detail)
    to_delete.append(document)
    if finding.kind == FAILED and finding.path:
        # The upload that left it failed: its file is tried again (even a file
        # recorded as failed with this content), and the drain decides how.
        queue.enqueue(s, [(finding.path, queue.RETRY)])
        result.requeued.append(finding.path)


def _requeue(
    s: Session,
    finding: Finding,
    applier: Applier,
    now: float,
    result: RepairResult,
    to_delete: list[str],
) -> None:
    path = finding.path
    assert path
    row = s.get(File, path)
    if row is None or row.document != finding.document:
        result.skipped.append(finding.document or path)
        return
    to_delete += applier.requeue(s, path, finding.document, finding.kind, now)
    result.requeued.append(path)


# --- the daemon's entry point -----------------------------------------------------------


def audit_engine(engine: Engine, *, repair: bool = False) -> dict[str, Any]:
    """Audit the engine's library (and repair when asked); a JSON-able summary.

    For the daemon's weekly job: call it holding the writer lock so no drain
    runs meanwhile, then kick the drain when `repair.requeued` or
    `repair.adopted` is non-empty (those paths are queued, not uploaded here).
    """
    assert engine.store is not None, "the audit needs the store"
    report = audit(engine.db, engine.store, engine.lib)
    summary = report.as_dict() | {"repair": None}
    if repair:
        result = _repair(engine.db, engine.store, engine.lib, report, applier=engine.applier)
        summary["repair"] = result.as_dict()
    return summary
