"""Times as users and programs read them: ISO 8601 in UTC (the JSON contract)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(ts: float | None) -> str | None:
    """`2026-12-04T14:52:38Z` for an epoch time; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
