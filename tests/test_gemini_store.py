"""GeminiStore against the emulator, through the real google-genai SDK.

No real sleeping: the store's sleep advances the emulator's clock and is
recorded, so backoff and `retryDelay` handling are asserted exactly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace

import httpx2
import pytest
from emulator import UNREGISTERED_CALLER_MESSAGE, Fault, GeminiEmulator
from google.genai import errors as genai_errors
from google.genai import types

from objlib_daemon.config import StoreConfig
from objlib_daemon.connect import remote_settings
from objlib_daemon.stores import base
from objlib_daemon.stores.base import (
    AuthError,
    CircuitOpen,
    OperationLost,
    PermanentError,
    QuotaExhausted,
    StoreError,
    StoreNotFound,
    TransientError,
)
from objlib_daemon.stores.gemini import (
    DOCUMENT_CHECK_POLL,
    GeminiAdmin,
    GeminiStore,
    fit_display_name,
    make_client,
)
from objlib_daemon.stores.pacing import (
    STORAGE_RETRY_AFTER,
    AdaptiveLimiter,
    CircuitBreaker,
    Pacer,
    classify,
    scrub,
)

KEY = "AIzaTEST-objlibd-secret-key-0123456789"
MIB = 1024 * 1024


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps(list):
    """Records each sleep and moves the emulator's clock instead of waiting."""

    def __init__(self, emu: GeminiEmulator) -> None:
        super().__init__()
        self.emu = emu

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.emu.advance(seconds)


