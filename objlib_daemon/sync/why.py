"""`objlibd why PATH`: everything objlibd knows and did about one file, read-only.

Eligibility (and the rule that excludes it), the `files` row, its queue row and
next attempt, orphans of its documents, and its history from the journal.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from objlib_daemon.config import LibraryConfig
from objlib_daemon.library.eligibility import why_not
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import (
    File,
    FileState,
    JournalAction,
    JournalEntry,
    Orphan,
    PendingChange,
)
from objlib_daemon.timefmt import utc_iso

# Journal rows shown, newest last: enough for a file's story, not a log dump.
HISTORY = 20


def library_path(root: Path, given: str) -> str:
    """The library-relative NFC path of `given`: a path on disk (absolute or
    relative to the working directory) inside the root, else taken as relative
    to the root already."""
    # Only `~/`: a name such as `~$lock.docx` is a file, not a user's home.
    candidate = Path(os.path.expanduser(given) if given.startswith("~/") else given)
    if candidate.is_absolute() or candidate.exists():
        absolute = Path(os.path.abspath(candidate))
        try:
            given = absolute.relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"{given} is not inside the library ({root})") from None
    return unicodedata.normalize("NFC", given.strip("/"))


def explain(db: Database, root: Path, settings: LibraryConfig, given: str) -> dict[str, Any]:
    rel = library_path(root, given)
    disk_path = root / rel
    try:
        st = disk_path.stat(follow_symlinks=False)
        on_disk: dict[str, Any] | None = {
            "size": st.st_size,
            "modified": utc_iso(st.st_mtime),
            "regular_file": disk_path.is_file() and not disk_path.is_symlink(),
        }
    except OSError:
        on_disk = None
    reason = why_not(settings, rel, on_disk["size"] if on_disk else None)
    if on_disk and not on_disk["regular_file"]:
        reason = "not a regular file (a folder, a symbolic link or a device)"
    with db.session() as s:
        row = s.get(File, rel)
        change = s.get(PendingChange, rel)
        orphans = s.scalars(select(Orphan).where(Orphan.path == rel)).all()
        history = s.scalars(
            select(JournalEntry)
            .where(
                or_(
                    JournalEntry.path == rel,
                    and_(
                        JournalEntry.action == JournalAction.MOVED,
                        JournalEntry.detail == f"to {rel}",
                    ),
                )
            )
            .order_by(JournalEntry.id.desc())
            .limit(HISTORY)
        ).all()
    data: dict[str, Any] = {
        "path": rel,
        "root": str(root),
        "on_disk": on_disk,
        "eligible": on_disk is not None and reason is None,
        "not_eligible_because": reason if on_disk is not None else None,
        "file": _file(row) if row else None,
        "queue": _change(change) if change else None,
        "orphans": [
            {"document": o.document, "reason": o.reason, "last_error": o.last_error}
            for o in orphans
        ],
        "history": [
            {
                "at": utc_iso(j.at),
                "action": j.action,
                "document": j.document,
                # A move into this path is journaled at the old one ("to NEW").
                "detail": j.detail if j.path == rel else f"from {j.path}",
            }
            for j in reversed(history)
        ],
    }
    data["verdict"] = verdict(data)
    return data


def _file(row: File) -> dict[str, Any]:
    return {
        "state": row.state,
        "document": row.document,
        "sha256": row.sha256,
        "uploaded_sha256": row.upload_sha256,
        "missing_since": utc_iso(row.missing_since),
        "attempts": row.attempts,
        "last_error": row.last_error,
        "updated_at": utc_iso(row.updated_at),
    }


def _change(change: PendingChange) -> dict[str, Any]:
    return {
        "reason": change.reason,
        "state": change.state,
        "attempts": change.attempts,
        "next_attempt_at": utc_iso(change.next_attempt_at or None),
        "last_error": change.last_error,
    }


def verdict(data: dict[str, Any]) -> str:
    """One sentence: the answer to "why", before the details."""
    row, change = data["file"], data["queue"]
    if data["on_disk"] is None and row is None:
        # A moved-away path has no row any more, only its history.
        past = [e for e in data["history"] if e["action"] != JournalAction.DELETED]
        if past:
            last = past[-1]
            return f"no longer tracked: {last['action']} {last['detail'] or ''} at {last['at']}"
        return "unknown: not in the library and never tracked"
    if data["on_disk"] is not None and not data["eligible"]:
        said = f"not tracked: {data['not_eligible_because']}"
        return said + (f" (was {row['state']})" if row else "")
    if change:
        why = f"; waiting: {change['last_error']}" if change["last_error"] else ""
        return f"in the queue ({change['reason']}, {change['state']}), next attempt " + (
            f"{change['next_attempt_at'] or 'now'}{why}"
        )
    if row is None:
        return "eligible, not seen by a sync yet: run `objlibd sync`"
    state = row["state"]
    if state == FileState.INDEXED:
        return f"indexed: document {row['document']} holds its current content"
    if state == FileState.MISSING:
        return f"missing since {row['missing_since']}; its document stays until pruned"
    if state == FileState.FAILED:
        return f"failed: {row['last_error']}"
    return state
