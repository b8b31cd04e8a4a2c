"""Why a file waits for its AI metadata: reasons, the pending version mark, the report.

Light on purpose (no SDK import, and SQLAlchemy only inside the queries):
`objlibd status` renders `enrichment_line` with a daemon answering on its
socket, and status is meant to answer in about 100 ms.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# A file uploaded without its AI metadata records `<rules version>` + PENDING +
# reason (enricher.py): status groups by it without knowing the config.
PENDING = "+ai-pending:"

# Pending reasons, as recorded and shown by `status` (code → words).
REASONS = {
    "rate_limited": "rate limit or quota (429)",
    "server_error": "model service error",
    "unavailable": "model service unreachable",
    "safety": "blocked by the model's safety filter",
    "malformed": "malformed or cut-off answer",
    "no_key": "no usable API key",
    "budget": "daily token budget reached",
    "error": "refused by the model service",
}


class EnrichmentFailed(Exception):
    """No analysis this time; `reason` is a key of REASONS, the message is scrubbed."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


def pending_reason(version: str | None) -> str | None:
    """The reason encoded in a pending version, else None."""
    if version and PENDING in version:
        return version.rsplit(PENDING, 1)[1]
    return None


def waiting_versions(s: Session) -> dict[str, int]:
    """Pending versions of indexed files → how many files carry each.

    Grouped on the covering index ix_files_enrichment (a handful of distinct
    versions) and filtered here: a LIKE '%...%' would scan the whole table.
    """
    from sqlalchemy import func, select

    from objlib_daemon.state.models import File, FileState

    rows = s.execute(
        select(File.enrichment_version, File.state, func.count()).group_by(
            File.enrichment_version, File.state
        )
    ).all()
    return {
        v: n for v, state, n in rows if state == FileState.INDEXED and pending_reason(v) is not None
    }


def enrichment_status(db: Any, now: float | None = None) -> dict[str, Any]:
    """Files waiting for AI metadata by reason, and the tokens spent (no config needed)."""
    from objlib_daemon.enrichment import cache

    now = time.time() if now is None else now
    with db.reading() as s:
        versions = waiting_versions(s)
        spend = cache.spend_summary(s, now)
    by_reason: dict[str, int] = {}
    for version, count in versions.items():
        reason = pending_reason(version) or "error"
        by_reason[reason] = by_reason.get(reason, 0) + count
    return {
        "waiting": sum(by_reason.values()),
        "by_reason": by_reason,
        "paused_for_budget": "budget" in by_reason,
        "spent": spend,
    }


def enrichment_line(status: dict[str, Any]) -> str:
    """One line for the sync summary and `status`: who waits, why, what was spent
    ("" when enrichment never ran and nothing waits: AI off)."""
    total = status["spent"]["total"]
    if not status["waiting"] and not total["requests"]:
        return ""
    parts = []
    if status["waiting"]:
        reasons = ", ".join(
            f"{REASONS.get(r, r)}: {n}" for r, n in sorted(status["by_reason"].items())
        )
        parts.append(f"{status['waiting']} file(s) wait for AI metadata ({reasons})")
    if status["paused_for_budget"]:
        parts.append("paused for the daily token budget")
    today = status["spent"]["today"]
    parts.append(
        f"spent today {today['prompt_tokens'] + today['output_tokens']} tokens "
        f"in {today['requests']} request(s), "
        f"{total['prompt_tokens'] + total['output_tokens']} in all"
    )
    return "; ".join(parts)