@pytest.fixture
def emu() -> Iterator[GeminiEmulator]:
    server = GeminiEmulator(api_key=KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cfg(emu: GeminiEmulator) -> StoreConfig:
    return StoreConfig(backend="gemini", base_url=emu.url, operation_timeout=60.0)


def make_store(
    emu: GeminiEmulator,
    cfg: StoreConfig,
    *,
    key: str = KEY,
    attempts: int = 4,
    breaker: CircuitBreaker | None = None,
    store_name: str | None = None,
) -> tuple[GeminiStore, Sleeps]:
    sleeps = Sleeps(emu)
    name = store_name or emu.create_store("library")
    pacer = Pacer(attempts=attempts, breaker=breaker, sleep=sleeps, rng=lambda: 0.5)
    store = GeminiStore(key, name, remote_settings(cfg), pacer=pacer)
    return store, sleeps


def indexed(emu: GeminiEmulator, store: GeminiStore, up: base.Upload) -> base.RemoteDocument:
    """The import's document once `poll` says it is done (polled each emulator second)."""
    return polls_until_done(store, up, emu, step=1.0)[0]


def upload(store: GeminiStore, data: bytes = b"some text " * 200, **kw) -> base.Upload:
    kw.setdefault("display_name", "notes.md")
    kw.setdefault("metadata", {"path": f"a/{kw['display_name']}", "sha256": "h1"})
    kw.setdefault("mime_type", "text/markdown")
    return store.upload(io.BytesIO(data), **kw)


# --- the happy path and what goes over the wire -----------------------------------


def test_every_request_uses_v1beta_and_carries_the_key(emu, cfg):
    store, _ = make_store(emu, cfg)
    store.ensure()
    doc = indexed(emu, store, upload(store))
    assert store.get(doc.name) is not None
    list(store.list())
    store.search("text")
    store.delete(doc.name)
    records = emu.requests
    assert len(records) >= 7
    assert {r.api_version for r in records} == {"v1beta"}
    for r in records:
        if r.phase not in ("chunk", "finalize"):  # byte requests carry no key
            assert r.headers.get("x-goog-api-key") == KEY


def test_non_ascii_and_long_display_names_upload(emu, cfg):
    store, _ = make_store(emu, cfg)
    names = ["Über die Ästhetik – 日本語 ñ.md", ("é" + "x" * 245 + ".txt")]
    assert len(names[1]) == 250
    for name in names:
        indexed(emu, store, upload(store, display_name=name, mime_type="text/plain"))
    assert sorted(d["displayName"] for d in emu.documents()) == sorted(names)


def test_display_names_are_stripped_and_cut_to_the_limit():
    assert fit_display_name("  leading space.md ") == "leading space.md"
    assert fit_display_name("two  spaces.txt") == "two  spaces.txt"  # kept as the file has it
    cut = fit_display_name("a" * 600 + ".pdf")
    assert len(cut) == 512 and cut.startswith("aaa")


def test_large_file_uploads_in_8mib_chunks(emu, cfg):
    store, _ = make_store(emu, cfg)
    data = bytes(range(256)) * (17 * MIB // 256)
    doc = indexed(
        emu, store, upload(store, data=data, display_name="big.pdf", mime_type="application/pdf")
    )
    byte_requests = [r for r in emu.find_requests("POST", r"^/upload/") if r.phase != "start"]
    assert [r.phase for r in byte_requests] == ["chunk", "chunk", "finalize"]
    assert [r.body_size for r in byte_requests] == [8 * MIB, 8 * MIB, MIB]
    assert emu.content(doc.name) == data


def test_metadata_is_sent_as_string_number_and_list(emu, cfg):
    store, _ = make_store(emu, cfg)
    meta = {"path": "Ö/ä.md", "sha256": "abc", "year": 1987, "weight": 2.5, "tags": ["x", "ÿ"]}
    doc = indexed(emu, store, upload(store, display_name="ä.md", metadata=meta))
    start = emu.find_requests("POST", r"uploadToFileSearchStore$", phase="start")[0]
    sent = {m["key"]: m for m in start.json["customMetadata"]}
    assert set(sent) == set(meta)
    assert emu.metadata(emu.documents()[0]) == meta
    assert doc.metadata == {"path": "Ö/ä.md", "sha256": "abc"}  # poll() reports the identity
    got = store.get(doc.name)
    assert got is not None and got.metadata == {**meta, "year": 1987.0}  # the server: all
    assert isinstance(got.metadata["year"], float)


def test_invalid_metadata_is_refused_before_sending(emu, cfg):
    store, _ = make_store(emu, cfg)
    with pytest.raises(PermanentError):
        upload(store, metadata={f"k{i}": "v" for i in range(21)})
    with pytest.raises(PermanentError):
        upload(store, metadata={"flag": True})
    assert emu.requests == []


# --- waiting ---------------------------------------------------------------------


def test_poll_answers_at_once_when_the_upload_finished_in_its_answer(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    up = upload(store)
    assert up.document is not None
    emu.clear_log()
    doc = store.poll(up)
    assert doc is not None and doc.name == up.document
    assert emu.requests == [] and sleeps == []


def test_poll_is_one_look_and_never_sleeps(emu, cfg):
    emu.indexing_delay = 30.0
    store, sleeps = make_store(emu, cfg)
    up = upload(store)
    assert (up.display_name, up.identity) == ("notes.md", {"path": "a/notes.md", "sha256": "h1"})
    emu.clear_log()
    assert store.poll(up) is None
    assert [(r.method, "/operations/" in r.path) for r in emu.requests] == [("GET", True)]
    emu.advance(30.0)
    doc = store.poll(up)
    assert doc is not None and doc.state == base.ACTIVE
    assert doc.name == emu.documents()[0]["name"]
    assert sleeps == []


def polls_until_done(store: GeminiStore, up: base.Upload, emu: GeminiEmulator, step: float):
    """Poll every `step` seconds of emulator time; (document, emulator time it came back)."""
    for _ in range(100):
        doc = store.poll(up)
        if doc is not None:
            return doc, emu.now()
        emu.advance(step)
    raise AssertionError("poll never returned the document")


def test_never_done_operation_returns_the_document_soon_after_it_is_active(emu, cfg):
    """F4: `done` never set. The document is checked from the DOCUMENT_CHECK_POLL-th poll
    on, so the import completes within a poll or two of its document turning ACTIVE."""
    emu.add_fault(Fault(kind="never_done", times=None))
    emu.indexing_delay = 5.0
    store, _ = make_store(emu, cfg)
    up = upload(store)
    active_at = emu.now() + 5.0
    doc, returned_at = polls_until_done(store, up, emu, step=1.0)
    assert doc.state == base.ACTIVE and doc.name == emu.documents()[0]["name"]
    assert active_at <= returned_at <= active_at + 1.0
    gets = emu.find_requests("GET", r"/documents/")
    assert len(gets) == len(emu.find_requests("GET", r"/operations/")) - (DOCUMENT_CHECK_POLL - 1)


def test_never_done_costs_a_few_polls_not_the_timeout(emu, cfg):
    emu.add_fault(Fault(kind="never_done", times=None))
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    assert doc.name == emu.documents()[0]["name"]
    assert len(emu.find_requests("GET", r"/operations/")) == DOCUMENT_CHECK_POLL


def test_a_document_stuck_pending_is_never_returned(emu, cfg):
    """F5: an import whose document stays PENDING (the leading-space hang) is not done."""
    emu.add_fault(Fault(kind="never_done", times=None))
    store, _ = make_store(emu, cfg)
    up = upload(store)
    emu.set_state(emu.documents()[0]["name"], "STATE_PENDING")
    for _ in range(10):
        assert store.poll(up) is None
        emu.advance(5.0)


def test_the_emulators_leading_space_hang_never_completes(emu, cfg):
    """The emulator's own hang (a display name with leading whitespace, which our
    upload strips, sent here through the SDK directly) is pending for good to poll."""
    store, _ = make_store(emu, cfg)
    identity = {"path": "a/notes.md", "sha256": "h1"}
    op = store.client.file_search_stores.upload_to_file_search_store(
        file_search_store_name=store.name,
        file=io.BytesIO(b"some text " * 200),
        config=types.UploadToFileSearchStoreConfig(
            display_name=" notes.md",
            mime_type="text/markdown",
            custom_metadata=[
                types.CustomMetadata(key=k, string_value=v) for k, v in identity.items()
            ],
        ),
    )
    hung = base.Upload(operation=op.name, display_name=" notes.md", identity=identity)
    assert [store.poll(hung) for _ in range(5)] == [None] * 5
    assert emu.documents()[0]["state"] == "STATE_PENDING"


def test_a_failed_document_behind_a_silent_operation_is_permanent(emu, cfg):
    emu.add_fault(Fault(kind="never_done", times=None))
    store, _ = make_store(emu, cfg)
    up = upload(store)
    emu.set_state(emu.documents()[0]["name"], "STATE_FAILED")
    with pytest.raises(PermanentError, match="FAILED"):
        indexed(emu, store, up)


def test_a_document_with_another_identity_is_not_taken_for_the_upload(emu, cfg):
    emu.add_fault(Fault(kind="never_done", times=None))
    store, _ = make_store(emu, cfg)
    up = upload(store)
    other = base.Upload(operation=up.operation, display_name="x", identity={"sha256": "zzz"})
    assert [store.poll(other) for _ in range(4)] == [None] * 4
    assert store.poll(up) is not None


def test_poll_after_a_restart_needs_no_memory(emu, cfg):
    """An Upload rebuilt from stored fields is polled by a new store object."""
    emu.add_fault(Fault(kind="never_done", times=None))
    first, _ = make_store(emu, cfg)
    up = upload(first)
    assert first.poll(up) is None
    second, _ = make_store(emu, cfg, store_name=first.name)
    rebuilt = base.Upload(
        operation=up.operation,
        document=up.document,
        display_name=up.display_name,
        identity=dict(up.identity),
    )
    found = [second.poll(rebuilt) for _ in range(DOCUMENT_CHECK_POLL)]
    assert found[:-1] == [None] * (DOCUMENT_CHECK_POLL - 1)
    assert found[-1] is not None and found[-1].name == emu.documents()[0]["name"]


def expire_operations(emu: GeminiEmulator) -> None:
    emu.add_fault(Fault(method="GET", path="/operations/", kind="not_found", times=None))


def test_an_expired_operation_is_resolved_by_the_guessed_document(emu, cfg):
    emu.indexing_delay = 10.0
    store, _ = make_store(emu, cfg)
    up = upload(store)
    expire_operations(emu)
    assert store.poll(up) is None  # found, still PENDING
    emu.advance(10.0)
    doc = store.poll(up)
    assert doc is not None and doc.name == emu.documents()[0]["name"]


def test_an_expired_operation_is_resolved_by_an_identity_listing(emu, cfg):
    store, _ = make_store(emu, cfg)
    up = upload(store, metadata={"path": "a/notes.md", "sha256": "h1", "lang": "en"})
    # The server indexed it under another id (simulated by swapping the document).
    emu.remove_document(emu.documents()[0]["name"])
    emu.add_document(store.name, "other.md", {"path": "a/notes.md", "sha256": "zzz"}, b"x")
    twin = emu.add_document(store.name, "notes.md", {"path": "a/notes.md", "sha256": "h1"}, b"y")
    expire_operations(emu)
    lost = base.Upload(operation=up.operation, display_name="notes.md", identity=up.identity)
    doc = store.poll(lost)
    assert doc is not None and doc.name == twin


def test_an_expired_operation_without_a_document_is_lost(emu, cfg):
    emu.indexing_delay = 10.0
    store, _ = make_store(emu, cfg)
    up = upload(store)
    emu.remove_document(emu.documents()[0]["name"])
    expire_operations(emu)
    with pytest.raises(OperationLost) as info:
        store.poll(up)
    assert isinstance(info.value, TransientError)


def test_bare_document_ids_are_normalised(emu, cfg):
    emu.add_fault(Fault(kind="bare_ids", times=None))
    store, _ = make_store(emu, cfg)
    up = upload(store)  # done in the finalize answer, with bare ids
    full = emu.documents()[0]["name"]
    assert up.document == full
    emu.indexing_delay = 5.0
    doc = indexed(emu, store, upload(store, display_name="two.md"))  # done later, via polling
    assert doc.name.startswith(store.name + "/documents/")
    assert emu.document(doc.name) is not None
    assert store.document_name("abc-123") == f"{store.name}/documents/abc-123"


def test_an_operation_failing_with_invalid_argument_is_permanent(emu, cfg):
    emu.indexing_delay = 3.0
    emu.add_fault(Fault(kind="operation_error", message="Unsupported file.", rpc_code=3))
    store, _ = make_store(emu, cfg)
    with pytest.raises(PermanentError, match="Unsupported file"):
        indexed(emu, store, upload(store))


@pytest.mark.parametrize("code", [13, 14])
def test_an_operation_failing_with_a_retryable_code_is_transient(emu, cfg, code):
    """F3: INTERNAL and UNAVAILABLE are documented as retryable; the caller backs off."""
    emu.indexing_delay = 3.0
    emu.add_fault(Fault(kind="operation_error", message="Failed to count tokens.", rpc_code=code))
    store, _ = make_store(emu, cfg)
    up = upload(store)
    emu.advance(3.0)
    with pytest.raises(TransientError, match="Failed to count tokens") as info:
        store.poll(up)
    assert info.value.code == code


# --- answers a proxy made up (F2) and a store that vanished (F6) ------------------------


def test_an_html_200_on_finalize_after_the_upload_landed_is_transient(emu, cfg):
    """The page replaced the real answer: the upload is retried, marked `retried` so
    the caller looks for the first copy, and nothing is a permanent failure."""
    emu.add_fault(Fault(phase="finalize", kind="html_200"))
    store, _ = make_store(emu, cfg)
    up = upload(store)
    assert up.retried
    assert len(emu.documents()) == 2  # the landed copy and the retry
    doc = indexed(emu, store, up)
    assert doc.name == emu.documents()[-1]["name"]
    emu.add_fault(Fault(phase="finalize", kind="html_200"))
    with pytest.raises(TransientError, match="not the API's JSON"):
        make_store(emu, cfg, attempts=1, store_name=store.name)[0].upload(
            io.BytesIO(b"x" * 2000), display_name="b.md", metadata={}, mime_type="text/plain"
        )


def test_an_html_200_on_operations_get_is_transient_and_polling_recovers(emu, cfg):
    emu.indexing_delay = 5.0
    store, _ = make_store(emu, cfg, attempts=1)
    up = upload(store)
    emu.add_fault(Fault(method="GET", path="/operations/", kind="html_200", times=2))
    for _ in range(2):
        with pytest.raises(TransientError, match="proxy"):
            store.poll(up)
    emu.advance(5.0)
    assert store.poll(up) is not None


def test_an_html_200_anywhere_is_retried_by_the_pacer(emu, cfg):
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(method="GET", kind="html_200", times=2))
    assert store.get(doc.name) is not None
    emu.add_fault(Fault(phase="start", kind="html_200"))
    assert indexed(emu, store, upload(store, display_name="two.md")).state == base.ACTIVE


def test_a_store_deleted_on_the_server_is_a_store_error_everywhere(emu, cfg):
    """F6: not a per-file failure: upload, list and a lost operation's poll all say
    StoreNotFound, with the fix in the message."""
    emu.indexing_delay = 5.0
    store, _ = make_store(emu, cfg)
    up = upload(store)
    emu.clear_log()
    client = make_client(KEY, cfg.base_url)
    client.file_search_stores.delete(name=store.name, config={"force": True})
    with pytest.raises(StoreNotFound, match="objlibd store create"):
        upload(store)
    with pytest.raises(StoreNotFound):
        list(store.list())
    with pytest.raises(StoreNotFound):
        store.poll(up)
    assert store.get(up.operation.replace("/upload/operations/", "/documents/")) is None


def test_a_404_on_an_upload_session_is_not_taken_for_a_missing_store(emu, cfg):
    """The store check decides: the store is there, so the 404 stays the file's error."""
    emu.add_fault(Fault(phase="finalize", kind="not_found", times=None))
    store, _ = make_store(emu, cfg, attempts=1)
    with pytest.raises(PermanentError) as info:
        upload(store)
    assert type(info.value) is PermanentError and info.value.code == 404
    assert emu.find_requests("GET", r"^/v1beta/fileSearchStores/[^/]+$")


# --- delete, get, list, ensure --------------------------------------------------------


def test_delete_uses_force_and_gone_is_success(emu, cfg):
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    store.delete(doc.name)
    assert emu.documents() == []
    store.delete(doc.name)  # 404: already gone
    emu.add_fault(Fault(method="DELETE", status=403, message="Permission denied or may not exist"))
    store.delete(doc.name)  # 403 "may not exist": gone too
    deletes = emu.find_requests("DELETE")
    assert [r.status for r in deletes] == [200, 404, 403]
    assert all(r.query.get("force") == "True" for r in deletes)


def test_a_404_on_delete_is_believed_only_once_a_get_says_404_too(emu, cfg):
    """The delete happened and its answer was lost (replayed as 404): one GET
    confirms the document is gone, and nothing is deleted twice."""
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(kind="delete_then_404"))
    store.delete(doc.name)
    assert emu.document(doc.name) is None
    assert [r.status for r in emu.find_requests("DELETE")] == [404]
    assert [r.status for r in emu.find_requests("GET", "/documents/")] == [404]


def test_a_spurious_404_on_delete_is_checked_and_the_delete_retried(emu, cfg):
    """A DELETE answered 404 while the document stays: trusted blindly, the
    document would be forgotten as gone and live on as a duplicate. The GET
    finds it, and the pacer retries the delete with its backoff."""
    store, sleeps = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(kind="spurious_404_delete", times=2))
    store.delete(doc.name)
    assert emu.document(doc.name) is None
    assert [r.status for r in emu.find_requests("DELETE")] == [404, 404, 200]
    assert [r.status for r in emu.find_requests("GET", "/documents/")] == [200, 200]
    assert sleeps == [0.75, 1.5]  # the pacer's backoff (base 1 s, jitter 0.5), not a hot loop


