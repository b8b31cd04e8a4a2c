"""Adopting a finished upload that was never recorded (a crash, a lost answer).

Both crash recovery (`Engine.resolve_intents`) and `objlibd verify --repair`
find such documents; recording one is the same act either way: point the row
at it, make the previous document an orphan, and queue the path so the
applier checks it against the disk (the file may have changed since).
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from objlib_daemon.state import queue
from objlib_daemon.state.models import INDEXED, File, Intent, Orphan
from objlib_daemon.sync.applier import journal


def adopt(
    s: Session,
    path: str,
    document: str,
    sha256: str,
    *,
    version: str,
    now: float,
    why: str,
    settle_intents: bool = True,
) -> str | None:
    """Record `document` as the file's document; returns the superseded one, if any.

    The intents of that content are settled too, unless the caller settles
    them itself (crash recovery keeps them until a late enough listing).
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
    row.size = row.mtime_ns = None  # the applier re-examines the file on disk
    row.state, row.missing_since, row.last_error, row.updated_at = INDEXED, None, None, now
    row.enrichment_version = version
    if settle_intents:
        s.execute(delete(Intent).where(Intent.path == path, Intent.sha256 == sha256))
    journal(s, "adopted", path, document, why)
    queue.enqueue(s, [(path, queue.REPAIR)])
    return superseded
