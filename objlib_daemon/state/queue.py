"""Queue operations on `pending_changes` (docs/design.md "Queue").

Enqueue is one batched UPSERT that bumps `gen`; completion deletes a row only
if its `gen` is unchanged, so an event that arrives while the path is being
applied is never lost; `inflight` rows go back to `queued` at start.

A row is a file's path, or a folder hint (`folder_key`: the folder's path and
a `/`, reason `folder`): "look at everything below this folder", which the
scanner expands into file rows when it is due.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session

from objlib_daemon.state.models import Lane, PendingChange, QueueState

# Reasons a producer gives; informational only (the applier decides), except
# for the lane: what a person just did goes ahead of what a pass found.
SCAN = "scan"
EVENT = "event"
MOVED_FROM = "moved_from"
FORCE = "force"
RETRY = "retry"
REPAIR = "repair"
FOLDER = "folder"
BULK_REASONS = frozenset({SCAN, FORCE})


def lane_of(reason: str) -> Lane:
    if reason == FOLDER:
        return Lane.FOLDERS
    return Lane.BULK if reason in BULK_REASONS else Lane.FRESH


def folder_key(folder: str) -> str:
    """The queue key of a folder hint: no file's key ends in `/`."""
    return folder + "/"


@dataclass(frozen=True)
class Claim:
    path: str
    gen: int
    attempts: int
    reason: str


def enqueue(
    session: Session,
    items: Iterable[tuple[str, str]],
    *,
    not_before: float = 0.0,
    due: Mapping[str, float] | None = None,
    keep_backoff: bool = False,
) -> int:
    """UPSERT (path, reason) rows; an existing row gets gen+1 and is due again.

    `not_before` delays readiness (the watcher's settle time); `due` gives
    some paths their own (settled from their own last event). With
    `keep_backoff` (periodic reconciles) a row backing off after failures keeps
    its later due time; without it (an edit, a user's `sync`) it is due again.
    Returns rows written.
    """
    now = time.time()
    rows = [
        {
            "path": path,
            "reason": reason,
            "gen": 1,
            "first_seen": now,
            "last_seen": now,
            "state": QueueState.QUEUED,
            "attempts": 0,
            "next_attempt_at": due.get(path, not_before) if due else not_before,
            "lane": lane_of(reason),
        }
        for path, reason in dict(items).items()
    ]
    if not rows:
        return 0
    stmt = insert(PendingChange)
    stmt = stmt.on_conflict_do_update(
        index_elements=[PendingChange.path],
        set_={
            "reason": stmt.excluded.reason,
            "gen": PendingChange.gen + 1,
            "last_seen": stmt.excluded.last_seen,
            # A row stays in the faster lane it was ever put in.
            "lane": func.min(PendingChange.lane, stmt.excluded.lane),
            "next_attempt_at": (
                func.max(PendingChange.next_attempt_at, stmt.excluded.next_attempt_at)
                if keep_backoff
                else stmt.excluded.next_attempt_at
            ),
        },
    )
    session.execute(stmt, rows)
    return len(rows)


def claim(
    session: Session,
    *,
    limit: int,
    now: float | None = None,
    lanes: tuple[Lane, ...] = (Lane.FRESH, Lane.BULK),
) -> list[Claim]:
    """Mark up to `limit` due rows in-flight and return them: lane by lane (the
    fresh one first), each lane oldest first. Files unless `lanes` says folders."""
    now = time.time() if now is None else now
    rows: list = []
    for lane in lanes:
        if len(rows) >= limit:
            break
        rows += session.execute(
            select(
                PendingChange.path, PendingChange.gen, PendingChange.attempts, PendingChange.reason
            )
            .where(
                PendingChange.state == QueueState.QUEUED,
                PendingChange.lane == lane,
                PendingChange.next_attempt_at <= now,
            )
            .order_by(PendingChange.next_attempt_at, PendingChange.first_seen)
            .limit(limit - len(rows))
        ).all()
    if rows:
        session.execute(
            update(PendingChange)
            .where(PendingChange.path.in_([r.path for r in rows]))
            .values(state=QueueState.INFLIGHT)
        )
    return [Claim(r.path, r.gen, r.attempts, r.reason) for r in rows]


def complete(session: Session, claims: Iterable[Claim]) -> None:
    """Delete each row if nothing re-enqueued it meanwhile; else make it due again.

    Many claims complete in one statement each way (a batch of a first sync):
    the gen-checked delete runs per row, and the rows still there afterwards
    are exactly those an event bumped meanwhile.
    """
    done = [{"p": c.path, "g": c.gen} for c in claims]
    if not done:
        return
    table = PendingChange.__table__
    session.execute(
        delete(table).where(table.c.path == bindparam("p"), table.c.gen == bindparam("g")), done
    )
    session.execute(
        update(PendingChange)
        .where(PendingChange.path.in_([d["p"] for d in done]))
        .values(state=QueueState.QUEUED, attempts=0, last_error=None)
    )


