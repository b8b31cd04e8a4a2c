"""The embedded store: documents on local disk with an SQLite FTS5 index.

It is the zero-configuration default, so a new user can run the daemon and
`objlibd search` with no account and no network. It mirrors what the sync
engine relies on from Gemini (names, operations, metadata types and limits,
delete-of-absent succeeds), so the same invariants are tested on both.

It indexes the plain text the caller hands to `upload(text=...)` (the sync
extracts it with library/extract.py), so PDF, DOCX, HTML and EPUB documents
are found by their words though this module reads none of those formats; the
bytes are stored exactly as uploaded.

Layout under `directory` (`<state_dir>/local-store`, 0700):

    index.db          documents table + FTS5 index (WAL)
    blobs/<doc id>    the uploaded bytes, exactly as received

Crash safety: content is written to a temp file and renamed into place before
the row is inserted, so a row never exists without its content. Inside
`batch()` the rows of many uploads commit together (a first sync pays one
commit per batch, not one per document); the content still comes first, and a
batch that does not commit removes the content it wrote. A crash can
leave a temp file or an unreferenced blob; neither is visible to `list()`, and
both are swept on a later open once they are old enough not to belong to an
upload still in flight in another process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from objlib_daemon.stores import filters
from objlib_daemon.stores.base import (
    ACTIVE,
    MAX_DOCUMENT_BYTES,
    MetadataValue,
    OperationLost,
    PermanentError,
    RemoteDocument,
    SearchHit,
    SearchResult,
    StoreError,
    StoreInfo,
    StoreNotFound,
    Upload,
    identity_of,
)

# The same limits Gemini enforces (docs/gemini-file-search.md), so a bug that would
# be a 400 there is an error here too, not a surprise on the first real sync.
MAX_DISPLAY_NAME = 512
MAX_METADATA = 20
MAX_SIZE = MAX_DOCUMENT_BYTES

TEXT_MIME = frozenset({"text/plain", "text/markdown"})
_TEMP_PREFIX = ".tmp-"
# A leftover temp file or unreferenced blob younger than this may belong to an
# upload in flight in another process (e.g. `objlibd sync` next to a search).
_SWEEP_AGE = 3600.0
# Listing every blob costs 0.2-0.3 s per 100k documents: on every open (every
# CLI command) that is a cost that grows with the library, so once a day.
_SWEEP_EVERY = 86400.0
_PAGE = 200  # rows fetched per lock hold in list(); keeps writers unblocked
_MAX_QUERY_TERMS = 32
_SNIPPET_TOKENS = 16
# Display names are short and say what a document is: weigh a hit there higher.
_BM25_WEIGHTS = (5.0, 2.0, 1.0)  # display_name, meta, body

_PREFIX = "localStores/"
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SLUG_MAX = 40  # Gemini's document ids are a short slug of the name + 12 hex
_TERM = re.compile(r"[^\W_]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    create_time TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    display_name, meta, body, tokenize = 'unicode61 remove_diacritics 2'
);
"""


@dataclass(frozen=True)
class _Pending:
    """An uploaded document's row, its content already in `blob`."""

    blob: Path
    row: tuple[Any, ...]
    meta_text: str
    body: str


