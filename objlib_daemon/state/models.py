"""Table definitions. Paths are library-relative POSIX strings in NFC."""

from __future__ import annotations

import enum

from sqlalchemy import Float, Index, Integer, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class FileState(enum.StrEnum):
    """What a `files` row says of its path and the path's document."""

    INDEXED = "indexed"  # a live document holds the recorded content
    PENDING = "pending"  # known locally, no current document yet
    MISSING = "missing"  # gone from disk (volume verified); its document stays until pruned
    PRUNED = "pruned"  # missing long enough that its document was deleted
    # Content the store refused: retried when it changes, after
    # `[sync] retry_failed_after`, or with `sync --retry-failed`.
    FAILED = "failed"


class QueueState(enum.StrEnum):
    """Where a `pending_changes` row is. Stored as "pending" before schema 5,
    the file state's word for another thing (state/db.py `_migrate_5`)."""

    QUEUED = "queued"  # waiting, due at next_attempt_at
    INFLIGHT = "inflight"  # claimed by an applier worker
    # Uploaded and waiting for the store to finish indexing: its intent holds
    # the operation; the row completes when the document is recorded.
    INDEXING = "indexing"


class Lane(enum.IntEnum):
    """Queue lanes: a fresh change (an edit the watcher saw, a user's repair) goes
    ahead of bulk rows (a first sync, a forced or periodic reconcile), so a save
    is never stuck behind a thousand-file pass. Folder hints have a lane of their
    own: the scanner expands them into file rows (sync/reconcile.py), no applier
    worker ever claims one."""

    FOLDERS = -1
    FRESH = 0
    BULK = 1


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Library config and bookkeeping as key → value (schema version, ids, last sync)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class File(Base):
    __tablename__ = "files"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    size: Mapped[int | None] = mapped_column(Integer)
    mtime_ns: Mapped[int | None] = mapped_column(Integer)
    # Hash of the content last seen on disk (may be newer than the document's).
    sha256: Mapped[str | None] = mapped_column(String)
    state: Mapped[str] = mapped_column(String, default=FileState.PENDING)
    document: Mapped[str | None] = mapped_column(String)
    # Hash of the content the live document holds: recorded only after upload.
    upload_sha256: Mapped[str | None] = mapped_column(String)
    enrichment_version: Mapped[str | None] = mapped_column(String)
    missing_since: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_files_sha256", "sha256"),
        # The applier's move check looks rows up by uploaded content: without
        # this index every upload scanned the table (a first sync was O(n^2)).
        Index("ix_files_upload_sha256", "upload_sha256"),
        Index("ix_files_state", "state"),
        Index("ix_files_document", "document"),
        # Who waits for AI metadata (`status`, the enrichment sweep): counted from
        # this covering index, 11 ms for 100k rows against 38 ms for a table scan.
        Index("ix_files_enrichment", "enrichment_version", "state"),
    )


class PendingChange(Base):
    """The queue: one row per path; producers UPSERT and bump `gen`."""

    __tablename__ = "pending_changes"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    reason: Mapped[str] = mapped_column(String)
    gen: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String, default=QueueState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)
    lane: Mapped[int] = mapped_column(
        Integer, default=Lane.BULK, server_default=str(Lane.BULK.value)
    )

    # `claim` reads each lane in (next_attempt_at, first_seen) order: with the
    # whole key in the index SQLite reads the first ready rows instead of
    # sorting every ready row on each claim (O(n^2) for a burst of n changes).
    __table_args__ = (
        Index("ix_pending_lane", "state", "lane", "next_attempt_at", "first_seen"),
    )


