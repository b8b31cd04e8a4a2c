"""What applying one path came to, and under which summary key each outcome counts.

The applier returns an `Outcome` per path (`Result.action`), the dry run
shows the one each planned action comes to, and the drain counts them. The
summaries of `sync`, `verify --repair` and the daemon's "unfinished" check
group them by `counted_as` (a refusal seen again is a failure; a file paused
by the breaker or still indexing is retrying), so no caller renames counts.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping


class Outcome(enum.StrEnum):
    NEW = "new"  # uploaded; it had no document before
    MODIFIED = "modified"  # uploaded; its old document retired
    MOVED = "moved"  # uploaded content that was at a vanished path: a rename
    ADOPTED = "adopted"  # the store's document of this content recorded, nothing uploaded
    RESTORED = "restored"  # back from missing with the content its document holds
    MISSING = "missing"  # gone from disk: marked missing, its document kept
    FORGOTTEN = "forgotten"  # gone before it was ever uploaded: its row dropped
    PRUNED = "pruned"  # missing long enough: its document deleted (`sync --prune-missing`)
    UNCHANGED = "unchanged"  # nothing to do (a new mtime on the same content included)
    GONE = "gone"  # resolved meanwhile (the old end of a move another worker recorded)
    SKIPPED = "skipped"  # not eligible and never tracked
    FAILED = "failed"  # the store refused it, or it cannot be sent as its format says
    STILL_FAILED = "still_failed"  # the refused content, unchanged: not tried again
    RETRYING = "retrying"  # not done now: queued again after a backoff
    INDEXING = "indexing"  # still indexing at the deadline: queued again
    PAUSED = "paused"  # not tried: the breaker is open or the drain halted

    @property
    def counted_as(self) -> str:
        """The summaries' key that counts it."""
        return _COUNTED_AS.get(self, self.value)

    @property
    def unfinished(self) -> bool:
        """It leaves the file out of the store as it is on disk."""
        return self.counted_as in (Outcome.FAILED, Outcome.RETRYING)

    @property
    def acted(self) -> bool:
        """Something was done or is due (listed with -v, logged at info)."""
        return self not in (Outcome.UNCHANGED, Outcome.GONE)


_COUNTED_AS = {
    Outcome.STILL_FAILED: Outcome.FAILED.value,
    Outcome.INDEXING: Outcome.RETRYING.value,
    Outcome.PAUSED: Outcome.RETRYING.value,
}


def tally(counts: Mapping[str, int]) -> Counter[str]:
    """A drain's counts under the summaries' keys: each outcome where it counts,
    the other keys (hashed, uploaded, deleted) as they are."""
    grouped: Counter[str] = Counter()
    for key, n in counts.items():
        grouped[key.counted_as if isinstance(key, Outcome) else key] += n
    return grouped
