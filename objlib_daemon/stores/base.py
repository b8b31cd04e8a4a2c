"""The store protocol every backend implements, and the errors it raises.

The sync engine only ever talks to this interface (as rclone's `fs.Fs`), so
the same truths are tested on the embedded store and on Gemini.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

# The largest document File Search accepts (gemini-file-search.md, limits);
# the local store enforces the same, and config caps library.max_size with it.
from objlib_daemon.config import MAX_DOCUMENT_BYTES  # noqa: F401 (re-exported)

MetadataValue = str | float | list[str]

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


class PermanentError(StoreError):
    """Retrying the same request will not help (bad input, too large, unsupported)."""


class AuthError(PermanentError):
    """Credentials missing or rejected: stop and tell the user."""


class StoreNotFound(PermanentError):
    """The configured store does not exist."""


class OperationLost(TransientError):
    """The store no longer knows an import's operation and no document of it was
    found: the caller's crash recovery (a listing) settles what it left."""


class CircuitOpen(TransientError):
    """Remote work is paused after repeated transient failures."""


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
    """A started upload: the operation to wait on and, when known, the document.

    `retried`: an earlier attempt of this same upload failed, possibly after
    its bytes arrived, so it may have created a document anyway (a finalize
    whose answer was lost); the caller should look for such a copy once this
    one is recorded.
    """

    operation: str
    document: str | None = None
    retried: bool = False
    display_name: str = ""
    identity: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    document: str
    display_name: str
    path: str | None
    snippet: str
    score: float | None = None


@dataclass(frozen=True)
class SearchResult:
    answer: str | None
    hits: list[SearchHit]


@dataclass(frozen=True)
class StoreInfo:
    name: str
    display_name: str
    documents: int | None = None


class Store(Protocol):
    """What the sync engine needs from a document store.

    `name` is the store's resource name, recorded in the database at init;
    every mutation goes to that store only.
    """

    backend: str
    name: str

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
    ) -> Upload:
        """Start importing `data` as a new document."""
        ...

    def poll(self, upload: Upload) -> RemoteDocument | None:
        """One look, never sleeping: None while indexing, the ACTIVE document once
        done; raise StoreError if the import failed."""
        ...

    def wait(self, upload: Upload) -> RemoteDocument:
        """Block until the import is done; raise StoreError if it failed."""
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

    def search(self, query: str, *, limit: int = 10) -> SearchResult:
        """Ranked hits (and an answer where the backend generates one)."""
        ...

    def close(self) -> None: ...
