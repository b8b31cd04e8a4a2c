"""The enrichment cache and spend ledger in the state database (state/models.py).

A `done` row is written once per (sha256, version) and never replaced by a
failure: a failed attempt writes or updates a `failed` row only where no
`done` row exists, and a done row of an older version stays as the fallback
a failed re-derivation can still upload (`latest_done`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from objlib_daemon.enrichment.analysis import Analysis
from objlib_daemon.state.models import EnrichmentRecord, EnrichmentSpend

DONE = "done"
FAILED = "failed"
# Backoff of the sweep for one content after a failure: 1 min doubling to 6 h
# (a 429's RetryInfo asks for seconds; a safety block will not change soon).
BACKOFF_BASE = 60.0
BACKOFF_MAX = 6 * 3600.0


def utc_day(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y-%m-%d")


def lookup(s: Session, sha256: str, version: str) -> Analysis | None:
    row = s.get(EnrichmentRecord, (sha256, version))
    if row is None or row.status != DONE or row.result is None:
        return None
    return Analysis.from_json(row.result)


def latest_done(s: Session, sha256: str) -> Analysis | None:
    """The newest analysis of this content under any version (a fallback, possibly stale)."""
    result = s.scalar(
        select(EnrichmentRecord.result)
        .where(EnrichmentRecord.sha256 == sha256, EnrichmentRecord.status == DONE)
        .order_by(EnrichmentRecord.updated_at.desc())
        .limit(1)
    )
    return Analysis.from_json(result) if result else None


def due_at(s: Session, sha256: str, version: str) -> float:
    """When the sweep may ask again for a content that failed (0: now)."""
    row = s.get(EnrichmentRecord, (sha256, version))
    return row.next_attempt_at if row is not None and row.status == FAILED else 0.0


def record_done(
    s: Session,
    sha256: str,
    version: str,
    analysis: Analysis,
    *,
    prompt_tokens: int,
    output_tokens: int,
    now: float,
) -> None:
    row = s.get(EnrichmentRecord, (sha256, version))
    if row is None:
        row = EnrichmentRecord(sha256=sha256, version=version, attempts=0)
        s.add(row)
    row.status, row.result, row.reason, row.error = DONE, analysis.to_json(), None, None
    row.attempts = (row.attempts or 0) + 1
    row.prompt_tokens, row.output_tokens = prompt_tokens, output_tokens
    row.next_attempt_at, row.updated_at = 0.0, now
    add_spend(s, now, prompt_tokens, output_tokens)


def record_failure(
    s: Session,
    sha256: str,
    version: str,
    reason: str,
    error: str,
    *,
    retry_after: float | None,
    now: float,
) -> None:
    row = s.get(EnrichmentRecord, (sha256, version))
    if row is not None and row.status == DONE:
        return  # another worker got it meanwhile; a failure never replaces a result
    if row is None:
        row = EnrichmentRecord(sha256=sha256, version=version, attempts=0)
        s.add(row)
    row.status, row.result, row.reason, row.error = FAILED, None, reason, error[:2000]
    row.attempts = (row.attempts or 0) + 1
    backoff = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(row.attempts - 1, 16))
    row.next_attempt_at = now + max(backoff, retry_after or 0.0)
    row.updated_at = now


def add_spend(s: Session, now: float, prompt_tokens: int, output_tokens: int) -> None:
    day = utc_day(now)
    row = s.get(EnrichmentSpend, day)
    if row is None:
        row = EnrichmentSpend(day=day, requests=0, prompt_tokens=0, output_tokens=0)
        s.add(row)
    row.requests += 1
    row.prompt_tokens += prompt_tokens
    row.output_tokens += output_tokens


def spent_today(s: Session, now: float) -> int:
    row = s.get(EnrichmentSpend, utc_day(now))
    return 0 if row is None else row.prompt_tokens + row.output_tokens


def spend_summary(s: Session, now: float) -> dict[str, Any]:
    """Requests and tokens today (UTC) and in total, for `status`."""
    today = s.get(EnrichmentSpend, utc_day(now))
    total = s.execute(
        select(
            func.coalesce(func.sum(EnrichmentSpend.requests), 0),
            func.coalesce(func.sum(EnrichmentSpend.prompt_tokens), 0),
            func.coalesce(func.sum(EnrichmentSpend.output_tokens), 0),
        )
    ).one()
    return {
        "today": {
            "requests": today.requests if today else 0,
            "prompt_tokens": today.prompt_tokens if today else 0,
            "output_tokens": today.output_tokens if today else 0,
        },
        "total": {"requests": total[0], "prompt_tokens": total[1], "output_tokens": total[2]},
    }
