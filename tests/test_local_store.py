"""The embedded store keeps the Store protocol's promises (base.py), on disk."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from objlib_daemon.stores import local
from objlib_daemon.stores.base import (
    ACTIVE,
    OperationLost,
    PermanentError,
    StoreError,
    StoreNotFound,
    Upload,
)
from objlib_daemon.stores.local import LocalAdmin, LocalStore

NAME = re.compile(r"^localStores/local/documents/[a-z0-9]{1,40}-[0-9a-f]{12}$")


@pytest.fixture
def store(tmp_path: Path):
    s = LocalStore(tmp_path / "local-store")
    yield s
    s.close()


def put(store: LocalStore, text: str | bytes, name: str = "notes.txt", mime="text/plain", **meta):
    data = text.encode() if isinstance(text, str) else text
    up = store.upload(io.BytesIO(data), display_name=name, metadata=meta, mime_type=mime)
    return store.poll(up)


def test_directory_is_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "local-store"
    LocalStore(directory).close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_identity_of_the_store(store: LocalStore) -> None:
    assert store.backend == "local"
    assert store.name == "localStores/local"
    info = store.ensure()
    assert (info.name, info.display_name, info.documents) == ("localStores/local", "local", 0)
    with pytest.raises(ValueError):
        LocalStore(store.directory, name="a/b")
    with LocalStore(store.directory, name=store.name) as same:  # resource name accepted
        assert (same.name, same.display_name) == ("localStores/local", "local")


def test_health_reports_no_breaker_and_no_pacing(store: LocalStore) -> None:
    assert store.health() == {
        "backend": "local",
        "store": "localStores/local",
        "breaker": None,
        "pacing": None,
    }


def test_the_admin_lists_without_creating_and_creates_only_when_asked(tmp_path: Path) -> None:
    directory = tmp_path / "local-store"
    admin = LocalAdmin(directory, "mine")
    assert admin.list() == []
    with pytest.raises(StoreNotFound, match="objlibd init"):
        admin.resolve("mine")
    assert not directory.exists()  # neither listing nor resolving made it
    assert admin.create("mine") == "localStores/mine"
    with pytest.raises(PermanentError, match="already exists"):
        admin.create("mine")
    assert admin.resolve("mine") == admin.resolve("localStores/mine") == "localStores/mine"
    with pytest.raises(StoreNotFound):
        admin.resolve("other")
    with LocalStore(directory, "mine") as store:
        put(store, "hello", name="a.txt")
    [info] = admin.list()
    assert (info.name, info.display_name, info.documents) == ("localStores/mine", "mine", 1)
    with pytest.raises(ValueError):
        LocalAdmin(directory, "a/b")


def test_upload_poll_get_list_delete_round_trip(store: LocalStore) -> None:
    up = store.upload(
        io.BytesIO(b"hello world"),
        display_name="Notes.md",
        metadata={"path": "a/Notes.md"},
        mime_type="text/markdown",
    )
    assert isinstance(up, Upload) and up.operation
    assert up.document is not None and NAME.match(up.document), up.document
    assert up.document.split("/")[-1].startswith("notesmd-")

    doc = store.poll(up)
    assert doc.name == up.document
    assert doc.display_name == "Notes.md"
    assert doc.state == ACTIVE
    assert doc.size == len(b"hello world")
    assert doc.metadata == {"path": "a/Notes.md"}
    assert doc.create_time and doc.create_time.endswith("Z")
    assert store.get(doc.name) == doc
    assert store.get(doc.name.split("/")[-1]) == doc  # bare ids are normalised
    assert list(store.list()) == [doc]
    assert store.ensure().documents == 1
    blob = store.directory / "blobs" / doc.name.split("/")[-1]
    assert blob.read_bytes() == b"hello world"

    store.delete(doc.name)
    assert store.get(doc.name) is None
    assert list(store.list()) == []
    assert not blob.exists()
    assert store.search("hello").hits == []


def test_metadata_types_round_trip_exactly_and_persist(tmp_path: Path) -> None:
    meta = {
        "path": "Courses/ITOE/ITOE - Class 09-02.txt",
        "class": "09-02",
        "year": 2024.0,
        "episode": 115.0,
        "ratio": 0.25,
        "tags": ["a", "b", "ß"],
        "empty": [],
    }
    with LocalStore(tmp_path / "s") as s:
        doc = put(s, "x", **meta)
        assert doc.metadata == meta
        assert s.get(doc.name).metadata == meta
    with LocalStore(tmp_path / "s") as s:  # survives a reopen
        (again,) = list(s.list())
    assert again.metadata == meta
    assert type(again.metadata["year"]) is float
    assert type(again.metadata["tags"]) is list


def test_integers_become_floats_like_gemini_numeric_value(store: LocalStore) -> None:
    doc = put(store, "x", week=3)
    assert doc.metadata == {"week": 3.0} and type(doc.metadata["week"]) is float


@pytest.mark.parametrize(
    "meta",
    [
        {"flag": True},
        {"nested": {"a": "b"}},
        {"mixed": ["a", 1]},
        {f"k{i}": "v" for i in range(21)},
    ],
)
def test_metadata_gemini_would_refuse_is_refused(store: LocalStore, meta) -> None:
    with pytest.raises(PermanentError):
        store.upload(io.BytesIO(b"x"), display_name="a.txt", metadata=meta, mime_type="text/plain")
    assert list(store.list()) == []


def test_display_name_limits(store: LocalStore) -> None:
    for bad in ("", "x" * 513):
        with pytest.raises(PermanentError):
            put(store, "x", name=bad)
    assert put(store, "x", name="x" * 512).display_name == "x" * 512


def test_delete_of_absent_document_succeeds(store: LocalStore) -> None:
    store.delete("localStores/local/documents/nothing-000000000000")
    store.delete("fileSearchStores/other/documents/x-000000000000")
    doc = put(store, "x")
    store.delete(doc.name)
    store.delete(doc.name)  # twice: still fine
    assert store.get(doc.name) is None


def test_get_absent_is_none(store: LocalStore) -> None:
    assert store.get("localStores/local/documents/nothing-000000000000") is None
    assert store.get("fileSearchStores/other/documents/x") is None


def test_poll_on_an_unknown_operation_fails(store: LocalStore) -> None:
    with pytest.raises(StoreError):
        store.poll(Upload(operation="localStores/local/operations/x", document=None))
    with pytest.raises(StoreError):
        store.poll(Upload(operation="op", document="localStores/local/documents/x-0"))


def test_poll_completes_at_once_also_for_a_rebuilt_upload(store: LocalStore) -> None:
    meta = {"path": "a/n.txt", "sha256": "h1", "year": 2024.0}
    up = store.upload(
        io.BytesIO(b"hello"), display_name="n.txt", metadata=meta, mime_type="text/plain"
    )
    assert (up.display_name, up.identity) == ("n.txt", {"path": "a/n.txt", "sha256": "h1"})
    doc = store.poll(up)
    assert doc.state == ACTIVE
    rebuilt = Upload(operation=up.operation, document=up.document, display_name="n.txt")
    assert store.poll(rebuilt) == doc
    store.delete(doc.name)
    with pytest.raises(OperationLost):
        store.poll(rebuilt)


def test_list_is_ordered_by_creation_across_pages(store: LocalStore, monkeypatch) -> None:
    monkeypatch.setattr(local, "_PAGE", 2)
    names = [put(store, f"doc {i}", name=f"{9 - i}.txt").name for i in range(7)]
    store.delete(names[3])
    del names[3]
    names.append(put(store, "late", name="0.txt").name)
    assert [d.name for d in store.list()] == names
    assert store.ensure().documents == 7


def test_search_ranks_best_first_with_snippet_and_path(store: LocalStore) -> None:
    filler = "Some unrelated words about grammar and style. " * 20
    many = put(
        store,
        filler + "Induction is the process of generalising. Induction again, induction.",
        name="Objectivist Logic.txt",
        path="Courses/Logic/Objectivist Logic.txt",
    )
    once = put(store, filler + "A brief note on induction.", name="Grammar.txt", path="g.txt")
    put(store, filler, name="Style.txt", path="s.txt")
    no_path = put(store, filler + "induction", name="Loose.txt")

    result = store.search("Induction", limit=10)
    assert result.answer is None
    docs = [h.document for h in result.hits]
    assert set(docs) == {many.name, once.name, no_path.name}
    assert docs[0] == many.name
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    top = result.hits[0]
    assert top.display_name == "Objectivist Logic.txt"
    assert top.path == "Courses/Logic/Objectivist Logic.txt"
    assert "**Induction**" in top.snippet
    assert next(h for h in result.hits if h.document == no_path.name).path is None
    assert len(store.search("induction", limit=1).hits) == 1


def test_documents_matching_every_term_come_first(store: LocalStore) -> None:
    # By bm25 alone `one` wins (its only term is in the weighted name, twice in
    # a short body); a reader asking for both words wants `both` first.
    one = put(store, "Measurement omission, measurement everywhere.", name="Measurement.txt")
    both = put(store, "Concepts are formed by measurement omission. " + "Filler. " * 30)
    common = [put(store, "concepts here", name=f"f{i}.txt").name for i in range(3)]
    hits = [h.document for h in store.search("concepts measurement", limit=10).hits]
    assert hits[:2] == [both.name, one.name]
    assert set(hits[2:]) == set(common)


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"unbalanced',
        "***",
        "(",
        ")",
        "NEAR(a b",
        "a AND",
        "OR",
        "NOT",
        "^start",
        "col:value",
        "body:secret",
        "{display_name}: x",
        "a + b - c",
        "'; DROP TABLE documents; --",
        "\x00",
        "   ",
        "",
        "﹖？！",
        "x" * 5000,
        " ".join(f"w{i}" for i in range(500)),
    ],
)
def test_fts_syntax_in_the_query_is_just_text(store: LocalStore, query: str) -> None:
    put(store, "Epistemology and value: a body of ideas. NOT an OR. secret w1", name="x.txt")
    result = store.search(query)
    assert result.answer is None
    assert store.ensure().documents == 1  # nothing was executed as SQL


@pytest.mark.parametrize("query", ['"', "***", "()", "-- ;", "：｜？", "_", "\t\n"])
def test_punctuation_only_query_has_no_hits(store: LocalStore, query: str) -> None:
    put(store, "Anything at all, with punctuation: ( ) * _ - ;", name="p.txt")
    assert store.search(query).hits == []


def test_operators_are_searched_as_words(store: LocalStore) -> None:
    doc = put(store, "To be or not to be.", name="hamlet.txt")
    put(store, "Something else entirely.", name="other.txt")
    assert [h.document for h in store.search("not OR").hits] == [doc.name]


def test_non_ascii_names_and_text(store: LocalStore) -> None:
    name = "Stoicism vs Objectivism： Is It Under Our Control？ ｜ Épistémè – 6⧸7⧸2010.txt"
    doc = put(store, "Une épistémologie naïve, Ayn Rand’s view.", name=name, path=f"ARI/{name}")
    assert NAME.match(doc.name), doc.name
    assert store.get(doc.name).display_name == name
    hits = store.search("EPISTEMOLOGIE naive").hits  # diacritics and case folded
    assert [h.path for h in hits] == [f"ARI/{name}"]
    assert store.search("épistémè").hits[0].document == doc.name  # found by its name
    assert NAME.match(put(store, "x", name="？？？.txt").name)  # no ASCII at all


def test_the_callers_text_is_indexed_and_the_bytes_kept(store: LocalStore) -> None:
    """The store reads no HTML (or PDF...): it indexes the text the sync extracted."""
    page = (
        b"<html><head><title>Harmony</title></head>"
        b"<body><div class='x'>Visible &amp; readable prose</div></body></html>"
    )
    up = store.upload(
        io.BytesIO(page),
        display_name="page.html",
        metadata={"path": "page.html"},
        mime_type="text/html",
        text="Harmony\nVisible & readable prose",
    )
    doc = store.poll(up)
    assert [h.document for h in store.search("readable prose").hits] == [doc.name]
    for markup in ("div", "class", "amp"):
        assert store.search(markup).hits == [], markup
    assert store.get(doc.name).size == len(page)  # stored exactly as uploaded
    blob = store.directory / "blobs" / doc.name.split("/")[-1]
    assert blob.read_bytes() == page
    bare = put(store, page, name="bare.html", mime="text/html")  # no text: by name only
    assert [h.document for h in store.search("bare").hits] == [bare.name]
    assert [h.document for h in store.search("readable").hits] == [doc.name]


def test_snippets_quote_the_body_not_the_name(store: LocalStore) -> None:
    doc = put(store, "The body begins here and goes on.", name="Galt Speech.txt")
    (hit,) = store.search("galt").hits
    assert hit.document == doc.name and hit.snippet.startswith("The body begins")


def test_pdf_and_docx_are_found_by_name_only(store: LocalStore) -> None:
    pdf = put(store, b"%PDF-1.4 zanzibarword", name="Galt Speech.pdf", mime="application/pdf")
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    put(store, b"PK\x03\x04 zanzibarword", name="Notes.docx", mime=docx)
    assert store.search("zanzibarword").hits == []
    assert [h.document for h in store.search("galt").hits] == [pdf.name]
    blob = store.directory / "blobs" / pdf.name.split("/")[-1]
    assert blob.read_bytes() == b"%PDF-1.4 zanzibarword"


def test_metadata_values_are_searchable(store: LocalStore) -> None:
    doc = put(
        store,
        b"%PDF",
        name="scan.pdf",
        mime="application/pdf",
        course="Perception",
        sha256="deadbeef",
    )
    assert [h.document for h in store.search("perception").hits] == [doc.name]
    assert store.search("deadbeef").hits == []  # identity values are not text


def test_concurrent_uploads_from_threads(store: LocalStore) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    made: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                doc = put(
                    store, f"thread {t} item {i} shared", name=f"t{t}-{i}.txt", path=f"{t}/{i}"
                )
                assert store.get(doc.name) is not None
                if i % 5 == 0:
                    store.search("shared", limit=3)
                with lock:
                    made.append(doc.name)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    listed = [d.name for d in store.list()]
    assert len(listed) == len(set(listed)) == threads * per_thread
    assert set(listed) == set(made)
    assert store.ensure().documents == threads * per_thread
    assert len(store.search("shared", limit=500).hits) == threads * per_thread


def test_leftovers_of_a_crash_are_invisible_and_swept_when_old(tmp_path: Path) -> None:
    """Swept when the store opens, at most once a day (listing the blobs on every
    command would cost what the library holds)."""
    directory = tmp_path / "local-store"
    with LocalStore(directory) as s:
        kept = put(s, "real document", name="real.txt")
    blobs = directory / "blobs"
    old_temp = blobs / ".tmp-crashed-0123456789ab"
    old_orphan = blobs / "orphan-0123456789ab"  # renamed into place, row never written
    young_temp = blobs / ".tmp-inflight-0123456789ab"  # maybe another process's upload
    for p in (old_temp, old_orphan, young_temp):
        p.write_bytes(b"partial")
    hour_ago = time.time() - 2 * 3600
    for p in (old_temp, old_orphan):
        os.utime(p, (hour_ago, hour_ago))
    with LocalStore(directory):
        pass
    assert old_temp.exists(), "swept twice within a day"
    day_ago = time.time() - 86400 - 60
    os.utime(directory / "swept", (day_ago, day_ago))

    with LocalStore(directory) as s:
        assert [d.name for d in s.list()] == [kept.name]
        assert s.ensure().documents == 1
        assert s.get("localStores/local/documents/orphan-0123456789ab") is None
    assert not old_temp.exists() and not old_orphan.exists()
    assert young_temp.exists()
    assert (blobs / kept.name.split("/")[-1]).exists()


def test_failed_row_write_leaves_no_content_behind(store: LocalStore, monkeypatch) -> None:
    def broken(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(local._Transaction, "__enter__", broken)
    with pytest.raises(StoreError):
        put(store, "doomed", name="doomed.txt")
    monkeypatch.undo()
    assert list(store.list()) == []
    assert os.listdir(store.directory / "blobs") == []


def test_another_instance_sees_writes(tmp_path: Path) -> None:
    # The CLI searches while the daemon writes: two connections, one WAL database.
    with LocalStore(tmp_path / "s") as writer, LocalStore(tmp_path / "s") as reader:
        doc = put(writer, "shared knowledge", name="k.txt")
        assert reader.get(doc.name) == doc
        assert [h.document for h in reader.search("knowledge").hits] == [doc.name]


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "s")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError):
        s.ensure()
    with pytest.raises(StoreError):
        put(s, "late", name="late.txt")
    assert os.listdir(tmp_path / "s" / "blobs") == []


def test_upload_of_64_kib_is_cheap(store: LocalStore) -> None:
    body = ("Existence exists, and consciousness is conscious. " * 1400)[:65536].encode()
    durations = []
    for i in range(30):
        start = time.perf_counter()
        store.poll(
            store.upload(
                io.BytesIO(body),
                display_name=f"Lecture {i}.txt",
                metadata={"path": f"c/{i}.txt", "year": 2024.0},
                mime_type="text/plain",
            )
        )
        durations.append(time.perf_counter() - start)
    durations.sort()
    assert durations[len(durations) // 2] < 0.010, durations  # median; measured ~1 ms
