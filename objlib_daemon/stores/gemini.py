"""The Gemini File Search backend: the Store and StoreAdmin protocols over the
google-genai SDK.

Every rule here comes from docs/gemini-file-search.md: pin v1beta, upload in one
call from a file object, poll operations (the caller keeps the deadline) and
look the document up before calling it lost, delete with force, and never
create a store implicitly. Every SDK call goes through a `Pacer` (pacing.py), so
retries, rate limiting, the circuit breaker and secret scrubbing happen in
one place.
"""

from __future__ import annotations

import contextlib
import shlex  # a suggested command must work when pasted: `store create 'My Library'`
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from google import genai
from google.genai import types

from objlib_daemon.stores import base
from objlib_daemon.stores.base import (
    AuthError,
    Citation,
    ImportRetryable,
    MetadataValue,
    OperationLost,
    PermanentError,
    RemoteDocument,
    RemoteSettings,
    SearchHit,
    SearchResult,
    StoreError,
    StoreInfo,
    StoreNotFound,
    StoreUnusable,
    TransientError,
    Upload,
)
from objlib_daemon.stores.pacing import (
    TRANSIENT_RPC,
    AdaptiveLimiter,
    CircuitBreaker,
    Pacer,
    scrub,
)

API_VERSION = "v1beta"  # SDK 3.x defaults to v1, which does not document File Search.
# Without a timeout the SDK waits forever on a silent connection; one 8 MiB
# chunk on a slow uplink (~1 Mbit/s) takes about 70 s, so allow well over that.
REQUEST_TIMEOUT_MS = 180_000
PAGE_SIZE = 20  # the server's maximum; the default is 10
MAX_DISPLAY_NAME = 512
MAX_METADATA_ENTRIES = 20
# From this poll of an unfinished operation on, `poll` also GETs its document:
# the service has left `done` unset on imports that succeeded (issue 12, F4).
# Not from the first: most imports finish within a couple of polls, and a
# document shows in reads only 0.25-1.5 s after its operation is done, so an
# early GET would mostly double the requests per upload for nothing. By the
# third poll (seconds in, at the callers' backoff) a missing `done` costs
# seconds, not the whole operation timeout.
DOCUMENT_CHECK_POLL = 3
PATH_KEY = "path"
STORE_PREFIX = "fileSearchStores/"

_STATES = {
    "STATE_ACTIVE": base.ACTIVE,
    "STATE_PENDING": base.PENDING,
    "STATE_FAILED": base.FAILED,
}


class DeleteNotConfirmed(TransientError):
    """A delete answered "already gone" but a GET still finds the document.

    Transient so the pacer retries the delete: a lost answer replayed as 404
    is confirmed by the GET's own 404; a document that is really still there
    must not be forgotten.
    """


# --- client and the stores themselves ------------------------------------------


def make_client(api_key: str, base_url: str = "") -> genai.Client:
    """A client pinned to v1beta, optionally at `base_url` (an emulator, a proxy).

    The key is always passed explicitly: the SDK on its own prefers
    GOOGLE_API_KEY over GEMINI_API_KEY and falls back to the environment for
    an empty key, which would bypass our resolution order.
    """
    key = (api_key or "").strip()
    if not key:
        raise AuthError(
            "no Gemini API key: set one with `objlibd auth set` or export GEMINI_API_KEY"
        )
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            api_version=API_VERSION,
            base_url=base_url or None,
            timeout=REQUEST_TIMEOUT_MS,
        ),
    )


def _gone(exc: StoreError) -> bool:
    """404, or a 403 that is not about credentials ("may not exist")."""
    return exc.code == 404 or (exc.code == 403 and not isinstance(exc, AuthError))


def _store_info(store: types.FileSearchStore) -> StoreInfo:
    # Zero counts are omitted from the JSON, so an absent count means 0.
    total = sum(
        c or 0
        for c in (
            store.active_documents_count,
            store.pending_documents_count,
            store.failed_documents_count,
        )
    )
    return StoreInfo(name=store.name or "", display_name=store.display_name or "", documents=total)


