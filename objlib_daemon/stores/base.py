"""The protocols every backend implements (a store's documents, and the stores
themselves), the plain values they are built from, and the errors they raise.

The sync engine only ever talks to `Store` (as rclone's `fs.Fs`), and the CLI's
`store` commands only to `StoreAdmin`, so the same truths are tested on the
embedded store and on Gemini, and no caller names a backend module. Nothing
here reads the config or the credentials: the caller resolves both and hands
over plain values (`RemoteSettings`, an API key), so a store can be built from anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

# The largest document File Search accepts (docs/gemini-file-search.md, limits);
# the local store enforces the same, and config caps library.max_size with it.
MAX_DOCUMENT_BYTES = 100 * 1000 * 1000

MetadataValue = str | float | list[str]

# Metadata keys that identify a document's content and place. An upload
# remembers what it sent under these keys (`Upload.identity`), so a document
# whose operation never answers can still be recognised as this upload's.
IDENTITY_KEYS = ("sha256", "path")

# Document states, normalised across backends.
ACTIVE = "active"
PENDING = "pending"
FAILED = "failed"


class StoreError(Exception):
    """A remote operation failed; `transient` says whether a retry may succeed."""

    transient = False

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientError(StoreError):
    """Worth retrying later (408, 429, 5xx, connection reset, timeout)."""

    transient = True

    def __init__(
        self, message: str, *, code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ImportRetryable(TransientError):
    """The import itself ended in a retryable error (operation code 13 INTERNAL,
    14 UNAVAILABLE, ...), not a look at it: its operation is over and will never
    succeed, so the file is uploaded again later instead of waited on."""


class PermanentError(StoreError):
    """Retrying the same request will not help (bad input, too large, unsupported)."""


class StoreUnusable(PermanentError):
    """Not this file's fault: every call fails until the user fixes something.

    A caller stops remote work and shows the message (it names the fix)
    instead of recording a per-file failure.
    """


class AuthError(StoreUnusable):
    """Credentials missing or rejected: stop and tell the user."""


class StoreNotFound(StoreUnusable):
    """The configured store does not exist (never created, or deleted on the server)."""


class CircuitOpen(TransientError):
    """Remote work is paused after repeated transient failures.

    `opened_at` (epoch seconds) lets the queue say since when rows wait on it.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, opened_at: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.opened_at = opened_at


class QuotaExhausted(TransientError):
    """The project's storage quota is full: no upload can succeed until space is freed.

    Transient (deleting documents or a higher tier clears it), with a long
    `retry_after`; not a rate signal, so the limiter does not slow down for it.
    """


class OperationLost(TransientError):
    """The server no longer knows the import's operation, and no document of it was found.

    The upload may still have landed under a name we cannot guess, or not at
    all: the caller resolves it as after a crash (its intent and a listing),
    never by uploading again on its own.
    """


@dataclass(frozen=True)
class RemoteDocument:
    """A document as the store reports it."""

    name: str
    display_name: str
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    state: str = ACTIVE
    size: int | None = None
    create_time: str | None = None


@dataclass(frozen=True)
class Upload:
    """A started upload: everything needed to poll it, also from another process.

    Every field is plain data, so a caller can store it and, after a restart,
    rebuild it (`Upload(operation=..., document=..., display_name=...,
    identity=...)`) and poll it again with no in-memory state.

    `document`: set only when the import was already done in the upload's
    own answer (polling then needs no request). `display_name`: the name the
    store sent (stripped and cut to the limit), for messages. `identity`: the
    `IDENTITY_KEYS` metadata the upload sent, which recognises its document
    when the operation cannot say. `retried`: an earlier attempt of this same
    upload failed, possibly after its bytes arrived, so it may have created a
    document anyway (a finalize whose answer was lost); the caller should
    look for such a copy once this one is recorded.
    """

    operation: str
    document: str | None = None
    display_name: str = ""
    identity: dict[str, MetadataValue] = field(default_factory=dict)
    retried: bool = False


def identity_of(metadata: Mapping[str, MetadataValue]) -> dict[str, MetadataValue]:
    """The identity part of an upload's metadata (see `IDENTITY_KEYS`)."""
    return {key: metadata[key] for key in IDENTITY_KEYS if key in metadata}