class LocalStore:
    """A Store (see base.py) kept in a directory on this machine."""

    backend = "local"
    # upload() returns the finished document, and uploads can share one
    # transaction (`batch`): the sync records them in batches (sync/applier.py).
    instant = True

    def __init__(self, directory: Path, name: str = "local") -> None:
        self.directory = Path(directory)
        self.name = _resource_name(name)
        self.display_name = self.name.removeprefix(_PREFIX)
        self._blobs = self.directory / "blobs"
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700, parents=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        self._blobs.mkdir(mode=0o700, exist_ok=True)
        # One connection behind a lock: every call is short, and the daemon's
        # few worker threads never wait long. WAL lets another process (the CLI
        # searching) read while the daemon writes.
        self._lock = threading.Lock()
        # A thread's open batch (`batch`): its uploads' rows, inserted at its end.
        self._local = threading.local()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.directory / "index.db", isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._conn.executescript(_SCHEMA)
        self._sweep()

    # --- Store protocol ----------------------------------------------------------

    def ensure(self) -> StoreInfo:
        with self._lock:
            (count,) = self._db().execute("SELECT count(*) FROM documents").fetchone()
        return StoreInfo(name=self.name, display_name=self.display_name, documents=count)

    def upload(
        self,
        data: BinaryIO,
        *,
        display_name: str,
        metadata: dict[str, MetadataValue],
        mime_type: str,
        text: str | None = None,
    ) -> Upload:
        """Store `data` as it is and index `text` (the caller's extraction, without
        the identity header: snippets quote the document); without `text`, text
        types are decoded and anything else is found by name and metadata only."""
        if not display_name or len(display_name) > MAX_DISPLAY_NAME:
            raise PermanentError(f"display name must be 1-{MAX_DISPLAY_NAME} characters", code=400)
        meta = _check_metadata(metadata)
        self._db()  # a closed store writes nothing, not even content
        payload = data.read(MAX_SIZE + 1)
        if len(payload) > MAX_SIZE:
            raise PermanentError(f"document larger than {MAX_SIZE} bytes", code=400)
        doc_id = f"{_slug(display_name)}-{secrets.token_hex(6)}"
        body = text if text is not None else _decoded_text(payload, mime_type)
        meta_text = " ".join(_searchable_metadata(meta))

        # Content first (temp + rename), row second: a crash in between leaves
        # an unreferenced blob, never a row without content.
        final = self._blobs / doc_id
        temp = self._blobs / f"{_TEMP_PREFIX}{doc_id}"
        try:
            _write(temp, payload)
            os.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write document content: {exc}") from exc

        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row = (doc_id, display_name, json.dumps(meta), mime_type, len(payload), created)
        batch: list[_Pending] | None = getattr(self._local, "batch", None)
        try:
            if batch is not None:  # inserted, with the rest of its batch, at its end
                batch.append(_Pending(final, row, meta_text, body))
            else:
                with self._lock, self._transaction() as db:
                    self._insert(db, _Pending(final, row, meta_text, body))
        except sqlite3.Error as exc:
            final.unlink(missing_ok=True)
            raise StoreError(f"cannot record document: {exc}") from exc
        return Upload(
            operation=f"{self.name}/operations/{doc_id}",
            document=self._name(doc_id),
            display_name=display_name,
            identity=identity_of(meta),
        )

    @staticmethod
    def _insert(db: sqlite3.Connection, doc: _Pending) -> None:
        cur = db.execute(
            "INSERT INTO documents (doc_id, display_name, metadata, mime_type, size,"
            " create_time) VALUES (?, ?, ?, ?, ?, ?)",
            doc.row,
        )
        db.execute(
            "INSERT INTO documents_fts (rowid, display_name, meta, body) VALUES (?, ?, ?, ?)",
            (cur.lastrowid, doc.row[1], doc.meta_text, doc.body),
        )

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Uploads made inside (by this thread) are recorded together at its end.

        A first sync of small files otherwise pays a commit per document. The
        content of each upload is written at once, outside the store's lock
        (other threads' uploads and searches go on); the rows are inserted in
        one transaction when the batch ends, so a row still never exists
        without its content. An upload that fails inside fails alone. If the
        batch cannot commit (or an exception escapes it), none of its
        documents exist, their content is removed, and a StoreError (or that
        exception) is raised: the caller records none of them.
        """
        if getattr(self._local, "batch", None) is not None:
            raise StoreError("local store batches do not nest")
        self._local.batch = pending = []
        try:
            yield
            self._local.batch = None
            if pending:
                with self._lock, self._transaction() as db:
                    for doc in pending:
                        self._insert(db, doc)
        except BaseException as exc:
            for doc in pending:
                doc.blob.unlink(missing_ok=True)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot record documents: {exc}") from exc
            raise
        finally:
            self._local.batch = None

    def poll(self, upload: Upload) -> RemoteDocument:
        """Imports are synchronous here: the document exists once upload() returned.

        One that is gone since (deleted by a later step, or a rebuilt Upload
        naming nothing) is lost like an expired operation on Gemini.
        """
        doc = self.get(upload.document) if upload.document else None
        if doc is None:
            raise OperationLost(f"import {upload.operation} has no document (any more)")
        return doc

    def delete(self, document: str) -> None:
        doc_id = self._doc_id(document)
        if doc_id is None:
            return
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            if row is None:
                return  # already gone counts as success
            db.execute("DELETE FROM documents_fts WHERE rowid = ?", row)
            db.execute("DELETE FROM documents WHERE id = ?", row)
        # Row first, then content: a crash in between leaves an unreferenced
        # blob that the sweep removes, never a row pointing at nothing.
        (self._blobs / doc_id).unlink(missing_ok=True)

    def list(self) -> Iterator[RemoteDocument]:
        after = 0
        while True:
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        f"SELECT {_COLUMNS} FROM documents WHERE id > ? ORDER BY id LIMIT ?",
                        (after, _PAGE),
                    )
                    .fetchall()
                )
            for row in rows:
                yield self._document(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def get(self, document: str) -> RemoteDocument | None:
        doc_id = self._doc_id(document)
        if doc_id is None:
            return None
        with self._lock:
            row = (
                self._db()
                .execute(f"SELECT {_COLUMNS} FROM documents WHERE doc_id = ?", (doc_id,))
                .fetchone()
            )
        return self._document(row) if row else None

    def search(self, query: str, *, limit: int = 10, where: str | None = None) -> SearchResult:
        """Best-first hits; `score` is the negated bm25, so higher is better.

        Every query term is quoted, so no user input is FTS5 syntax. All terms
        must match first; when that finds fewer than `limit`, documents
        matching any term fill the rest. `where` is a metadata filter in
        AIP-160 syntax, as Gemini's `metadata_filter` (filters.py).
        """
        terms = _query_terms(query)
        if not terms or limit <= 0:
            return SearchResult(answer=None, hits=[])
        try:
            keep = filters.parse(where) if where else None
        except filters.FilterError as exc:
            raise PermanentError(f"invalid --where filter: {exc}", code=400) from None
        hits = self._match(" AND ".join(terms), limit, keep)
        if len(hits) < limit and len(terms) > 1:
            seen = {hit.document for hit in hits}
            extra = self._match(" OR ".join(terms), limit, keep)
            hits += [hit for hit in extra if hit.document not in seen][: limit - len(hits)]
        return SearchResult(answer=None, hits=hits)

    def health(self) -> dict[str, Any]:
        """No breaker and no pacing: nothing here fails for a while and recovers."""
        return {"backend": self.backend, "store": self.name, "breaker": None, "pacing": None}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("local store is closed")
        return self._conn

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db())

    def _name(self, doc_id: str) -> str:
        return f"{self.name}/documents/{doc_id}"

    def _doc_id(self, document: str) -> str | None:
        """The id part of a full name; a bare id is accepted too. None: not ours."""
        prefix = f"{self.name}/documents/"
        if document.startswith(prefix):
            document = document[len(prefix) :]
        elif "/" in document:
            return None
        return document or None

    def _document(self, row: tuple[Any, ...]) -> RemoteDocument:
        _, doc_id, display_name, metadata, _mime, size, created = row
        return RemoteDocument(
            name=self._name(doc_id),
            display_name=display_name,
            metadata=json.loads(metadata),
            state=ACTIVE,
            size=size,
            create_time=created,
        )

    def _match(
        self, expression: str, limit: int, keep: filters.Predicate | None = None
    ) -> list[SearchHit]:
        # The snippet is always cut from the body (column 2), the document's own
        # text: a hit on the name or metadata alone quotes the document's start,
        # never its path. Ordering by FTS5's own `rank` column (bm25 with our
        # weights, set by `rank MATCH`) lets FTS5 sort before the outer query, so
        # snippet() runs only for the rows returned, not for every match (~50 ms
        # per 64 KB). A filter (`keep`) is applied to the ranked matches.
        weights = ", ".join(str(w) for w in _BM25_WEIGHTS)
        sql = (
            "SELECT d.doc_id, d.display_name, d.metadata, f.snip, f.rank FROM ("
            f"  SELECT rowid, snippet(documents_fts, 2, '**', '**', '…', {_SNIPPET_TOKENS})"
            "   AS snip, rank FROM documents_fts"
            "   WHERE documents_fts MATCH ? AND rank MATCH ? ORDER BY rank LIMIT ?"
            ") AS f JOIN documents d ON d.id = f.rowid ORDER BY f.rank"
        )
        with self._lock:
            try:
                # A filter is applied to the ranked matches, so fetch them all.
                fetch = -1 if keep is not None else limit
                rows = self._db().execute(sql, (expression, f"bm25({weights})", fetch)).fetchall()
            except sqlite3.OperationalError as exc:
                # Quoted terms cannot be syntax errors; anything else is ours.
                raise StoreError(f"search failed: {exc}") from exc
        hits = []
        for doc_id, display_name, metadata, snippet, rank in rows:
            meta = json.loads(metadata)
            if keep is not None and not keep(meta):
                continue
            if len(hits) >= limit:
                break
            path = meta.get("path")
            hits.append(
                SearchHit(
                    document=self._name(doc_id),
                    display_name=display_name,
                    path=path if isinstance(path, str) and path else None,
                    snippet=snippet,
                    score=-rank,
                    metadata=meta,
                )
            )
        return hits

    def _sweep(self) -> None:
        """Remove crash leftovers: old temp files and old unreferenced blobs (at most
        once a day: the mtime of `swept` says when it last ran)."""
        stamp = self.directory / "swept"
        now = time.time()
        try:
            if now - stamp.stat().st_mtime < _SWEEP_EVERY:
                return
        except FileNotFoundError:
            pass
        cutoff = now - _SWEEP_AGE
        with self._lock:
            known = {r[0] for r in self._db().execute("SELECT doc_id FROM documents")}
        for entry in os.scandir(self._blobs):
            if entry.name in known:
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass  # gone already, or not ours to remove: harmless either way
        stamp.touch(mode=0o600)  # its mtime: now


_COLUMNS = "id, doc_id, display_name, metadata, mime_type, size, create_time"


class LocalAdmin:
    """The embedded store of one state dir (the StoreAdmin protocol).

    There is at most one, in `directory`, under the name the caller records
    (`name`). Listing never creates its folder and needs no credentials, so
    `store list` works on a machine with no Gemini key.
    """

    backend = "local"

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = _resource_name(name)

    def create(self, display_name: str) -> str:
        if self.directory.is_dir():
            raise PermanentError(f"a local store already exists in {self.directory}")
        with LocalStore(self.directory, display_name) as store:
            return store.name

    def list(self) -> list[StoreInfo]:
        if not self.directory.is_dir():
            return []
        with LocalStore(self.directory, self.name) as store:
            return [store.ensure()]

    def resolve(self, name: str) -> str:
        if not self.directory.is_dir() or _resource_name(name) != self.name:
            raise StoreNotFound(
                f"no local store {name!r} in {self.directory}: "
                "`objlibd init --library PATH` creates it"
            )
        return self.name

    def close(self) -> None:
        """Nothing held open: each call opens the store and closes it again."""


def _resource_name(name: str) -> str:
    """`localStores/<name>` for a bare name or a resource name (what `name` reports
    and what a caller may have recorded); ValueError for a name the store refuses."""
    bare = name.removeprefix(_PREFIX)
    if not _STORE_NAME.match(bare):
        raise ValueError(f"local store name {bare!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return _PREFIX + bare


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT/ROLLBACK (writers take the lock up front)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _check_metadata(metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    """Validate as Gemini would and normalise numbers to float (its numeric_value)."""
    if len(metadata) > MAX_METADATA:
        raise PermanentError(f"at most {MAX_METADATA} metadata entries allowed", code=400)
    clean: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise PermanentError(f"metadata key {key!r} must be a non-empty string", code=400)
        if isinstance(value, bool):
            raise PermanentError(f"metadata {key!r}: booleans are not supported", code=400)
        if isinstance(value, int | float):
            clean[key] = float(value)
        elif isinstance(value, str):
            clean[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            clean[key] = list(value)
        else:
            raise PermanentError(f"metadata {key!r}: expected str, number or list of str", code=400)
    return clean


def _searchable_metadata(metadata: dict[str, MetadataValue]) -> Iterator[str]:
    # Identity keys are opaque (ids, hashes); the rest (title, course, topic…)
    # makes pdf/docx findable by more than their file name.
    for key, value in metadata.items():
        if key in ("library_id", "sha256"):
            continue
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from value


def _slug(display_name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", display_name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "", ascii_name.lower())[:_SLUG_MAX]
    return slug or "document"


def _write(path: Path, data: bytes) -> None:
    """Create (or truncate) `path` holding `data`: raw calls, since `open()` adds a
    stat, a tty check and a buffer to each of a first sync's thousands of blobs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _query_terms(query: str) -> list[str]:
    """Words of the query, each as a quoted FTS5 string (never syntax)."""
    words = _TERM.findall(unicodedata.normalize("NFC", query))
    unique = list(dict.fromkeys(w.lower() for w in words))[:_MAX_QUERY_TERMS]
    return [f'"{w}"' for w in unique]


def _decoded_text(payload: bytes, mime_type: str) -> str:
    """Indexable text when the caller gave none: text types decoded, others nothing."""
    base = mime_type.split(";", 1)[0].strip().lower()
    return payload.decode("utf-8", errors="replace") if base in TEXT_MIME else ""