class GeminiAdmin:
    """The File Search stores an API key can see (the StoreAdmin protocol)."""

    backend = "gemini"

    def __init__(self, api_key: str, base_url: str = "") -> None:
        self.client = make_client(api_key, base_url)  # raises AuthError without a key
        # Retries with backoff, and the key scrubbed from messages; no rate
        # limiter or breaker: these are a user's few one-off calls.
        self.pacer = Pacer(secrets=(api_key.strip(),))

    def create(self, display_name: str) -> str:
        """Create a File Search store; return its server-assigned resource name.

        Not retried: a create whose answer was lost may have succeeded, and a
        blind retry would leave two stores with the same display name.
        """
        display_name = display_name.strip()
        if not display_name:
            raise PermanentError("a store needs a non-empty display name")
        if len(display_name) > MAX_DISPLAY_NAME:
            raise PermanentError(f"store display name is longer than {MAX_DISPLAY_NAME} characters")
        try:
            store = self.pacer.call(
                "file_search_stores.create",
                self.client.file_search_stores.create,
                config={"display_name": display_name},
                attempts=1,
            )
        except TransientError as exc:
            raise TransientError(
                f"creating store {display_name!r} failed ({exc}); it may have been created "
                "anyway: check `objlibd store list` before trying again",
                code=exc.code,
                retry_after=exc.retry_after,
            ) from None
        if not store.name:
            raise PermanentError("the server created a store but returned no name")
        return store.name

    def list(self) -> list[StoreInfo]:
        """Every File Search store the key can see."""
        stores: list[StoreInfo] = []
        token: str | None = None
        while True:
            config: dict[str, Any] = {"page_size": PAGE_SIZE}
            if token:
                config["page_token"] = token
            pager = self.pacer.call(
                "file_search_stores.list", self.client.file_search_stores.list, config=config
            )
            stores.extend(_store_info(s) for s in pager.page)
            token = pager.config.get("page_token")
            if not token:
                return stores

    def resolve(self, name: str) -> str:
        """Resource name for a configured store: a `fileSearchStores/...` name once
        the store answers to it, else the one store whose display name (or id)
        matches. Never creates.
        """
        wanted = name.strip()
        if not wanted:
            raise StoreNotFound(
                "no store configured: set [store] name, create one with "
                "`objlibd store create NAME` or run `objlibd init --create-store`"
            )
        if wanted.startswith(STORE_PREFIX):
            # Checked, not trusted: a mistyped or deleted store recorded at init
            # would otherwise turn every later upload into a per-file 404 failure.
            try:
                store = self.pacer.call(
                    "file_search_stores.get", self.client.file_search_stores.get, name=wanted
                )
            except PermanentError as exc:
                if _gone(exc):
                    raise StoreNotFound(
                        f"no File Search store {wanted!r} (or this key cannot see it): create "
                        "one with `objlibd store create NAME` or `objlibd init --create-store`",
                        code=exc.code,
                    ) from None
                raise
            return store.name or wanted
        stores = self.list()
        matches = [s for s in stores if s.display_name == wanted]
        if not matches:
            matches = [s for s in stores if s.name == STORE_PREFIX + wanted]
        if len(matches) == 1:
            return matches[0].name
        if len(matches) > 1:
            names = ", ".join(s.name for s in matches)
            # The user's to settle, not the service's: retrying cannot help.
            raise StoreUnusable(
                f"{len(matches)} stores are named {wanted!r} ({names}); set [store] name to "
                "the resource name of the one to use"
            )
        raise StoreNotFound(
            f"no File Search store named {wanted!r}: create it with "
            f"`objlibd store create {shlex.quote(wanted)}` or `objlibd init --create-store`"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# --- conversions ---------------------------------------------------------------


def _metadata_in(metadata: Mapping[str, MetadataValue]) -> list[types.CustomMetadata]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise PermanentError(
            f"{len(metadata)} metadata entries; the store allows at most {MAX_METADATA_ENTRIES}"
        )
    entries = []
    for key, value in metadata.items():
        if isinstance(value, bool):
            raise PermanentError(f"metadata {key!r}: booleans are not supported; use a string")
        if isinstance(value, str):
            entries.append(types.CustomMetadata(key=key, string_value=value))
        elif isinstance(value, int | float):
            entries.append(types.CustomMetadata(key=key, numeric_value=float(value)))
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            entries.append(
                types.CustomMetadata(
                    key=key, string_list_value=types.StringList(values=list(value))
                )
            )
        else:
            raise PermanentError(
                f"metadata {key!r}: expected a string, a number or a list of strings"
            )
    return entries


def _metadata_out(entries: list[Any] | None) -> dict[str, MetadataValue]:
    """CustomMetadata (or the grounding variant) → {key: str | float | list[str]}."""
    result: dict[str, MetadataValue] = {}
    for entry in entries or []:
        if not entry.key:
            continue
        if entry.string_value is not None:
            result[entry.key] = entry.string_value
        elif entry.numeric_value is not None:
            result[entry.key] = float(entry.numeric_value)
        elif entry.string_list_value is not None:
            result[entry.key] = list(entry.string_list_value.values or [])
    return result


def _state(value: Any) -> str:
    raw = getattr(value, "value", value)
    # Unknown/unspecified: treat as pending, never as active (upload-first).
    return _STATES.get(str(raw or ""), base.PENDING)


def _document(doc: types.Document) -> RemoteDocument:
    return RemoteDocument(
        name=doc.name or "",
        display_name=doc.display_name or "",
        metadata=_metadata_out(doc.custom_metadata),
        state=_state(doc.state),
        size=doc.size_bytes,
        create_time=doc.create_time.isoformat() if doc.create_time else None,
    )


def fit_display_name(name: str) -> str:
    """Strip (a leading space hung an import) and enforce the 512-character limit.

    Enrichment already gives a fitting name; this guards the API's own limit.
    """
    name = name.strip() or "untitled"
    return name if len(name) <= MAX_DISPLAY_NAME else name[: MAX_DISPLAY_NAME - 1] + "…"


def _matches(doc: RemoteDocument, match: Mapping[str, MetadataValue]) -> bool:
    for key, value in match.items():
        have = doc.metadata.get(key)
        if isinstance(value, int | float) and isinstance(have, float):
            if float(value) != have:
                return False
        elif have != value:
            return False
    return True


# --- the store -----------------------------------------------------------------


class GeminiStore:
    """One File Search store, addressed by its resource name."""

    backend = "gemini"
    instant = False  # imports index for seconds: the drain tracks them (sync/drain.py)

    def __init__(
        self,
        api_key: str,
        store_name: str,
        settings: RemoteSettings,
        *,
        pacer: Pacer | None = None,
    ) -> None:
        """`pacer` replaces the pacing `settings` describe (tests: no real sleeps)."""
        if not store_name.startswith(STORE_PREFIX):
            raise StoreNotFound(
                f"{store_name!r} is not a store resource name (fileSearchStores/...); "
                "resolve it with GeminiAdmin.resolve() first"
            )
        self.name = store_name.rstrip("/")
        self.model = settings.model
        key = (api_key or "").strip()
        # Held for the store's lifetime: a collected client closes its
        # connection and everything it returned stops working (rule 8).
        self.client = make_client(key, settings.base_url)
        if pacer is None:
            pacer = Pacer(
                limiter=AdaptiveLimiter(ceiling_per_minute=settings.max_requests_per_minute),
                breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown),
                attempts=settings.retry_attempts,
                base_delay=settings.retry_initial,
            )
        pacer.add_secret(key)
        self.pacer = pacer
        # Uploads are the long calls; `concurrency` bounds how many run at once.
        self._upload_slots = threading.BoundedSemaphore(max(1, settings.concurrency))
        # Polls so far of each unfinished operation (see `poll`); only a
        # counter, so losing it (a restart) costs a few extra polls, no more.
        self._polls: dict[str, int] = {}
        self._polls_lock = threading.Lock()

    # -- helpers --

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.pacer.call(what, fn, *args, **kwargs)

    def _scrub(self, text: str) -> str:
        return scrub(text, self.pacer.secrets)

    def document_name(self, name: str) -> str:
        """Full resource name for a document: bare ids seen in real responses get the store."""
        name = name.strip().strip("/")
        if name.startswith(STORE_PREFIX) and "/documents/" in name:
            return name
        return f"{self.name}/documents/{name.rsplit('/', 1)[-1]}"

    # -- Store protocol --

    def ensure(self) -> StoreInfo:
        """Check the configured store exists and the key can reach it; never creates."""
        try:
            store = self._call(
                "file_search_stores.get", self.client.file_search_stores.get, name=self.name
            )
        except PermanentError as exc:
            if _gone(exc):
                raise StoreNotFound(
                    f"File Search store {self.name} does not exist (or this key cannot see "
                    "it): create one with `objlibd store create NAME` or "
                    "`objlibd init --create-store`, and check [store] name",
                    code=exc.code,
                ) from None
            raise
        return _store_info(store)

    def upload(
        self,
        data: BinaryIO,
        *,
        display_name: str,
        metadata: dict[str, MetadataValue],
        mime_type: str,
        text: str | None = None,
    ) -> Upload:
        """Start the import of `data` (an open binary file object) as a new document.

        `text` is ignored: File Search extracts and indexes the content itself.

        Retried on transient errors from the start of `data` again. A failure
        after the last chunk reached the server can leave a document behind
        that a retry duplicates; the result then says `retried`, and the copy
        carries our identity metadata, so the caller's intent resolution (or
        the audit) recognises and removes it.
        """
        if not mime_type:
            raise PermanentError("a MIME type is required for uploads from a file object")
        name = fit_display_name(display_name)
        upload_config = types.UploadToFileSearchStoreConfig(
            display_name=name,
            mime_type=mime_type,
            custom_metadata=_metadata_in(metadata),
        )
        start = data.tell()
        attempts = 0

        def attempt() -> types.UploadToFileSearchStoreOperation:
            nonlocal attempts
            attempts += 1
            data.seek(start)
            return self.client.file_search_stores.upload_to_file_search_store(
                file_search_store_name=self.name,
                file=data,  # a file object: a path puts non-ASCII names in a header
                config=upload_config,
            )

        try:
            with self._upload_slots:
                op = self._call("upload_to_file_search_store", attempt)
        except PermanentError as exc:
            raise self._store_gone_or(exc) from None
        if not op.name:
            raise TransientError("the server accepted the upload but returned no operation name")
        document = None
        if self._finished(op):
            if op.error:
                raise self._operation_error(op.error, name)
            document = self._response_document(op)
        return Upload(
            operation=op.name,
            document=document,
            display_name=name,
            identity=base.identity_of(metadata),
            retried=attempts > 1,
        )

    def _store_gone_or(self, exc: PermanentError) -> PermanentError:
        """StoreNotFound if a 404 on a call addressed to the store means the store is gone.

        A 404 on an upload or a listing can also be about something else (an
        expired upload session, a proxy's route), and the message's wording is
        the server's to change; one `file_search_stores.get` decides, and only
        on a 404, which is rare. A failing check itself propagates.
        """
        if exc.code == 404 and not isinstance(exc, base.StoreUnusable):
            self.ensure()  # raises StoreNotFound when the store itself is gone
        return exc

    @staticmethod
    def _finished(op: types.UploadToFileSearchStoreOperation) -> bool:
        # A pending operation may omit `done` entirely (rule 3).
        return op.done is True or op.response is not None or op.error is not None

    def _response_document(self, op: types.UploadToFileSearchStoreOperation) -> str | None:
        """The full document name from a finished operation's response (bare ids normalised)."""
        if op.response is None or not op.response.document_name:
            return None
        parent = op.response.parent or self.name
        doc_name = op.response.document_name
        if "/" not in doc_name.strip("/") and parent.startswith(STORE_PREFIX):
            doc_name = f"{parent.rstrip('/')}/documents/{doc_name.strip('/')}"
        return self.document_name(doc_name)

    def _operation_error(self, error: Mapping[str, Any], display_name: str) -> StoreError:
        code = error.get("code")
        message = self._scrub(str(error.get("message") or "no message"))
        text = f"import of {display_name!r} failed on the server (code {code}): {message}"
        if isinstance(code, int) and code in TRANSIENT_RPC:
            return ImportRetryable(text, code=code)
        return PermanentError(text, code=code if isinstance(code, int) else None)

    def poll(self, upload: Upload) -> RemoteDocument | None:
        """One look at an import (see `Store.poll`): `operations.get`, and sometimes the document.

        A finished operation answers for itself. An unfinished one is also
        checked on its document from the `DOCUMENT_CHECK_POLL`th poll on,
        because the service has left `done` unset on imports that succeeded:
        the document, guessed by the operation's id, is returned once ACTIVE
        with our identity. An operation the server no longer knows (404) is
        resolved by the document alone: by the guessed name, then a listing.
        """
        what = upload.display_name or upload.operation
        if upload.document:
            return self._done_document(upload.document, upload)
        try:
            op = self._call(
                "operations.get",
                self.client.operations.get,
                types.UploadToFileSearchStoreOperation(name=upload.operation),
            )
        except PermanentError as exc:
            if exc.code != 404:
                raise
            # Operations are not kept forever; the document may still exist.
            self._forget(upload.operation)
            found = self._lookup(upload)
            if found is None:
                raise OperationLost(
                    f"the server no longer knows the import of {what!r} and no document of "
                    "it was found"
                ) from None
            return self._usable(found, what)
        if self._finished(op):
            self._forget(upload.operation)
            if op.error:
                raise self._operation_error(op.error, what)
            name = self._response_document(op)
            if name is not None:
                return self._done_document(name, upload)
            found = self._lookup(upload)
            if found is None:
                raise PermanentError(
                    f"operation {upload.operation} finished without naming a document"
                )
            return self._usable(found, what)
        if self._count_poll(upload.operation) < DOCUMENT_CHECK_POLL:
            return None
        return self._check_document(upload)

    def _check_document(self, upload: Upload) -> RemoteDocument | None:
        """The guessed document of an unfinished operation, if ACTIVE and ours."""
        found = self.get(self._guessed_document(upload.operation))
        if found is None or not _matches(found, upload.identity):
            return None
        document = self._usable(found, upload.display_name or upload.operation)
        if document is not None:
            self._forget(upload.operation)
        return document

    def _count_poll(self, operation: str) -> int:
        with self._polls_lock:
            count = self._polls.get(operation, 0) + 1
            self._polls[operation] = count
            return count

    def _forget(self, operation: str) -> None:
        with self._polls_lock:
            self._polls.pop(operation, None)

    def _usable(self, found: RemoteDocument, what: str) -> RemoteDocument | None:
        """An ACTIVE document is done; PENDING is still going (never "indexed"); FAILED fails."""
        if found.state == base.FAILED:
            raise PermanentError(f"import of {what!r} failed: document {found.name} is FAILED")
        return found if found.state == base.ACTIVE else None

    @staticmethod
    def _done_document(name: str, upload: Upload) -> RemoteDocument:
        # No documents.get here: a document appears in reads 0.25-1.5 s after
        # its operation is done, and k uploads should cost k polls, not 2k.
        # Numbers as the server will report them (floats), like list() and get().
        normalised = {
            k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in upload.identity.items()
        }
        return RemoteDocument(
            name=name, display_name=upload.display_name, metadata=normalised, state=base.ACTIVE
        )

    def _guessed_document(self, operation: str) -> str:
        # The document id has matched the operation id in observed responses.
        return self.document_name(operation.rsplit("/", 1)[-1])

    def _lookup(self, upload: Upload) -> RemoteDocument | None:
        """Find the document of an operation that cannot name it: guessed name, then identity."""
        found = self.get(self._guessed_document(upload.operation))
        if found is not None and _matches(found, upload.identity):
            return found
        if not upload.identity:
            return None  # nothing to recognise it by in a listing
        # Ascending create time: the last match is the newest upload.
        candidates = [doc for doc in self.list() if _matches(doc, upload.identity)]
        return candidates[-1] if candidates else None

    def delete(self, document: str) -> None:
        """Delete a document with force (it has chunks); already gone is success.

        "Already gone" is confirmed, not trusted: the API documents a 404 (or
        a 403 "may not exist") on delete as gone, but a document that is in
        fact still there would then be forgotten while it lives on as a
        duplicate (docs/design.md invariant 5). So such an answer is followed by a
        GET, and only a 404 there means gone. A document still there makes the
        attempt transient: the pacer retries delete and check together with
        its backoff, and after the last attempt the error reaches the caller,
        which keeps the document recorded as an orphan for a later retry.
        """
        self._call("documents.delete", self._delete_confirmed, self.document_name(document))

    def _delete_confirmed(self, name: str) -> None:
        """One attempt for `delete`: the DELETE, and on a "gone" answer the GET that checks it.

        Both raw SDK calls run inside one pacer attempt (not nested `_call`s:
        a nested call would find the breaker's half-open trial taken by this
        very attempt and fail fast), so the pair is retried as a unit; the
        GET still takes a rate-limiter token of its own.
        """
        try:
            self.client.file_search_stores.documents.delete(name=name, config={"force": True})
            return
        except Exception as exc:  # classified as every SDK failure is
            answer = self.pacer.classify(exc)
        if answer.transient or not _gone(answer):
            raise answer
        if self.pacer.limiter is not None:
            self.pacer.limiter.acquire()
        try:
            self.client.file_search_stores.documents.get(name=name)
        except Exception as exc:
            check = self.pacer.classify(exc)
        else:
            raise DeleteNotConfirmed(
                f"delete of {name} answered {answer.code} (gone) but the document is still "
                "there; deleting it again"
            )
        if check.code == 404 and not check.transient:
            return
        if check.transient or isinstance(check, AuthError):
            raise check
        raise PermanentError(
            f"delete of {name} answered {answer.code} (gone), and the check could not "
            f"confirm it: {check}",
            code=check.code,
        )

    def list(self) -> Iterator[RemoteDocument]:
        """Every document, 20 per request, each page retried on its own.

        Pages are fetched one call at a time (not by iterating the SDK pager)
        so a transient failure repeats one page, not the whole listing.
        """
        token: str | None = None
        while True:
            config: dict[str, Any] = {"page_size": PAGE_SIZE}
            if token:
                config["page_token"] = token
            try:
                pager = self._call(
                    "documents.list",
                    self.client.file_search_stores.documents.list,
                    parent=self.name,
                    config=config,
                )
            except PermanentError as exc:
                raise self._store_gone_or(exc) from None
            for doc in pager.page:
                yield _document(doc)
            token = pager.config.get("page_token")
            if not token:
                return

    def get(self, document: str) -> RemoteDocument | None:
        try:
            doc = self._call(
                "documents.get",
                self.client.file_search_stores.documents.get,
                name=self.document_name(document),
            )
        except PermanentError as exc:
            if _gone(exc):
                return None
            raise
        return _document(doc)

    def search(self, query: str, *, limit: int = 10, where: str | None = None) -> SearchResult:
        """Ask the model with the File Search tool; hits come from the grounding chunks.

        `where` goes to the tool's `metadata_filter` (AIP-160), evaluated by the server."""
        response = self._call(
            "models.generate_content",
            self.client.models.generate_content,
            model=self.model,
            contents=query,
            config=types.GenerateContentConfig(
                tools=[
                    types.Tool(
                        file_search=types.FileSearch(
                            file_search_store_names=[self.name],
                            top_k=limit,
                            metadata_filter=where or None,
                        )
                    )
                ]
            ),
        )
        answer = _answer_text(response)
        hits, chunk_hit = self._hits(response, limit)
        return SearchResult(answer, hits, _citations(response, answer, chunk_hit))

    def _hits(
        self, response: types.GenerateContentResponse, limit: int
    ) -> tuple[list[SearchHit], dict[int, int]]:
        """The hits, and which hit each grounding chunk became (for citations)."""
        candidates = response.candidates or []
        grounding = candidates[0].grounding_metadata if candidates else None
        chunk_hit: dict[int, int] = {}
        if grounding is None:
            return [], chunk_hit
        scores: dict[int, float] = {}
        for support in grounding.grounding_supports or []:
            for index, score in zip(
                support.grounding_chunk_indices or [],
                support.confidence_scores or [],
                strict=False,
            ):
                scores[index] = max(score, scores.get(index, 0.0))
        hits: list[SearchHit] = []
        for index, chunk in enumerate(grounding.grounding_chunks or []):
            context = chunk.retrieved_context
            if context is None:
                continue
            chunk_hit[index] = len(hits)
            metadata = _metadata_out(context.custom_metadata)
            path = metadata.get(PATH_KEY)
            hits.append(
                SearchHit(
                    document=context.document_name or context.uri or "",
                    display_name=context.title or "",
                    path=path if isinstance(path, str) else None,
                    snippet=(context.text or "").strip(),
                    # The service's confidence where it gives one (newer models
                    # often do not); else the retrieval rank, 1, 1/2, 1/3, …
                    score=scores.get(index, 1.0 / (len(hits) + 1)),
                    metadata=metadata,
                )
            )
            if len(hits) >= limit:
                break
        return hits, chunk_hit

    def health(self) -> dict[str, Any]:
        """Breaker and pacing state for `objlibd status` (no secrets, no network)."""
        breaker = self.pacer.breaker
        limiter = self.pacer.limiter
        return {
            "backend": self.backend,
            "store": self.name,
            "breaker": breaker.snapshot() if breaker is not None else {"state": "closed"},
            "pacing": limiter.snapshot() if limiter is not None else None,
        }

    def close(self) -> None:
        # Closing twice or a half-built client: nothing left to release.
        with contextlib.suppress(Exception):
            self.client.close()


