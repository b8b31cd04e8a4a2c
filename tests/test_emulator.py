"""The Gemini File Search emulator, driven through the real google-genai SDK."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from emulator import MAX_DOCUMENT_BYTES, Fault, GeminiEmulator
from google import genai
from google.genai import errors, types

MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def make_client(emu: GeminiEmulator, *, api_key: str = "test-key", **http: Any) -> genai.Client:
    opts = {"base_url": emu.url, "api_version": "v1beta", **http}
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(**opts))


@pytest.fixture
def client(emulator: GeminiEmulator) -> Iterator[genai.Client]:
    c = make_client(emulator)
    yield c
    c.close()


@pytest.fixture
def store(emulator: GeminiEmulator) -> str:
    return emulator.create_store("Test Library")


def upload(
    client: genai.Client,
    store: str,
    data: bytes,
    display_name: str = "notes.md",
    metadata: dict[str, Any] | None = None,
    mime_type: str = "text/markdown",
) -> types.UploadToFileSearchStoreOperation:
    custom = []
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            custom.append(types.CustomMetadata(key=key, string_value=value))
        elif isinstance(value, list):
            custom.append(
                types.CustomMetadata(key=key, string_list_value=types.StringList(values=value))
            )
        else:
            custom.append(types.CustomMetadata(key=key, numeric_value=value))
    return client.file_search_stores.upload_to_file_search_store(
        file_search_store_name=store,
        file=io.BytesIO(data),
        config=types.UploadToFileSearchStoreConfig(
            display_name=display_name, mime_type=mime_type, custom_metadata=custom or None
        ),
    )


def raw(
    emu: GeminiEmulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """A plain HTTP call (for what the SDK cannot send), returning (status, json, headers)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(emu.url + path, data=data, method=method)
    for key, value in ({"x-goog-api-key": "test-key"} if headers is None else headers).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None, dict(resp.headers)
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text else None, dict(e.headers)


def list_names(client: genai.Client, store: str, page_size: int | None = 20) -> list[str]:
    config = {"page_size": page_size} if page_size else None
    return [d.name for d in client.file_search_stores.documents.list(parent=store, config=config)]


# --------------------------------------------------------------------------- basics


def test_binds_loopback_on_ephemeral_port_and_stops() -> None:
    emu = GeminiEmulator()
    with emu:
        assert emu.url.startswith("http://127.0.0.1:")
        port = int(emu.url.rsplit(":", 1)[1])
        assert port > 0
        assert raw(emu, "GET", "/v1beta/fileSearchStores")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(emu.url + "/v1beta/fileSearchStores", timeout=2)


def test_store_lifecycle(emulator: GeminiEmulator, client: genai.Client) -> None:
    made = client.file_search_stores.create(config={"display_name": "My Library"})
    assert made.name is not None
    assert made.name.startswith("fileSearchStores/mylibrary-")
    assert len(made.name.rsplit("-", 1)[1]) == 12
    assert made.display_name == "My Library"
    helper = emulator.create_store("Other")
    assert helper.startswith("fileSearchStores/other-")

    got = client.file_search_stores.get(name=made.name)
    assert got.display_name == "My Library"
    assert got.active_documents_count is None  # zero counts are omitted

    names = {s.name for s in client.file_search_stores.list()}
    assert names == {made.name, helper}

    upload(client, made.name, b"some text")
    got = client.file_search_stores.get(name=made.name)
    assert got.active_documents_count == 1
    assert got.size_bytes == len(b"some text")

    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.delete(name=made.name)
    assert ei.value.code == 400 and ei.value.status == "FAILED_PRECONDITION"
    client.file_search_stores.delete(name=made.name, config={"force": True})
    assert emulator.documents(made.name) == []
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.get(name=made.name)
    assert ei.value.code == 404 and ei.value.status == "NOT_FOUND"
    deletes = emulator.find_requests("DELETE", r"^/v1beta/fileSearchStores/mylibrary")
    assert [r.query.get("force") for r in deletes] == [None, "True"]
    assert [r.status for r in deletes] == [400, 200]