def test_a_delete_that_keeps_answering_404_on_a_live_document_is_an_error(emu, cfg):
    """Never confirmed: after the pacer's last attempt the caller gets a transient
    error (it keeps the document recorded as an orphan), never "gone"."""
    store, _ = make_store(emu, cfg, attempts=3)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(kind="spurious_404_delete", times=None))
    with pytest.raises(TransientError, match="still there"):
        store.delete(doc.name)
    assert emu.document(doc.name) is not None
    assert len(emu.find_requests("DELETE")) == 3


def test_a_gone_answer_whose_check_is_refused_is_not_success(emu, cfg):
    """Only a 404 on the GET means gone: a 403 there leaves the delete unconfirmed."""
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(method="DELETE", status=403, message="Permission denied or may not exist"))
    emu.add_fault(Fault(method="GET", path="/documents/", status=403, message="Permission denied"))
    with pytest.raises(PermanentError, match="could not confirm"):
        store.delete(doc.name)


def test_delete_with_a_missing_key_is_not_success(emu, cfg):
    store, _ = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(method="DELETE", status=403, message=UNREGISTERED_CALLER_MESSAGE))
    with pytest.raises(AuthError):
        store.delete(doc.name)
    assert emu.document(doc.name) is not None


def test_get_missing_is_none(emu, cfg):
    store, _ = make_store(emu, cfg)
    assert store.get(f"{store.name}/documents/nope-123") is None
    assert store.get("nope-123") is None