class Orphan(Base):
    """A superseded document of ours awaiting deletion."""

    __tablename__ = "orphans"
    document: Mapped[str] = mapped_column(String, primary_key=True)
    path: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Intent(Base):
    """One upload attempt whose outcome is not recorded yet.

    Written before the remote call and deleted in the transaction that records
    its document. A crash, or a transient error after the bytes were sent (the
    import may still have happened), leaves the row; `resolve_intents` then
    lists the store and adopts or deletes what those attempts left, instead
    of uploading again and keeping a duplicate. A row stays until a listing
    late enough to show everything its attempt can still produce: `ended_at`
    is when the attempt ended (unknown after a crash).
    """

    __tablename__ = "intents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String, index=True)
    sha256: Mapped[str] = mapped_column(String)
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    # The indexing stage: once the store accepted the bytes, the operation to
    # poll (and the document, when the answer named it), with what the upload
    # was made of, so a restart resumes waiting and records it unaided.
    operation: Mapped[str | None] = mapped_column(String)
    document: Mapped[str | None] = mapped_column(String)
    display_name: Mapped[str | None] = mapped_column(String)
    size: Mapped[int | None] = mapped_column(Integer)
    mtime_ns: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String)
    gen: Mapped[int | None] = mapped_column(Integer)  # the queue row's gen it answers
    retried: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JournalAction(enum.StrEnum):
    """What a journal row records (`objlibd why PATH` shows them as its history)."""

    UPLOADED = "uploaded"  # the path's first document
    REPLACED = "replaced"  # a new document for the path; the old one is retired
    # A note on an uploaded document (no text layer, text cut): `status` lists
    # the live documents noted so.
    NOTED = "noted"
    ADOPTED = "adopted"  # a document of ours found in the store, recorded
    MOVED = "moved"  # the content went to another path (detail: "to NEW")
    RESTORED = "restored"  # back from missing with the content its document holds
    MISSING = "missing"  # gone from disk: marked missing
    FORGOTTEN = "forgotten"  # gone before it was ever uploaded: its row dropped
    FAILED = "failed"  # refused by the store or unreadable (detail: why)
    REQUEUED = "requeued"  # `verify --repair` queued it to be uploaded again
    PRUNED = "pruned"  # missing long enough: its document deleted
    STRAY = "stray"  # `verify --repair`: a document of ours the database did not hold
    DELETED = "deleted"  # a superseded, stray or pruned document deleted from the store


# The journal keeps this much history (`objlibd why` shows it), trimmed at the
# end of each sync and by the daemon's orphan sweep: about 180 bytes a row, so
# the cap bounds it near 36 MB whatever the library's churn.
JOURNAL_KEEP_DAYS = 180
JOURNAL_MAX_ROWS = 200_000


class JournalEntry(Base):
    """Every action taken, for `objlibd why PATH` and post-mortems."""

    __tablename__ = "journal"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    path: Mapped[str | None] = mapped_column(String)
    action: Mapped[str] = mapped_column(String)
    document: Mapped[str | None] = mapped_column(String)
    detail: Mapped[str | None] = mapped_column(Text)


class EnrichmentRecord(Base):
    """AI metadata of one content (sha256) under one enrichment version, or why it failed.

    Keyed by content, not path: a rename, a copy or a file that comes back
    reuses it, and unchanged content is never sent to the model again. A
    failure writes a `failed` row only where no `done` row exists, so stored
    metadata is never thrown away by a failed attempt (enrichment/cache.py).
    """

    __tablename__ = "enrichments"
    sha256: Mapped[str] = mapped_column(String)
    version: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)  # "done" or "failed"
    result: Mapped[str | None] = mapped_column(Text)  # the Analysis as JSON when done
    reason: Mapped[str | None] = mapped_column(String)  # short code when failed
    error: Mapped[str | None] = mapped_column(Text)  # scrubbed message when failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (PrimaryKeyConstraint("sha256", "version"),)


class EnrichmentSpend(Base):
    """Model tokens spent on enrichment per UTC day: the budget's ledger and `status`."""

    __tablename__ = "enrichment_spend"
    day: Mapped[str] = mapped_column(String, primary_key=True)  # YYYY-MM-DD, UTC
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