@dataclass(frozen=True)
class SearchHit:
    document: str
    display_name: str
    path: str | None
    snippet: str
    score: float | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Citation:
    """A claim of the answer grounded in hits: it ends at character `end` of the
    answer and rests on `hits` (indices into `SearchResult.hits`)."""

    end: int
    hits: tuple[int, ...]


@dataclass(frozen=True)
class SearchResult:
    answer: str | None
    hits: list[SearchHit]
    citations: tuple[Citation, ...] = ()


@dataclass(frozen=True)
class StoreInfo:
    name: str
    display_name: str
    documents: int | None = None


@dataclass(frozen=True)
class RemoteSettings:
    """Where a remote backend answers and how hard to push it, as plain values.

    The caller fills it from its config ([store] in docs/configuration.md);
    the API key travels apart from it, so no repr of these values can show it.
    """

    base_url: str  # "": the service's own endpoint
    model: str  # the model that answers searches
    concurrency: int  # uploads at once
    max_requests_per_minute: int  # 0: no ceiling, the limiter finds the rate
    breaker_threshold: int
    breaker_cooldown: float
    retry_attempts: int
    retry_initial: float


class Store(Protocol):
    """What the sync engine needs from a document store.

    `name` is the store's resource name, recorded in the database at init;
    every mutation goes to that store only.
    """

    backend: str
    name: str
    # True: `upload` returns the finished document (Upload.document, no
    # indexing to wait for) and the store is an `InstantStore`, so the sync
    # records its uploads in batches instead of one transaction set per file.
    instant: bool

    def ensure(self) -> StoreInfo:
        """Check the store exists and is reachable; never creates it."""
        ...

    def upload(
        self,
        data: BinaryIO,
        *,
        display_name: str,
        metadata: dict[str, MetadataValue],
        mime_type: str,
        text: str | None = None,
    ) -> Upload:
        """Start importing `data` as a new document.

        `text` is the document's plain text without any header the caller put
        in `data`, for a backend that indexes text itself (the local store);
        one that reads `data` itself (Gemini) ignores it. The caller extracts
        it (library/extract.py): stores and library never import each other,
        so a store needs no reader of its own for PDF, DOCX or EPUB.
        """
        ...

    def poll(self, upload: Upload) -> RemoteDocument | None:
        """One look at an import, never sleeping: None while it is still going.

        Done and usable → the document, state ACTIVE. Failed → PermanentError
        or TransientError as classified; the server has forgotten it and no
        document of it is found → OperationLost. A document that is still
        PENDING is never returned.
        """
        ...

    def delete(self, document: str) -> None:
        """Delete a document; one that is already gone counts as success."""
        ...

    def list(self) -> Iterator[RemoteDocument]:
        """Every document in the store (paged underneath)."""
        ...

    def get(self, document: str) -> RemoteDocument | None:
        """One document, or None when it does not exist."""
        ...

    def search(self, query: str, *, limit: int = 10, where: str | None = None) -> SearchResult:
        """Ranked hits (and an answer where the backend generates one); `where` filters
        on custom metadata in AIP-160 syntax (Gemini's `metadata_filter`)."""
        ...

    def health(self) -> dict[str, Any]:
        """Breaker and pacing state for `objlibd status` (no secrets, no network);
        `breaker` and `pacing` are None for a backend that has none."""
        ...

    def close(self) -> None: ...


class InstantStore(Store, Protocol):
    """A store whose imports finish inside `upload` (the embedded one)."""

    def batch(self) -> AbstractContextManager[None]:
        """Uploads made inside commit together at its end, or none of them do
        (a StoreError then): one commit per batch instead of per document."""
        ...


class StoreAdmin(Protocol):
    """A backend's stores themselves, not their documents: what `objlibd store ...`
    and `init` need. Creating a store is always an explicit user action (sync never
    creates one), so only `create` makes one."""

    backend: str

    def create(self, display_name: str) -> str:
        """Make a new store; its resource name. Not retried: a create whose answer
        was lost may have succeeded."""
        ...

    def list(self) -> list[StoreInfo]:
        """Every store this backend can see (with the given credentials)."""
        ...

    def resolve(self, name: str) -> str:
        """The resource name of an existing store, from its resource name or display
        name; StoreNotFound when there is none, StoreUnusable when it is ambiguous."""
        ...

    def close(self) -> None: ...
