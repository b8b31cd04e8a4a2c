"""Decide what to do with one path: a pure function of the disk and the row.

Both the applier (which then acts) and `sync --dry-run` (which only counts)
call `decide`, and both say what an action comes to by its `outcome`, so the
plan shown is the plan executed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from objlib_daemon.state.models import FileState
from objlib_daemon.sync.outcome import Outcome


class Action(enum.StrEnum):
    NEW = "new"  # upload, record
    MODIFIED = "modified"  # upload new, record, then delete old
    RESTORED = "restored"  # missing and back with the same content: clear missing
    REFRESH = "refresh"  # same content, new mtime: refresh the row only (counts as unchanged)
    UNCHANGED = "unchanged"  # nothing at all
    VANISHED = "vanished"  # gone with a document: mark missing (volume verified)
    FORGET = "forget"  # never had a document and is gone: drop the row
    STILL_FAILED = "still_failed"  # same content the store refused: wait for a change

    @property
    def outcome(self) -> Outcome:
        """What applying it comes to when nothing intervenes (an upload may also
        turn out a move or an adoption)."""
        return _OUTCOME[self]


_OUTCOME = {
    Action.NEW: Outcome.NEW,
    Action.MODIFIED: Outcome.MODIFIED,
    Action.RESTORED: Outcome.RESTORED,
    Action.REFRESH: Outcome.UNCHANGED,
    Action.UNCHANGED: Outcome.UNCHANGED,
    Action.VANISHED: Outcome.MISSING,
    Action.FORGET: Outcome.FORGOTTEN,
    Action.STILL_FAILED: Outcome.STILL_FAILED,
}


@dataclass(frozen=True)
class Row:
    """The part of a `files` row the planner needs."""

    state: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    upload_sha256: str | None
    document: str | None
    enrichment_version: str | None


@dataclass(frozen=True)
class Disk:
    """What is on disk now: absent, or size/mtime and (when hashed) sha256."""

    present: bool
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None


def needs_hash(row: Row | None, disk: Disk, *, force: bool, retry: bool = False) -> bool:
    """Hash only candidates: new files, changed (size, mtime), everything with --force,
    and a failed file asked to be retried (`retry`)."""
    if not disk.present:
        return False
    if (
        row is None
        or row.state in (FileState.PRUNED, FileState.MISSING, FileState.PENDING)
        or force
    ):
        return True
    if retry and row.state == FileState.FAILED:
        return True
    return (row.size, row.mtime_ns) != (disk.size, disk.mtime_ns)


def decide(
    row: Row | None, disk: Disk, *, force: bool, enrichment_version: str, retry: bool = False
) -> Action:
    """What to do now. `retry`: a failed file's refusal may have had an outside cause
    that has since gone (a quota, a limit, the config): try its content again."""
    if not disk.present:
        if row is None or row.state in (FileState.MISSING, FileState.PRUNED):
            return Action.UNCHANGED
        return Action.VANISHED if row.document else Action.FORGET
    if row is None or row.state == FileState.PRUNED:
        return Action.NEW
    if disk.sha256 is None:  # not a hash candidate: (size, mtime) unchanged
        return Action.UNCHANGED
    same_content = disk.sha256 == row.upload_sha256 and row.document is not None
    if row.state == FileState.MISSING:
        return Action.RESTORED if same_content else Action.MODIFIED
    if same_content and (not force or row.enrichment_version == enrichment_version):
        return Action.REFRESH
    if row.state == FileState.FAILED and disk.sha256 == row.sha256 and not (force or retry):
        return Action.STILL_FAILED
    if row.state == FileState.INDEXED or row.document:
        return Action.MODIFIED
    return Action.NEW