def _citations(
    response: types.GenerateContentResponse, answer: str | None, chunk_hit: dict[int, int]
) -> tuple[Citation, ...]:
    """Where each grounded claim of the answer ends, and the hits it rests on.

    The service gives a segment's end as a UTF-8 byte offset; the answer is
    shown as text, so it becomes a character offset here.
    """
    candidates = response.candidates or []
    grounding = candidates[0].grounding_metadata if candidates else None
    if grounding is None or not answer:
        return ()
    encoded = answer.encode("utf-8")
    found: list[Citation] = []
    for support in grounding.grounding_supports or []:
        segment = support.segment
        hits = tuple(
            sorted({chunk_hit[i] for i in support.grounding_chunk_indices or [] if i in chunk_hit})
        )
        if segment is None or segment.end_index is None or not hits:
            continue
        end = len(encoded[: segment.end_index].decode("utf-8", errors="ignore"))
        found.append(Citation(end, hits))
    return tuple(found)


def _answer_text(response: types.GenerateContentResponse) -> str | None:
    """Concatenated text parts (not `response.text`, which warns on non-text parts)."""
    candidates = response.candidates or []
    content = candidates[0].content if candidates else None
    if content is None:
        return None
    texts = [p.text for p in content.parts or [] if p.text and not p.thought]
    return "".join(texts) or None
