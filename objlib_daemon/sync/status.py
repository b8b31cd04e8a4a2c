"""What `objlibd status` shows when read from the database (no daemon needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from objlib_daemon.enrichment.pending import enrichment_status
from objlib_daemon.library.volume import probe
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File, FileState, Intent, JournalAction, JournalEntry, Orphan

# Rows listed by name in `status` (failures, waiting rows); `objlibd queue` lists all.
SHOWN = 10


def database_status(db: Database, *, shown: int | None = SHOWN) -> dict[str, Any]:
    """The status; `shown` rows of failures and waiting changes, all of them if None
    (`status -v`: a user chasing failures wants the whole list, not ten)."""
    meta = db.all_meta()
    with db.session() as s:
        by_state = dict(s.execute(select(File.state, func.count()).group_by(File.state)).all())
        oldest_missing = s.execute(
            select(File.path, File.missing_since)
            .where(File.state == FileState.MISSING)
            .order_by(File.missing_since)
            .limit(1)
        ).first()
        failures = s.execute(
            select(File.path, File.last_error).where(File.state == FileState.FAILED).limit(shown)
        ).all()
        retrying = s.execute(
            select(func.count())
            .select_from(File)
            .where(File.last_error.is_not(None), File.state != FileState.FAILED)
        ).scalar_one()
        # Live documents uploaded with a note (no text layer, text cut); a
        # held-back file is listed with the failures instead.
        noted = s.execute(
            select(File.path, JournalEntry.detail)
            .join(JournalEntry, JournalEntry.document == File.document)
            .where(
                JournalEntry.action == JournalAction.NOTED,
                File.state.in_((FileState.INDEXED, FileState.MISSING)),
            )
            .limit(10)
        ).all()
        orphans = s.execute(select(func.count()).select_from(Orphan)).scalar_one()
        # Accepted by the store and not yet indexed (never counted indexed).
        indexing = s.execute(
            select(func.count(func.distinct(Intent.path))).where(Intent.operation.is_not(None))
        ).scalar_one()
        depth = queue.depth(s)
        reasons = queue.by_reason(s)
        next_due = queue.next_due(s)
        untried = queue.untried(s)
        held = [
            {
                "path": r.path,
                "attempts": r.attempts,
                "why": r.last_error,
                "next_attempt_at": r.next_attempt_at or None,
            }
            for r in queue.waiting(s, limit=shown)
        ]
    root = meta.get("root")
    volume = probe(Path(root), meta.get("library_id", "")) if root else None
    last_result = json.loads(meta["last_sync_result"]) if meta.get("last_sync_result") else None
    return {
        "library": {
            "id": meta.get("library_id"),
            "root": root,
            "available": bool(volume and volume.available),
            "volume": volume.reason if volume else "no library recorded",
        },
        "store": {"backend": meta.get("store_backend"), "name": meta.get("store_name")},
        "files": {state: by_state.get(state, 0) for state in FileState},
        "queue": {
            "pending": depth,
            "by_reason": reasons,
            "next_due": next_due,
            "not_tried": untried,
            "waiting": held,
        },
        "orphans": orphans,
        "missing": {
            "count": by_state.get(FileState.MISSING, 0),
            "oldest": (
                {"path": oldest_missing[0], "since": oldest_missing[1]} if oldest_missing else None
            ),
        },
        "failed": [{"path": p, "error": e} for p, e in failures],
        "noted": [{"path": p, "note": n} for p, n in noted],
        "retrying": retrying,
        "indexing": indexing,
        "enrichment": enrichment_status(db),
        "last_sync": {
            "at": float(meta["last_sync_at"]) if meta.get("last_sync_at") else None,
            "result": last_result,
        },
        "last_reconcile_at": (
            float(meta["last_reconcile_at"]) if meta.get("last_reconcile_at") else None
        ),
        "generated_at": time.time(),
    }