def retry_later(session: Session, claim_: Claim, *, error: str, delay: float) -> None:
    """Keep the row with a backoff; if a newer event bumped `gen`, it stays due now."""
    common = {"state": QueueState.QUEUED, "last_error": error[:2000]}
    session.execute(
        update(PendingChange)
        .where(PendingChange.path == claim_.path, PendingChange.gen == claim_.gen)
        .values(**common, attempts=PendingChange.attempts + 1, next_attempt_at=time.time() + delay)
    )
    session.execute(
        update(PendingChange)
        .where(PendingChange.path == claim_.path, PendingChange.gen != claim_.gen)
        .values(**common)
    )


def due_now(session: Session) -> int:
    """Every row backing off is due again (a user's one-shot sync: a person asked, and
    its exit code must speak of a fresh try, not of a backoff left by an earlier pass)."""
    now = time.time()
    result = session.execute(
        update(PendingChange)
        .where(PendingChange.state == QueueState.QUEUED, PendingChange.next_attempt_at > now)
        .values(next_attempt_at=now)
    )
    return result.rowcount or 0


def indexing(session: Session, claim_: Claim) -> None:
    """The claimed row's upload was accepted: it waits for indexing, unclaimable."""
    session.execute(
        update(PendingChange)
        .where(PendingChange.path == claim_.path)
        .values(state=QueueState.INDEXING)
    )


def hold(session: Session, why: str) -> int:
    """Say why rows never tried are waiting (`not tried: breaker open since …`):
    without it `objlibd queue` showed them with no error at all. The next
    attempt's own outcome replaces it. Returns rows marked."""
    result = session.execute(
        update(PendingChange)
        .where(
            PendingChange.state == QueueState.QUEUED,
            PendingChange.attempts == 0,
            PendingChange.last_error.is_(None),
        )
        .values(last_error=why)
    )
    return result.rowcount or 0


def untried(session: Session) -> int:
    """Rows waiting that no attempt has reached yet (the sync summary's `not_tried`)."""
    return session.execute(
        select(func.count())
        .select_from(PendingChange)
        .where(PendingChange.state == QueueState.QUEUED, PendingChange.attempts == 0)
    ).scalar_one()


def release(session: Session, claims: Iterable[Claim]) -> None:
    """Return claimed rows untouched (shutdown, pause, volume gone)."""
    paths = [c.path for c in claims]
    if paths:
        session.execute(
            update(PendingChange)
            .where(PendingChange.path.in_(paths))
            .values(state=QueueState.QUEUED)
        )


def reset_inflight(session: Session, *, keep: Iterable[str] = ()) -> int:
    """At a drain's start: rows left claimed or indexing (a crash, a full disk)
    are queued again, except `keep`: paths whose indexing is being resumed."""
    kept = list(keep)
    result = session.execute(
        update(PendingChange)
        .where(
            PendingChange.state.in_((QueueState.INFLIGHT, QueueState.INDEXING)),
            PendingChange.path.not_in(kept),
        )
        .values(state=QueueState.QUEUED)
    )
    if kept:
        session.execute(
            update(PendingChange)
            .where(PendingChange.path.in_(kept))
            .values(state=QueueState.INDEXING)
        )
    return result.rowcount or 0


def depth(session: Session) -> int:
    return session.execute(select(func.count()).select_from(PendingChange)).scalar_one()


def by_reason(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(PendingChange.reason, func.count()).group_by(PendingChange.reason)
    ).all()
    return {reason: count for reason, count in rows}


def next_due(session: Session, *, lane: Lane | None = None) -> float | None:
    """When the next waiting row is due (in `lane`, when given)."""
    query = select(func.min(PendingChange.next_attempt_at)).where(
        PendingChange.state == QueueState.QUEUED
    )
    if lane is not None:
        query = query.where(PendingChange.lane == lane)
    return session.execute(query).scalar()


def waiting(session: Session, *, limit: int | None) -> list[PendingChange]:
    """Rows held back with a reason (an error, `not tried: breaker open …`), oldest
    first; every one when `limit` is None."""
    return list(
        session.scalars(
            select(PendingChange)
            .where(PendingChange.last_error.is_not(None))
            .order_by(PendingChange.first_seen)
            .limit(limit)
        ).all()
    )


def entries(session: Session) -> list[PendingChange]:
    return list(session.scalars(select(PendingChange).order_by(PendingChange.first_seen)).all())