def test_upload_roundtrip_and_request_log(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    data = b"# Notes\n\nZebras are striped.\n"
    op = upload(
        client,
        store,
        data,
        "notes.md",
        {"path": "a/notes.md", "year": 2001, "tags": ["x", "y"]},
    )
    assert isinstance(op, types.UploadToFileSearchStoreOperation)
    assert op.done is True
    assert op.response is not None and op.response.document_name is not None
    doc_name = op.response.document_name
    assert doc_name.startswith(f"{store}/documents/notesmd-")
    assert op.name == f"{store}/upload/operations/{doc_name.rsplit('/', 1)[1]}"

    [doc] = emulator.documents(store)
    assert doc["name"] == doc_name
    assert doc["displayName"] == "notes.md"
    assert doc["mimeType"] == "text/markdown"
    assert doc["sizeBytes"] == str(len(data))  # int64 as a string
    assert doc["state"] == "STATE_ACTIVE"
    assert {"key": "path", "stringValue": "a/notes.md"} in doc["customMetadata"]
    assert emulator.metadata(doc) == {"path": "a/notes.md", "year": 2001, "tags": ["x", "y"]}
    assert emulator.content(doc_name) == data

    start, finalize = emulator.find_requests(path=":uploadToFileSearchStore")
    assert (start.phase, finalize.phase) == ("start", "finalize")
    assert start.api_version == finalize.api_version == "v1beta"
    assert start.path == f"/upload/v1beta/{store}:uploadToFileSearchStore"
    assert start.headers["x-goog-api-key"] == "test-key"
    assert start.headers["x-goog-upload-protocol"] == "resumable"
    assert start.headers["x-goog-upload-header-content-length"] == str(len(data))
    # The SDK sends customMetadata entries in snake_case.
    assert {"key": "path", "string_value": "a/notes.md"} in start.json["customMetadata"]
    assert start.json["displayName"] == "notes.md"
    assert "x-goog-api-key" not in finalize.headers  # byte requests carry no key
    assert finalize.headers["x-goog-upload-command"] == "upload, finalize"
    assert "upload_id" in finalize.query

    again = client.operations.get(op)
    assert isinstance(again, types.UploadToFileSearchStoreOperation)
    assert again.done is True and again.response is not None
    assert again.response.document_name == doc_name
    [poll] = emulator.find_requests("GET", "/operations/")
    assert poll.path == f"/v1beta/{op.name}"

    # The operation JSON as the API shapes it, including fields the SDK drops.
    [op_json] = [o for o in emulator.operations() if o["name"] == op.name]
    assert op_json["response"] == {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
        "UploadToFileSearchStoreResponse",
        "parent": store,
        "documentName": doc_name,
        "mimeType": "text/markdown",
        "sizeBytes": str(len(data)),
    }


def test_operation_can_be_polled_from_its_name_alone(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    """After a restart the client only has the stored operation name."""
    op = upload(client, store, b"x")
    rebuilt = types.UploadToFileSearchStoreOperation(name=op.name)
    polled = client.operations.get(rebuilt)
    assert isinstance(polled, types.UploadToFileSearchStoreOperation)
    assert polled.done is True and polled.response is not None
    assert op.response is not None
    assert polled.response.document_name == op.response.document_name


def test_stopped_server_gives_connect_error() -> None:
    emu = GeminiEmulator().start()
    c = make_client(emu)
    name = emu.create_store("s")
    assert c.file_search_stores.get(name=name).name == name  # leaves a pooled connection
    emu.stop()
    with pytest.raises(httpx2.ConnectError):
        c.file_search_stores.get(name=name)


def test_start_answer_carries_absolute_upload_url(emulator: GeminiEmulator, store: str) -> None:
    status, body, headers = raw(
        emulator,
        "POST",
        f"/upload/v1beta/{store}:uploadToFileSearchStore",
        {"displayName": "a.txt"},
        {
            "x-goog-api-key": "test-key",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
            "Content-Type": "application/json",
        },
    )
    assert status == 200 and body is None
    url = headers["X-Goog-Upload-URL"]
    assert url.startswith(emulator.url + "/upload/v1beta/")
    assert headers["X-Goog-Upload-Status"] == "active"


def test_17_mib_file_arrives_in_three_byte_requests(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    data = bytes(range(256)) * (17 * MiB // 256)
    op = upload(client, store, data, "big.txt", mime_type="text/plain")
    byte_requests = [r for r in emulator.find_requests("POST", ":upload") if r.phase != "start"]
    assert [r.phase for r in byte_requests] == ["chunk", "chunk", "finalize"]
    assert [r.headers["x-goog-upload-offset"] for r in byte_requests] == [
        "0",
        str(8 * MiB),
        str(16 * MiB),
    ]
    assert [r.body_size for r in byte_requests] == [8 * MiB, 8 * MiB, MiB]
    assert len(emulator.find_requests(phase="start")) == 1
    assert op.response is not None and op.response.document_name is not None
    assert emulator.content(op.response.document_name) == data


def test_v1_routes_are_served_and_logged(emulator: GeminiEmulator, store: str) -> None:
    c = make_client(emulator, api_version="v1")
    op = upload(c, store, b"v1 text")
    assert op.done is True
    assert list_names(c, store) == [d["name"] for d in emulator.documents(store)]
    versions = {r.api_version for r in emulator.requests}
    assert versions == {"v1"}
    assert all(r.path.startswith(("/v1/", "/upload/v1/")) for r in emulator.requests)


def test_empty_upload(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    op = upload(client, store, b"", "empty.txt", mime_type="text/plain")
    assert op.response is not None and op.response.document_name is not None
    assert emulator.content(op.response.document_name) == b""
    [doc] = emulator.documents(store)
    assert "sizeBytes" not in doc  # zero is omitted


# --------------------------------------------------------------------------- clock


def test_indexing_delay_with_internal_clock() -> None:
    with GeminiEmulator(indexing_delay=30) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        op = upload(c, store, b"pending text")
        assert op.done is None  # a pending operation has no `done` at all
        assert op.response is None
        [doc] = emu.documents(store)
        assert doc["state"] == "STATE_PENDING"
        assert [o for o in emu.operations() if o["name"] == op.name] == [{"name": op.name}]
        assert c.file_search_stores.get(name=store).pending_documents_count == 1

        emu.advance(29.9)
        assert c.operations.get(op).done is None
        emu.advance(0.1)
        done = c.operations.get(op)
        assert done.done is True
        assert done.response is not None and done.response.document_name == doc["name"]
        assert emu.documents(store)[0]["state"] == "STATE_ACTIVE"


def test_indexing_delay_with_injected_clock() -> None:
    now = [1_000_000.0]
    with GeminiEmulator(clock=lambda: now[0], indexing_delay=5) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        op = upload(c, store, b"text")
        assert op.done is None
        now[0] += 5
        assert c.operations.get(op).done is True
        [doc] = c.file_search_stores.documents.list(parent=store)
        assert doc.create_time is not None
        assert doc.create_time.timestamp() == pytest.approx(1_000_000.0)


def test_listing_delay_hides_fresh_documents() -> None:
    with GeminiEmulator(listing_delay=1.0) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        op = upload(c, store, b"text")
        assert op.done is True
        assert list_names(c, store) == []
        assert op.response is not None and op.response.document_name is not None
        assert c.file_search_stores.documents.get(name=op.response.document_name).name
        emu.advance(1.0)
        assert list_names(c, store) == [op.response.document_name]


# --------------------------------------------------------------------------- documents


def test_document_listing_pages(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    names = [emulator.add_document(store, f"doc{i}.txt", {"i": i}, b"x") for i in range(25)]
    emulator.clear_log()
    assert list_names(client, store, page_size=20) == names  # ascending create time
    listings = emulator.find_requests("GET", r"/documents$")
    assert [r.query.get("pageSize") for r in listings] == ["20", "20"]
    assert "pageToken" not in listings[0].query and listings[1].query["pageToken"]

    emulator.clear_log()
    assert list_names(client, store, page_size=None) == names  # default page size 10
    assert len(emulator.find_requests("GET", r"/documents$")) == 3

    emulator.clear_log()
    assert list_names(client, store, page_size=100) == names  # clamped to 20
    assert len(emulator.find_requests("GET", r"/documents$")) == 2

    status, body, _ = raw(emulator, "GET", f"/v1beta/{store}/documents?pageSize=20")
    assert status == 200 and len(body["documents"]) == 20 and "nextPageToken" in body
    status, body, _ = raw(
        emulator, "GET", f"/v1beta/{store}/documents?pageToken={body['nextPageToken']}"
    )
    assert status == 200 and len(body["documents"]) == 5 and "nextPageToken" not in body


def test_empty_listing_is_empty_object(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    assert raw(emulator, "GET", f"/v1beta/{store}/documents")[:2] == (200, {})
    assert list_names(client, store) == []


def test_delete_document_requires_force(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    op = upload(client, store, b"content with chunks")
    assert op.response is not None and op.response.document_name is not None
    name = op.response.document_name

    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.delete(name=name)
    assert ei.value.code == 400 and ei.value.status == "FAILED_PRECONDITION"
    assert emulator.document(name) is not None

    client.file_search_stores.documents.delete(name=name, config={"force": True})
    assert emulator.document(name) is None
    deletes = emulator.find_requests("DELETE", "/documents/")
    assert [(r.query.get("force"), r.status) for r in deletes] == [(None, 400), ("True", 200)]

    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.delete(name=name, config={"force": True})
    assert ei.value.code == 404 and ei.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.get(name=name)
    assert ei.value.code == 404

    # A successful delete answers 200 with an empty JSON object (a 204 makes the SDK raise).
    other = emulator.add_document(store, "x.txt", {}, b"abc")
    assert raw(emulator, "DELETE", f"/v1beta/{other}?force=true")[:2] == (200, {})


def test_drift_injection(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    foreign = emulator.add_document(
        store, "hand made.pdf", {"origin": "manual", "n": 1.5}, b"%PDF-1.4", state="STATE_FAILED"
    )
    [doc] = client.file_search_stores.documents.list(parent=store)
    assert doc.name == foreign
    assert doc.state == types.DocumentState.STATE_FAILED
    assert doc.mime_type == "application/pdf"
    assert doc.custom_metadata is not None
    assert {m.key: m.string_value or m.numeric_value for m in doc.custom_metadata} == {
        "origin": "manual",
        "n": 1.5,
    }
    emulator.remove_document(foreign)
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.get(name=foreign)
    assert ei.value.code == 404
    with pytest.raises(KeyError):
        emulator.remove_document(foreign)


# --------------------------------------------------------------------------- validation


def test_missing_api_key_is_403(emulator: GeminiEmulator) -> None:
    status, body, _ = raw(emulator, "GET", "/v1beta/fileSearchStores", headers={})
    assert status == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"
    assert body["error"]["message"].startswith("Method doesn't allow unregistered callers")


def test_wrong_api_key_is_400_api_key_invalid(emulator: GeminiEmulator, store: str) -> None:
    c = make_client(emulator, api_key="wrong-key")
    with pytest.raises(errors.ClientError) as ei:
        c.file_search_stores.get(name=store)
    err = ei.value
    assert err.code == 400 and err.status == "INVALID_ARGUMENT"
    # APIError.details is the whole JSON body, not the details list.
    details = err.details["error"]["details"]
    info = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert info and info[0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(errors.ClientError):
        upload(c, store, b"x")
    assert emulator.documents() == []
    assert emulator.find_requests(phase="finalize") == []


def test_display_name_and_metadata_limits(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    with pytest.raises(errors.ClientError) as ei:
        upload(client, store, b"x", display_name="n" * 513)
    assert ei.value.code == 400 and ei.value.status == "INVALID_ARGUMENT"
    upload(client, store, b"x", display_name="n" * 512)

    with pytest.raises(errors.ClientError) as ei:
        upload(client, store, b"x", metadata={f"k{i}": "v" for i in range(21)})
    assert ei.value.code == 400
    upload(client, store, b"x", metadata={f"k{i}": "v" for i in range(20)})

    two_kinds = types.CustomMetadata(key="k", string_value="a", numeric_value=1)
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.upload_to_file_search_store(
            file_search_store_name=store,
            file=io.BytesIO(b"x"),
            config=types.UploadToFileSearchStoreConfig(
                display_name="two.txt", mime_type="text/plain", custom_metadata=[two_kinds]
            ),
        )
    assert ei.value.code == 400 and "exactly one" in (ei.value.message or "")
    assert len(emulator.documents(store)) == 2


def test_camel_case_metadata_is_accepted(emulator: GeminiEmulator, store: str) -> None:
    headers = {
        "x-goog-api-key": "test-key",
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": "2",
    }
    meta = [
        {"key": "a", "stringValue": "s"},
        {"key": "b", "numericValue": 3},
        {"key": "c", "stringListValue": {"values": ["p", "q"]}},
    ]
    status, _, h = raw(
        emulator,
        "POST",
        f"/upload/v1beta/{store}:uploadToFileSearchStore",
        {"displayName": "c.txt", "mimeType": "text/plain", "customMetadata": meta},
        headers,
    )
    assert status == 200
    req = urllib.request.Request(
        h["X-Goog-Upload-URL"],
        data=b"hi",
        method="POST",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-Goog-Upload-Status"] == "final"
        op = json.loads(resp.read())
    assert op["done"] is True
    [doc] = emulator.documents(store)
    assert doc["customMetadata"] == meta
    assert emulator.metadata(doc) == {"a": "s", "b": 3, "c": ["p", "q"]}


def test_document_size_limit(
    emulator: GeminiEmulator, client: genai.Client, store: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: nothing is read before start fails
    with big.open("rb") as f, pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.upload_to_file_search_store(
            file_search_store_name=store,
            file=f,
            config={"display_name": "big.bin", "mime_type": "application/pdf"},
        )
    assert ei.value.code == 400
    assert emulator.find_requests(phase="finalize") == []
    assert emulator.documents() == []


def test_storage_limit_is_429_resource_exhausted() -> None:
    with GeminiEmulator(storage_limit=100) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        upload(c, store, b"a" * 60)
        with pytest.raises(errors.ClientError) as ei:
            upload(c, store, b"b" * 60)
        assert ei.value.code == 429 and ei.value.status == "RESOURCE_EXHAUSTED"
        assert "storage limit" in (ei.value.message or "")
        assert len(emu.documents(store)) == 1
        assert emu.storage_used() == 60


# --------------------------------------------------------------------------- faults


def test_fault_retry_info_429(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    fault = emulator.add_fault(
        Fault(path=r":uploadToFileSearchStore", phase="start", kind="retry_info", retry_delay=1.5)
    )
    with pytest.raises(errors.APIError) as ei:
        upload(client, store, b"text")
    err = ei.value
    assert isinstance(err, errors.ClientError)
    assert err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    retry = [
        d
        for d in err.details["error"]["details"]
        if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    ]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]
    assert fault.hits == 1
    assert emulator.documents() == []

    upload(client, store, b"text")  # times=1: the next attempt goes through
    assert fault.hits == 1
    assert [r.status for r in emulator.find_requests(phase="start")] == [429, 200]
    assert emulator.find_requests(phase="start")[0].fault == "retry_info"


def test_fault_error_for_one_display_name(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(
        Fault(
            phase="start",
            match_display_name="bad.md",
            status=400,
            message="Failed to create file",
            times=None,
        )
    )
    with pytest.raises(errors.ClientError) as ei:
        upload(client, store, b"x", display_name="bad.md")
    assert ei.value.code == 400 and ei.value.message == "Failed to create file"
    assert ei.value.status == "INVALID_ARGUMENT"
    upload(client, store, b"y", display_name="good.md")
    with pytest.raises(errors.ClientError):
        upload(client, store, b"x", display_name="bad.md")
    assert [d["displayName"] for d in emulator.documents(store)] == ["good.md"]


def test_fault_503_on_finalize(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    fault = emulator.add_fault(Fault(phase="finalize", status=503))
    t0 = time.monotonic()
    with pytest.raises(errors.ServerError) as ei:
        upload(client, store, b"x")
    # The answer carries X-Goog-Upload-Status: final, so the SDK does not re-send.
    assert time.monotonic() - t0 < 1.0
    assert ei.value.code == 503 and ei.value.status == "UNAVAILABLE"
    assert fault.hits == 1
    assert len(emulator.find_requests(phase="finalize")) == 1
    assert emulator.documents() == []


def test_sdk_resends_byte_request_without_upload_status(
    emulator: GeminiEmulator, client: genai.Client, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.genai import _api_client

    monkeypatch.setattr(_api_client, "INITIAL_RETRY_DELAY", 0)  # the SDK sleeps 1, 2, 4 s
    emulator.add_fault(Fault(phase="finalize", status=503, upload_status=None, times=2))
    op = upload(client, store, b"resent")
    assert op.done is True
    assert [r.status for r in emulator.find_requests(phase="finalize")] == [503, 503, 200]
    assert len(emulator.documents(store)) == 1


def test_fault_reset_is_a_transport_error(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_document(store, "a.txt", {}, b"a")
    emulator.add_fault(Fault(method="GET", path=r"/documents$", kind="reset"))
    with pytest.raises(httpx2.TransportError) as ei:
        list_names(client, store)
    assert isinstance(ei.value, httpx2.RemoteProtocolError)
    [listing] = emulator.find_requests("GET", r"/documents$")
    assert listing.status is None and listing.fault == "reset"
    assert len(list_names(client, store)) == 1  # the server lives on

    emulator.add_fault(Fault(phase="finalize", kind="reset"))
    with pytest.raises(httpx2.RemoteProtocolError):
        upload(client, store, b"never stored")
    assert len(emulator.documents(store)) == 1


def test_fault_latency_delays_and_client_timeout(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(method="GET", path=r"/documents$", kind="latency", latency=0.3))
    t0 = time.monotonic()
    assert list_names(client, store) == []
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    list_names(client, store)  # times=1
    assert time.monotonic() - t0 < 0.3

    emulator.add_fault(Fault(method="GET", path=r"/documents$", kind="latency", latency=10))
    impatient = make_client(emulator, timeout=200)  # milliseconds
    t0 = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        list_names(impatient, store)
    assert time.monotonic() - t0 < 5


def test_fault_never_done_on_upload(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(phase="start", kind="never_done"))
    op = upload(client, store, b"indexed anyway")
    assert op.done is None
    emulator.advance(3600)
    for _ in range(3):
        assert client.operations.get(op).done is None
    # ...although the document was indexed: look it up by listing.
    [doc] = client.file_search_stores.documents.list(parent=store)
    assert doc.state == types.DocumentState.STATE_ACTIVE
    assert op.name is not None and op.name.endswith(doc.name.rsplit("/", 1)[1])


def test_fault_never_done_on_polls(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    op = upload(client, store, b"x")
    emulator.add_fault(Fault(method="GET", path="operations/", kind="never_done", times=2))
    assert [client.operations.get(op).done for _ in range(3)] == [None, None, True]


def test_fault_finalize_then_503_leaves_a_document(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(kind="finalize_then_503"))
    with pytest.raises(errors.ServerError) as ei:
        upload(client, store, b"dup")
    assert ei.value.code == 503
    assert len(emulator.documents(store)) == 1  # stored although the client saw 503
    upload(client, store, b"dup")  # the client's retry makes a duplicate
    docs = emulator.documents(store)
    assert len(docs) == 2 and {emulator.content(d["name"]) for d in docs} == {b"dup"}


def test_fault_not_found_on_delete(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    name = emulator.add_document(store, "a.txt", {}, b"a")
    emulator.add_fault(Fault(method="DELETE", path="documents/", kind="not_found"))
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.delete(name=name, config={"force": True})
    assert ei.value.code == 404 and ei.value.status == "NOT_FOUND"
    assert emulator.document(name) is not None


@pytest.mark.parametrize(
    ("kind", "stays"), [("spurious_404_delete", True), ("delete_then_404", False)]
)
def test_fault_404_on_delete_kinds(
    emulator: GeminiEmulator, client: genai.Client, store: str, kind: str, stays: bool
) -> None:
    """Both answer 404 to a document DELETE, and only to that: a spurious one keeps
    the document, a lost answer's replay comes after the delete happened."""
    name = emulator.add_document(store, "a.txt", {}, b"a")
    rule = emulator.add_fault(Fault(kind=kind, times=None))
    client.file_search_stores.documents.get(name=name)  # a GET is not a DELETE
    assert rule.hits == 0
    with pytest.raises(errors.ClientError) as ei:
        client.file_search_stores.documents.delete(name=name, config={"force": True})
    assert ei.value.code == 404 and ei.value.status == "NOT_FOUND"
    assert (emulator.document(name) is not None) is stays
    assert rule.hits == 1


def test_fault_operation_error(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    emulator.add_fault(Fault(kind="operation_error", message="Failed to count tokens"))
    op = upload(client, store, b"x", display_name="sheet.xlsx")
    assert op.done is True and op.response is None
    assert op.error == {"code": 13, "message": "Failed to count tokens"}
    [doc] = emulator.documents(store)
    assert doc["state"] == "STATE_FAILED"


def test_fault_bare_ids(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    emulator.add_fault(Fault(method="GET", path="operations/", kind="bare_ids"))
    op = upload(client, store, b"x")
    assert op.response is not None and op.response.document_name is not None
    full = op.response.document_name
    polled = client.operations.get(op)
    assert polled.response is not None
    assert polled.response.document_name == full.rsplit("/", 1)[1]
    assert polled.response.parent == store.rsplit("/", 1)[1]


def test_leading_space_display_name_hangs(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    op = upload(client, store, b"x", display_name=" notes.md")
    emulator.advance(3600)
    assert client.operations.get(op).done is None
    assert emulator.documents(store)[0]["state"] == "STATE_PENDING"


def test_handler_exception_answers_500_and_server_survives(
    emulator: GeminiEmulator, client: genai.Client, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("bug in the emulator")

    monkeypatch.setattr(emulator, "_list_documents", boom)
    with pytest.raises(errors.ServerError) as ei:
        list_names(client, store)
    assert ei.value.code == 500
    assert len(emulator.server_errors) == 1 and "bug in the emulator" in emulator.server_errors[0]
    monkeypatch.undo()
    assert list_names(client, store) == []


def test_concurrent_uploads(emulator: GeminiEmulator, client: genai.Client, store: str) -> None:
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            upload(client, store, f"file {i}".encode(), display_name=f"f{i}.txt")
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert failures == []
    assert sorted(d["displayName"] for d in emulator.documents(store)) == sorted(
        f"f{i}.txt" for i in range(12)
    )
    assert len(emulator.find_requests(phase="start")) == 12
    assert len(emulator.requests) == 24


# --------------------------------------------------------------------------- generateContent


def _search(
    client: genai.Client, stores: list[str], question: str, **fs: Any
) -> types.GenerateContentResponse:
    return client.models.generate_content(
        model="gemini-2.5-flash",
        contents=question,
        config=types.GenerateContentConfig(
            tools=[types.Tool(file_search=types.FileSearch(file_search_store_names=stores, **fs))]
        ),
    )


def test_generate_content_grounding(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    op = upload(
        client,
        store,
        b"Zebras have black and white stripes.\n\nThey live in Africa.",
        "zebras.md",
        {"path": "animals/zebras.md", "year": 2001},
    )
    upload(client, store, b"Penguins cannot fly but swim well.", "penguins.md", {"year": 1990})
    assert op.response is not None
    resp = _search(client, [store], "Why do zebras have stripes?")
    cand = resp.candidates[0] if resp.candidates else None
    assert cand is not None and cand.grounding_metadata is not None
    assert resp.text and "zebras.md" in resp.text
    chunks = cand.grounding_metadata.grounding_chunks or []
    assert len(chunks) == 1
    ctx = chunks[0].retrieved_context
    assert ctx is not None
    assert ctx.title == "zebras.md"
    assert ctx.text is not None and "stripes" in ctx.text
    assert ctx.file_search_store == store
    assert ctx.uri == ctx.document_name == op.response.document_name
    assert ctx.custom_metadata is not None
    assert {m.key: m.string_value or m.numeric_value for m in ctx.custom_metadata} == {
        "path": "animals/zebras.md",
        "year": 2001,
    }
    supports = cand.grounding_metadata.grounding_supports or []
    assert len(supports) == 1 and supports[0].grounding_chunk_indices == [0]
    seg = supports[0].segment
    assert seg is not None and seg.end_index is not None
    assert resp.text.encode()[seg.start_index or 0 : seg.end_index].decode() == seg.text

    [call] = emulator.find_requests("POST", ":generateContent")
    assert call.json["tools"][0]["fileSearch"]["file_search_store_names"] == [store]

    filtered = _search(client, [store], "zebras penguins", metadata_filter="year < 2000")
    fcand = filtered.candidates[0] if filtered.candidates else None
    assert fcand is not None and fcand.grounding_metadata is not None
    titles = [
        c.retrieved_context.title
        for c in fcand.grounding_metadata.grounding_chunks or []
        if c.retrieved_context
    ]
    assert titles == ["penguins.md"]

    nothing = _search(client, [store], "quantum chromodynamics")
    assert nothing.candidates and nothing.candidates[0].grounding_metadata is None


def test_generate_content_skips_pending_and_accepts_camel_case() -> None:
    with GeminiEmulator(indexing_delay=10, grounding_extras=False) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        upload(c, store, b"Giraffes have long necks.", "giraffes.md", {"path": "g.md"})
        assert _search(c, [store], "giraffes necks").candidates[0].grounding_metadata is None
        emu.advance(10)
        status, body, _ = raw(
            emu,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {
                "contents": [{"role": "user", "parts": [{"text": "giraffes necks"}]}],
                "tools": [{"fileSearch": {"fileSearchStoreNames": [store], "topK": 3}}],
            },
        )
        assert status == 200
        ctx = body["candidates"][0]["groundingMetadata"]["groundingChunks"][0]["retrievedContext"]
        assert ctx == {
            "title": "giraffes.md",
            "text": "Giraffes have long necks.",
            "fileSearchStore": store,
            "customMetadata": [{"key": "path", "stringValue": "g.md"}],
        }


def test_generate_content_bad_filter_is_400(client: genai.Client, store: str) -> None:
    with pytest.raises(errors.ClientError) as ei:
        _search(client, [store], "x", metadata_filter="year >")
    assert ei.value.code == 400


# --------------------------------------------------------------------------- throughput model


def test_rate_limit_answers_429_with_retry_info_above_the_rate() -> None:
    with GeminiEmulator(rate_limit=2.0) as emu:  # the fake clock: moves on advance() only
        c = make_client(emu)
        store = emu.create_store("s")
        upload(c, store, b"x" * 2000)  # start + finalize: one API call, the bytes are free
        c.file_search_stores.get(name=store)
        with pytest.raises(errors.ClientError) as ei:
            c.file_search_stores.get(name=store)
        assert ei.value.code == 429 and ei.value.status == "RESOURCE_EXHAUSTED"
        retry = [d for d in ei.value.details["error"]["details"] if "RetryInfo" in d["@type"]]
        assert retry == [{"@type": retry[0]["@type"], "retryDelay": "0.5s"}]
        assert emu.requests[-1].fault == "rate_limit"
        emu.advance(0.5)
        c.file_search_stores.get(name=store)


def test_request_latency_delays_every_request() -> None:
    with GeminiEmulator(request_latency=0.2) as emu:
        c = make_client(emu)
        store = emu.create_store("s")
        started = time.perf_counter()
        c.file_search_stores.get(name=store)
        assert time.perf_counter() - started >= 0.2
        assert emu.requests[-1].fault is None


def test_fault_html_200_on_finalize_lands_the_upload_first(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(phase="finalize", kind="html_200"))
    with pytest.raises(errors.UnknownApiResponseError):
        upload(client, store, b"x" * 2000)
    [doc] = emulator.documents(store)
    assert doc["state"] == "STATE_ACTIVE"


def test_fault_html_200_on_operations_get(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.indexing_delay = 5.0
    op = upload(client, store, b"x" * 2000)
    emulator.add_fault(Fault(method="GET", path="/operations/", kind="html_200"))
    with pytest.raises(ValueError):  # json.JSONDecodeError, a ValueError
        client.operations.get(op)
    record = emulator.requests[-1]
    assert (record.status, record.fault) == (200, "html_200")


def test_fault_storage_quota_has_the_real_message(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(phase="start", kind="storage_quota"))
    with pytest.raises(errors.ClientError) as ei:
        upload(client, store, b"x" * 2000)
    assert ei.value.code == 429
    assert ei.value.message == "Corpus has reached the storage limit of 1073741824 bytes."


def test_fault_operation_error_with_another_rpc_code(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.add_fault(Fault(kind="operation_error", message="Try later.", rpc_code=14))
    op = upload(client, store, b"x")
    assert op.error == {"code": 14, "message": "Try later."}


def test_operations_of_a_deleted_store_are_gone_with_it(
    emulator: GeminiEmulator, client: genai.Client, store: str
) -> None:
    emulator.indexing_delay = 5.0
    op = upload(client, store, b"x" * 2000)
    client.file_search_stores.delete(name=store, config={"force": True})
    with pytest.raises(errors.ClientError) as ei:
        client.operations.get(op)
    assert ei.value.code == 404


# --- structured output and countTokens (issue 13) -----------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "level": {"type": "string", "enum": ["low", "high"]},
    },
}


def test_structured_output_is_derived_from_the_content(client: genai.Client) -> None:
    text = "Concepts are formed by measurement omission. " * 20 + "Rand wrote it."
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=SCHEMA
    )
    first = client.models.generate_content(model="m", contents=text, config=config)
    again = client.models.generate_content(model="m", contents=text, config=config)
    answer = json.loads(first.text)
    assert answer == json.loads(again.text)  # deterministic
    assert answer["summary"] == "Concepts are formed by measurement omission."
    assert answer["topics"] == ["concepts", "formed", "measurement"]  # most frequent terms
    assert answer["level"] == "low"
    assert first.usage_metadata.prompt_token_count == (len(text) + 3) // 4
    assert first.candidates[0].finish_reason == types.FinishReason.STOP
    # The OpenAPI-style responseSchema of the SDK's `response_schema` works too.
    typed = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=types.Schema(
            type=types.Type.OBJECT,
            properties={"topics": types.Schema(type=types.Type.ARRAY, max_items=2,
                                               items=types.Schema(type=types.Type.STRING))},
        ),
    )  # fmt: skip
    got = client.models.generate_content(model="m", contents=text, config=typed)
    assert json.loads(got.text) == {"topics": ["concepts", "formed"]}


def test_a_schema_without_the_json_mime_type_is_refused(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(
            model="m",
            contents="x",
            config=types.GenerateContentConfig(response_json_schema=SCHEMA),
        )
    assert info.value.code == 400


@pytest.mark.parametrize("kind", ["prompt_blocked", "safety", "malformed_json", "max_tokens"])
def test_generate_faults_shape_the_answer(
    emulator: GeminiEmulator, client: genai.Client, kind: str
) -> None:
    emulator.add_fault(Fault(kind=kind))
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=SCHEMA
    )
    got = client.models.generate_content(model="m", contents="some text here", config=config)
    if kind == "prompt_blocked":
        assert not got.candidates
        assert got.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    elif kind == "safety":
        assert got.candidates[0].finish_reason == types.FinishReason.SAFETY
        assert got.candidates[0].content is None
    else:
        with pytest.raises(ValueError):
            json.loads(got.text)
        cut = kind == "max_tokens"
        finish = types.FinishReason.MAX_TOKENS if cut else types.FinishReason.STOP
        assert got.candidates[0].finish_reason == finish
    # one request only: the next answer is whole again
    again = client.models.generate_content(model="m", contents="some text here", config=config)
    assert json.loads(again.text)["summary"] == "some text here"


def test_count_tokens_in_the_api_shape(emulator: GeminiEmulator, client: genai.Client) -> None:
    got = client.models.count_tokens(model="m", contents=["abcdefgh", "abcd"])
    assert got.total_tokens == 3
    (request,) = emulator.find_requests(method="POST", path=r"models/m:countTokens$")
    assert request.api_version == "v1beta" and "contents" in request.json