def test_list_pages_twenty_at_a_time(emu, cfg):
    store, _ = make_store(emu, cfg)
    for i in range(45):
        state = ("STATE_ACTIVE", "STATE_PENDING", "STATE_FAILED")[i % 3]
        emu.add_document(store.name, f"d{i}.md", {"path": f"d{i}.md", "n": i}, b"x", state)
    emu.clear_log()
    docs = list(store.list())
    assert [d.display_name for d in docs] == [f"d{i}.md" for i in range(45)]
    assert [d.state for d in docs[:3]] == [base.ACTIVE, base.PENDING, base.FAILED]
    assert docs[7].metadata == {"path": "d7.md", "n": 7.0}
    pages = emu.find_requests("GET", r"/documents$")
    assert len(pages) == 3
    assert all(r.query["pageSize"] == "20" for r in pages)


def test_list_retries_one_page_not_the_whole_listing(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    for i in range(25):
        emu.add_document(store.name, f"d{i}.md", {}, b"x")
    emu.clear_log()
    docs = store.list()
    first = [next(docs) for _ in range(20)]
    emu.add_fault(Fault(method="GET", path=r"/documents$", status=503))
    rest = list(docs)
    assert len(first) + len(rest) == 25
    assert [r.status for r in emu.find_requests("GET", r"/documents$")] == [200, 503, 200]
    assert len(sleeps) == 1


def test_ensure_reports_the_store_and_never_creates_one(emu, cfg):
    store, _ = make_store(emu, cfg)
    indexed(emu, store, upload(store))
    info = store.ensure()
    assert info.name == store.name and info.display_name == "library" and info.documents == 1
    missing, _ = make_store(emu, cfg, store_name="fileSearchStores/gone-000000000000")
    with pytest.raises(StoreNotFound, match="objlibd store create"):
        missing.ensure()
    assert len(emu.stores()) == 1


def test_the_admin_creates_resolves_and_lists_stores(emu, cfg):
    admin = GeminiAdmin(KEY, cfg.base_url)
    name = admin.create("Physics Library")
    assert name.startswith("fileSearchStores/")
    assert admin.resolve("Physics Library") == name
    assert admin.resolve(name) == name
    assert admin.resolve(name.split("/", 1)[1]) == name
    assert [s.display_name for s in admin.list()] == ["Physics Library"]
    with pytest.raises(StoreNotFound) as info:
        admin.resolve("Nope")
    assert "objlibd store create" in str(info.value)
    assert "objlibd init --create-store" in str(info.value)
    with pytest.raises(StoreNotFound, match="cannot see it"):
        admin.resolve("fileSearchStores/gone-000000000000")
    admin.create("Physics Library")
    with pytest.raises(PermanentError, match="2 stores"):
        admin.resolve("Physics Library")


def test_store_listing_pages(emu, cfg):
    for i in range(23):
        emu.create_store(f"s{i}")
    assert len(GeminiAdmin(KEY, cfg.base_url).list()) == 23


def test_create_store_is_not_retried(emu, cfg):
    admin = GeminiAdmin(KEY, cfg.base_url)
    emu.add_fault(Fault(method="POST", path=r"/fileSearchStores$", status=503))
    with pytest.raises(TransientError, match="store list"):
        admin.create("x")
    assert len(emu.find_requests("POST", r"/fileSearchStores$")) == 1


# --- retries and classification -------------------------------------------------------


def test_429_with_retry_info_waits_the_advertised_delay(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    emu.add_fault(Fault(phase="start", kind="retry_info", retry_delay=2.5))
    indexed(emu, store, upload(store))
    assert sleeps == [2.5]
    starts = emu.find_requests("POST", phase="start")
    assert [r.status for r in starts] == [429, 200]
    assert len(emu.documents()) == 1


def test_503_then_success(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    doc = indexed(emu, store, upload(store))
    emu.add_fault(Fault(method="GET", path=r"/documents/", status=503, times=2))
    assert store.get(doc.name) is not None
    assert sleeps == [0.75, 1.5]  # 1 s then 2 s ceilings: half fixed + rng 0.5 of the rest


def test_503_at_finalize_retries_the_whole_upload(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    emu.add_fault(Fault(phase="finalize", status=503))
    doc = indexed(emu, store, upload(store))
    assert len(sleeps) == 1
    assert [d["name"] for d in emu.documents()] == [doc.name]


def test_connection_reset_is_retried(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    emu.add_fault(Fault(phase="start", kind="reset"))
    doc = indexed(emu, store, upload(store))
    assert emu.document(doc.name) is not None
    assert len(sleeps) == 1
    assert [r.status for r in emu.find_requests("POST", phase="start")] == [None, 200]


def test_a_400_for_one_document_is_permanent_and_not_retried(emu, cfg):
    store, sleeps = make_store(emu, cfg)
    emu.add_fault(
        Fault(match_display_name="bad.xlsx", status=400, message="Unsupported file type.")
    )
    with pytest.raises(PermanentError, match="Unsupported") as info:
        upload(store, display_name="bad.xlsx")
    assert not isinstance(info.value, TransientError)
    assert sleeps == []
    assert len(emu.find_requests("POST", phase="start")) == 1
    indexed(emu, store, upload(store, display_name="good.md"))  # the next document is fine


def test_transient_errors_give_up_after_the_attempts(emu, cfg):
    store, sleeps = make_store(emu, cfg, attempts=3)
    emu.add_fault(Fault(method="GET", path=r"/documents$", status=500, times=None))
    with pytest.raises(TransientError):
        list(store.list())
    assert len(sleeps) == 2


def test_wrong_key_is_an_auth_error_without_the_key(emu, cfg):
    wrong = "AIzaWRONG-key-9876543210-abcdefghijkl"
    store, sleeps = make_store(emu, cfg, key=wrong)
    with pytest.raises(AuthError) as info:
        store.ensure()
    text = str(info.value)
    assert "objlibd auth set" in text and "GEMINI_API_KEY" in text
    assert wrong not in text and "AIza" not in text
    assert sleeps == []
    assert len(emu.requests) == 1


def test_missing_key_is_an_auth_error(emu, cfg):
    with pytest.raises(AuthError, match="objlibd auth set"):
        make_client("  ", cfg.base_url)
    with pytest.raises(AuthError, match="objlibd auth set"):
        GeminiStore("", "fileSearchStores/x", remote_settings(cfg))
    # What the server says to a request without a key (the SDK cannot send one).
    store, sleeps = make_store(emu, cfg)
    emu.add_fault(Fault(status=403, message=UNREGISTERED_CALLER_MESSAGE))
    with pytest.raises(AuthError, match="no usable API key"):
        store.ensure()
    assert sleeps == []


def test_store_requires_a_resource_name(cfg):
    with pytest.raises(StoreNotFound, match="not a store resource name"):
        GeminiStore(KEY, "My Library", remote_settings(cfg))


@pytest.mark.parametrize("how", ["limit", "fault"])
def test_storage_quota_is_transient_with_a_long_delay_and_not_retried_now(emu, cfg, how):
    """F3: a full quota clears when documents are deleted or the tier is raised."""
    if how == "limit":
        emu.storage_limit = 100
    else:
        emu.add_fault(Fault(method="POST", kind="storage_quota", times=None))
    store, sleeps = make_store(emu, cfg)
    with pytest.raises(QuotaExhausted, match="Corpus has reached the storage limit") as info:
        upload(store, data=b"x" * 1000)
    assert isinstance(info.value, TransientError) and info.value.retry_after >= 600
    assert sleeps == []  # not worth waiting for in this thread
    assert store.pacer.limiter is None or store.pacer.limiter.throttled_count == 0


def test_the_key_never_appears_in_errors(emu, cfg):
    store, _ = make_store(emu, cfg, attempts=1)
    message = f"backend echoed x-goog-api-key: {KEY} and ?key={KEY}"
    raised: list[StoreError] = []
    for fault in (
        Fault(status=500, message=message),
        Fault(status=400, message=message),
        Fault(status=429, kind="retry_info", message=message),
        Fault(status=403, message=message),
        Fault(kind="reset"),
    ):
        emu.add_fault(fault)
        with pytest.raises(StoreError) as info:
            store.ensure()
        raised.append(info.value)
    for exc in raised:
        chain: BaseException | None = exc
        while chain is not None:  # no raw SDK exception hides behind ours either
            assert isinstance(chain, StoreError)
            assert KEY not in str(chain) and KEY not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    assert "[REDACTED]" in str(raised[0])


# --- classification units ---------------------------------------------------------------


def _api_error(code: int, message: str, status: str, details: list | None = None):
    body = {"error": {"code": code, "message": message, "status": status}}
    if details:
        body["error"]["details"] = details
    return genai_errors.APIError.raise_error(code, body, None)


def _classified(code: int, message: str, status: str, details: list | None = None):
    try:
        _api_error(code, message, status, details)
    except genai_errors.APIError as exc:
        return classify(exc, [KEY])
    raise AssertionError("no error raised")


def test_classify_api_errors():
    retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]
    err = _classified(429, "quota", "RESOURCE_EXHAUSTED", retry)
    assert isinstance(err, TransientError) and err.retry_after == 1.5 and err.code == 429
    for code in (408, 500, 502, 503, 504):
        assert isinstance(_classified(code, "x", "UNAVAILABLE"), TransientError)
    assert isinstance(
        _classified(400, "Failed to create file.", "INVALID_ARGUMENT"), TransientError
    )
    invalid = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    assert isinstance(_classified(400, "Bad key", "INVALID_ARGUMENT", invalid), AuthError)
    assert isinstance(_classified(403, UNREGISTERED_CALLER_MESSAGE, "PERMISSION_DENIED"), AuthError)
    too_big = _classified(400, "File too large", "INVALID_ARGUMENT")
    assert type(too_big) is PermanentError
    assert type(_classified(404, "not found", "NOT_FOUND")) is PermanentError
    storage = _classified(429, "Corpus has reached the storage limit of 9 bytes.", "")
    assert type(storage) is QuotaExhausted and storage.retry_after == STORAGE_RETRY_AFTER


def test_classify_transport_errors():
    url = f"https://generativelanguage.googleapis.com/v1beta/x?key={KEY}"
    for exc in (
        httpx2.ReadTimeout(f"timed out {url}"),
        httpx2.ConnectError("[Errno 111] Connection refused"),
        httpx2.RemoteProtocolError("Server disconnected without sending a response."),
        httpx2.ReadError("[Errno 104] Connection reset by peer"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ):
        err = classify(exc, [KEY])
        assert isinstance(err, TransientError), exc
        assert KEY not in str(err)
    assert type(classify(UnicodeEncodeError("ascii", "é", 0, 1, "x"))) is PermanentError
    assert type(classify(ValueError("weird"))) is PermanentError


def test_classify_unparseable_answers_as_transient():
    """F2: what the SDK raises for a 200 that is not JSON says nothing about the effect."""
    page = f"<html>Sign in {KEY}</html>"
    for exc in (
        genai_errors.UnknownApiResponseError(f"Failed to parse response as JSON. Raw: {page}"),
        json.JSONDecodeError("Expecting value", page, 0),
    ):
        err = classify(exc, [KEY])
        assert type(err) is TransientError and "proxy" in str(err)
        assert "Sign in" not in str(err) and KEY not in str(err)


def test_scrub_catches_key_shapes_without_being_told():
    text = scrub("key AIzaSyA-abcdefghijklmnopqrstuvwxyz01234 and x-goog-api-key: 'zzz'")
    assert "AIzaSy" not in text and "zzz" not in text


# --- breaker and rate limiter ------------------------------------------------------------


def test_breaker_opens_after_threshold_and_closes_after_cooldown(emu, cfg):
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    store, _ = make_store(emu, cfg, attempts=1, breaker=breaker)
    name = f"{store.name}/documents/x-1"
    emu.add_fault(Fault(method="GET", path=r"/documents/", status=503, times=None))
    for _ in range(3):
        with pytest.raises(TransientError):
            store.get(name)
    assert breaker.state == "open" and breaker.opened_at == clock.now
    sent = len(emu.requests)
    with pytest.raises(CircuitOpen) as info:
        store.get(name)
    assert info.value.retry_after == 30.0
    assert len(emu.requests) == sent  # failed fast, nothing sent
    assert store.health()["breaker"]["state"] == "open"
    assert store.health()["breaker"]["consecutive_failures"] == 3

    clock.advance(30.0)
    assert breaker.state == "half-open"
    with pytest.raises(TransientError):  # the trial fails: open again, full cooldown
        store.get(name)
    assert breaker.state == "open"
    clock.advance(29.0)
    with pytest.raises(CircuitOpen):
        store.get(name)

    clock.advance(1.0)
    emu.clear_faults()
    assert store.get(name) is None  # the trial succeeds (a 404 is an answer)
    assert breaker.state == "closed" and breaker.opened_at is None
    assert store.health()["breaker"]["consecutive_failures"] == 0


def test_breaker_retries_stop_when_it_opens(emu, cfg):
    breaker = CircuitBreaker(2, 60.0, clock=FakeClock())
    store, sleeps = make_store(emu, cfg, attempts=5, breaker=breaker)
    emu.add_fault(Fault(method="GET", path=r"/documents$", status=503, times=None))
    with pytest.raises(CircuitOpen):
        list(store.list())
    assert len(emu.find_requests("GET", r"/documents$")) == 2
    assert len(sleeps) == 2


def test_half_open_allows_a_single_trial():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.record_failure("x")
    clock.advance(10.0)
    assert breaker.before_call() is True
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    breaker.record_success()
    assert breaker.before_call() is False


def test_store_paces_its_own_calls(emu, cfg):
    clock = FakeClock()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    limiter = AdaptiveLimiter(ceiling_per_minute=30, clock=clock, sleep=sleep)
    name = emu.create_store("paced")
    store = GeminiStore(KEY, name, remote_settings(cfg), pacer=Pacer(limiter=limiter, sleep=sleep))
    for _ in range(3):
        store.get("nope")
    assert waits == [2.0, 2.0]  # at the ceiling from the start, and never above it


def test_the_default_store_paces_adaptively_under_its_ceiling(emu, cfg):
    store = GeminiStore(
        KEY, emu.create_store("x"), remote_settings(replace(cfg, max_requests_per_minute=90))
    )
    assert isinstance(store.pacer.limiter, AdaptiveLimiter)
    assert store.pacer.limiter.ceiling == 1.5
    assert store.health()["pacing"]["ceiling_per_minute"] == 90


# --- search ---------------------------------------------------------------------------


def test_search_maps_hits_back_to_library_paths(emu, cfg):
    store, _ = make_store(emu, cfg)
    emu.add_document(
        store.name,
        "entropy.md",
        {"path": "physics/entropy.md"},
        b"Entropy measures disorder in thermodynamic systems.",
    )
    emu.add_document(store.name, "cats.md", {"path": "pets/cats.md"}, b"Cats sleep a lot.")
    result = store.search("what is entropy in thermodynamic systems", limit=3)
    assert result.answer
    assert [h.path for h in result.hits] == ["physics/entropy.md"]
    hit = result.hits[0]
    assert hit.display_name == "entropy.md" and "disorder" in hit.snippet
    generate = emu.find_requests("POST", r":generateContent$")[0]
    assert generate.path == f"/v1beta/models/{cfg.model}:generateContent"


def test_search_without_metadata_names_no_path(emu, cfg):
    """The caller maps such a hit to a file (workspace.py), not the store."""
    emu.grounding_extras = False
    name = emu.create_store("plain")
    emu.add_document(name, "entropy.md", {}, b"Entropy measures disorder.")
    store, _ = make_store(emu, cfg, store_name=name)
    hits = store.search("entropy disorder").hits
    assert [(h.display_name, h.path, h.document) for h in hits] == [("entropy.md", None, "")]


def test_finalize_then_503_leaves_a_recognisable_duplicate(emu, cfg):
    """The retry after a lost finalize answer uploads again; both copies carry our
    identity metadata, so the audit / orphan sweep can recognise and remove the extra."""
    store, _ = make_store(emu, cfg)
    emu.add_fault(Fault(kind="finalize_then_503"))
    doc = indexed(emu, store, upload(store))
    copies = [d for d in store.list() if d.metadata.get("sha256") == "h1"]
    assert len(copies) == 2 and copies[-1].name == doc.name
