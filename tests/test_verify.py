"""`objlibd verify [--repair]` (issue 3, item 4): every drift kind found, exactly ours fixed.

Drift is injected behind the client's back: on gemini through the emulator
(add_document / remove_document / set_state), on local through the LocalStore
itself. A "crash between a finished upload and its commit" is simulated by
leaving what such a crash leaves: a document with our identity metadata and,
for the applier's own crash window, an intent row.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Callable

import pytest
from harness import filler
from test_sync import replace_with_deletes_failing, unfail_deletes

from objlib_daemon.stores.local import LocalStore

# --- helpers ---------------------------------------------------------------------------


def library_id(h) -> str:
    with h.db() as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'library_id'").fetchone()[0]


def identity(h, rel: str, content: bytes) -> dict[str, str]:
    return {
        "library_id": library_id(h),
        "path": rel,
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def inject(h, display_name: str, metadata: dict, content: bytes, state: str | None = None) -> str:
    """Put a document into the store without objlibd knowing; returns its name."""
    if h.backend == "gemini":
        return h.emulator.add_document(
            h.store_resource, display_name, metadata, content, state or "STATE_ACTIVE"
        )
    store = LocalStore(h.state_dir / "local-store")
    try:
        upload = store.upload(
            io.BytesIO(content),
            display_name=display_name,
            metadata=metadata,
            mime_type="text/plain",
        )
        return upload.document
    finally:
        store.close()


def remove(h, document: str) -> None:
    if h.backend == "gemini":
        h.emulator.remove_document(document)
    else:
        store = LocalStore(h.state_dir / "local-store")
        try:
            store.delete(document)
        finally:
            store.close()


def verify(h, *args: str, code: int = 0) -> dict:
    result = h.run("verify", "--json", *args)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return json.loads(result.stdout)


def kinds(report: dict) -> set[tuple[str, str | None]]:
    return {(f["kind"], f["path"]) for f in report["findings"]}


def doc_names(h) -> set[str]:
    return {d.name for d in h.docs()}


def sql(h, statement: str, *params) -> None:
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(statement, params)


@pytest.fixture
def uploads(h, monkeypatch) -> Callable[[], int]:
    """How many uploads the client has started so far (emulator log, or counted locally)."""
    if h.backend == "gemini":
        return lambda: len(h.emulator.find_requests("POST", phase="start"))
    calls: list[str] = []
    original = LocalStore.upload

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("display_name", ""))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "upload", counting)
    return lambda: len(calls)


# --- the tests -------------------------------------------------------------------------


def test_a_synced_library_verifies_clean(h):
    h.write("a/One.txt")
    h.write("a/Two.txt")
    h.sync()
    report = verify(h)
    assert report["clean"] and report["findings"] == []
    assert (report["documents"], report["ours"], report["recorded"]) == (2, 2, 2)
    text = h.run("verify")
    assert text.exit_code == 0 and "clean" in text.stdout


def test_every_drift_kind_is_found_and_repair_fixes_exactly_ours(h):
    for rel in ("a/Keep.txt", "a/Absent.txt", "a/Dup.txt", "a/Super.txt", "a/Failed.txt"):
        h.write(rel)
    h.sync()
    before = {rel: row["document"] for rel, row in h.rows().items()}

    # Recorded but absent.
    remove(h, before["a/Absent.txt"])
    # A second copy of a recorded document (a retried upload whose first try landed).
    dup_content = filler("a/Dup.txt")
    extra_copy = inject(h, "Dup.txt", identity(h, "a/Dup.txt", dup_content), dup_content)
    # A superseded version whose delete was lost.
    old = filler("a/Super.txt", 1500, "v0")
    superseded = inject(h, "Super.txt", identity(h, "a/Super.txt", old), old)
    # A leftover for a path the database has never heard of.
    gone = filler("gone/Old.txt")
    leftover = inject(h, "Old.txt", identity(h, "gone/Old.txt", gone), gone)
    # Foreign: another library's document for the same path, and a hand-made one.
    other_lib = inject(
        h, "Keep.txt", {"library_id": "another-library", "path": "a/Keep.txt"}, b"x" * 2000
    )
    by_hand = inject(h, "notes by hand.txt", {}, b"y" * 2000)
    foreign = {other_lib, by_hand}
    # The store failed to index a recorded document (only Gemini has that state).
    if h.backend == "gemini":
        h.emulator.set_state(before["a/Failed.txt"], "STATE_FAILED")
        h.emulator.clear_log()
    db_before = (h.state_dir / "objlibd.db").read_bytes()

    report = verify(h, code=6)
    expected = {
        ("absent", "a/Absent.txt"),
        ("unrecorded", "a/Dup.txt"),
        ("duplicate", "a/Dup.txt"),
        ("unrecorded", "a/Super.txt"),
        ("duplicate", "a/Super.txt"),
        ("unrecorded", "gone/Old.txt"),
        ("foreign", "a/Keep.txt"),
        ("foreign", None),
    }
    if h.backend == "gemini":
        expected.add(("failed", "a/Failed.txt"))
    assert kinds(report) == expected
    assert not report["clean"]
    by_doc = {f["document"]: f for f in report["findings"] if f["kind"] != "duplicate"}
    assert {by_doc[d]["action"] for d in (extra_copy, superseded, leftover)} == {"delete"}
    assert by_doc[before["a/Absent.txt"]]["action"] == "requeue"
    assert {by_doc[d]["action"] for d in foreign} == {None}
    dups = {f["path"]: f["document"] for f in report["findings"] if f["kind"] == "duplicate"}
    assert dups == {"a/Dup.txt": before["a/Dup.txt"], "a/Super.txt": before["a/Super.txt"]}
    assert report["counts"]["foreign"] == 2 and report["ours"] == report["documents"] - 2
    # A plain verify changes nothing: not the database, not the store.
    assert (h.state_dir / "objlibd.db").read_bytes() == db_before
    if h.backend == "gemini":
        assert {r.method for r in h.emulator.requests} == {"GET"}
    text = h.run("verify")
    assert text.exit_code == 6
    assert "a/Super.txt" in text.stdout and superseded in text.stdout
    assert "drift found" in text.stdout and "--repair" in text.stdout

    report = verify(h, "--repair")
    repaired = report["repair"]
    assert sorted(repaired["deleted"]) == sorted([extra_copy, superseded, leftover])
    assert repaired["complete"] and repaired["not_deleted"] == []
    expected_requeued = ["a/Absent.txt"] + (["a/Failed.txt"] if h.backend == "gemini" else [])
    assert sorted(repaired["requeued"]) == expected_requeued
    assert repaired["drain"]["uploaded"] == len(expected_requeued)
    # The failed document is replaced upload-first by the drain, then deleted.
    assert repaired["drain"]["deleted"] == len(expected_requeued) - 1
    rows = h.rows()
    for rel in ("a/Keep.txt", "a/Dup.txt", "a/Super.txt"):
        assert rows[rel]["document"] == before[rel]  # the recorded one is kept
    assert rows["a/Absent.txt"]["document"] not in (None, before["a/Absent.txt"])
    assert foreign <= doc_names(h)  # never touched
    if h.backend == "gemini":
        deletes = h.emulator.find_requests("DELETE")
        assert not {r.path.split("/v1beta/", 1)[1] for r in deletes} & foreign
        assert all(r.query.get("force") == "True" for r in deletes)
        assert rows["a/Failed.txt"]["document"] != before["a/Failed.txt"]
        assert before["a/Failed.txt"] not in doc_names(h)

    report = verify(h)
    assert report["clean"] and kinds(report) == {("foreign", "a/Keep.txt"), ("foreign", None)}
    with h.db() as conn:
        assert conn.execute("SELECT count(*) FROM orphans").fetchone()[0] == 0
    for document in foreign:
        remove(h, document)
    h.converged()


def test_listing_lag_is_not_absence(h):
    """A recorded document the listing does not show yet is looked up before it is
    called absent; re-uploading it would leave a duplicate."""
    if h.backend != "gemini":
        pytest.skip("the local store lists every document at once")
    h.write("lag/Fresh.txt")
    h.sync()
    document = h.row("lag/Fresh.txt")["document"]
    h.emulator.listing_delay = 10**9  # documents are indexed, but not listed yet
    h.emulator.clear_log()
    report = verify(h, "--repair")
    assert report["clean"] and report["documents"] == 0
    assert report["repair"]["requeued"] == [] and report["repair"]["deleted"] == []
    assert [r.path for r in h.emulator.find_requests("GET", "/documents/")] == [
        f"/v1beta/{document}"
    ]
    assert h.row("lag/Fresh.txt")["document"] == document


@pytest.mark.parametrize("how", ["verify", "sync"])
@pytest.mark.parametrize("scenario", ["new", "replace"])
def test_crash_between_upload_and_commit_is_adopted_not_uploaded_again(h, uploads, how, scenario):
    """What the applier leaves when it dies after the import finished: its intent row
    and a document with our identity. verify --repair and a plain sync (through
    resolve_intents) both adopt the document; nothing is uploaded again."""
    rel = "crash/Lecture 01.txt"
    old_document = None
    if scenario == "replace":
        h.write(rel)
        h.sync()
        old_document = h.row(rel)["document"]
    content = filler(rel, 2600, "the version being uploaded")
    h.write(rel, content)
    sha = hashlib.sha256(content).hexdigest()
    sql(h, "INSERT INTO intents (path, sha256, started_at) VALUES (?, ?, ?)", rel, sha, time.time())
    landed = inject(h, "Lecture 01.txt", identity(h, rel, content), content)
    started = uploads()

    if how == "verify":
        report = verify(h, code=6)
        [finding] = [f for f in report["findings"] if f["kind"] == "unrecorded"]
        assert (finding["document"], finding["action"]) == (landed, "adopt")
        report = verify(h, "--repair")
        assert report["repair"]["adopted"] == [rel]
        assert report["repair"]["drain"]["uploaded"] == 0
    else:
        summary = h.sync()
        assert summary["uploaded"] == 0

    assert uploads() == started  # adopted, not uploaded again
    row = h.row(rel)
    assert (row["document"], row["upload_sha256"], row["state"]) == (landed, sha, "indexed")
    assert row["mtime_ns"] is not None  # the applier re-examined the file after adopting
    assert doc_names(h) == {landed}  # the replaced document is gone too
    assert old_document is None or old_document not in doc_names(h)
    if how == "sync":
        # The crash was just now: a second copy could still be on its way, so
        # the intent waits for a later listing (engine.INTENT_GRACE).
        with h.db() as conn:
            assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 1
        sql(h, "UPDATE intents SET started_at = started_at - 7200")  # > MAX_ATTEMPT
        assert h.sync()["uploaded"] == 0
    with h.db() as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
    assert verify(h)["clean"]
    h.converged()


def test_a_row_without_document_adopts_the_matching_upload(h, uploads):
    """The commit that records the document was lost, the file row stayed without one
    (e.g. a state database restored from a backup): same content → adopt."""
    rel = "crash/No Document.txt"
    content = filler(rel)
    h.write(rel, content)
    sha = hashlib.sha256(content).hexdigest()
    now = time.time()
    sql(
        h,
        "INSERT INTO files (path, sha256, state, attempts, created_at, updated_at)"
        " VALUES (?, ?, 'pending', 0, ?, ?)",
        rel,
        sha,
        now,
        now,
    )
    landed = inject(h, "No Document.txt", identity(h, rel, content), content)
    started = uploads()
    report = verify(h, "--repair")
    assert report["repair"]["adopted"] == [rel] and report["repair"]["deleted"] == []
    assert uploads() == started
    assert h.row(rel)["document"] == landed
    assert h.sync()["uploaded"] == 0
    h.converged()


def test_different_content_is_not_adopted(h):
    rel = "crash/Changed Since.txt"
    h.write(rel)
    now = time.time()
    sql(
        h,
        "INSERT INTO files (path, sha256, state, attempts, created_at, updated_at)"
        " VALUES (?, ?, 'pending', 0, ?, ?)",
        rel,
        hashlib.sha256(filler(rel)).hexdigest(),
        now,
        now,
    )
    stale = filler(rel, 1800, "an older version")
    landed = inject(h, "Changed Since.txt", identity(h, rel, stale), stale)
    report = verify(h, code=6)
    [finding] = report["findings"]
    assert (finding["kind"], finding["action"]) == ("unrecorded", "delete")
    report = verify(h, "--repair")
    assert report["repair"]["deleted"] == [landed] and report["repair"]["adopted"] == []
    assert h.sync()["uploaded"] == 1
    h.converged()


def test_pending_deletion_is_reported_and_retried_by_repair(h, monkeypatch):
    rel = "o/Replaced.txt"
    old = replace_with_deletes_failing(h, monkeypatch, rel)
    report = verify(h)  # recorded and retried by the sweep: reported, not drift
    assert kinds(report) == {("pending_deletion", rel)}
    report = verify(h, "--repair", code=6)  # the delete still fails: kept recorded
    assert report["repair"]["not_deleted"] == [old]
    unfail_deletes(h, monkeypatch)
    report = verify(h, "--repair")
    assert report["repair"]["deleted"] == [old]
    assert verify(h)["findings"] == []
    h.converged()


def test_repair_rechecks_the_database_before_deleting(h, monkeypatch):
    """A document recorded between audit and repair is not a stray any more."""
    from objlib_daemon.config import load
    from objlib_daemon.sync.verify import audit, repair
    from objlib_daemon.workspace import open_workspace

    h.apply_env(monkeypatch)
    rel = "race/Late.txt"
    content = filler(rel)
    h.write(rel, content + b" edited since")  # not this content: a stray, not ours to adopt
    landed = inject(h, "Late.txt", identity(h, rel, content), content)
    ws = open_workspace(load(h.config_path))
    try:
        report = audit(ws.db, ws.store, ws.library)
        assert [(f.kind, f.action) for f in report.findings] == [("unrecorded", "delete")]
        now = time.time()
        sql(
            h,
            "INSERT INTO files (path, sha256, state, document, upload_sha256, attempts,"
            " created_at, updated_at) VALUES (?, ?, 'indexed', ?, ?, 0, ?, ?)",
            rel,
            hashlib.sha256(content).hexdigest(),
            landed,
            hashlib.sha256(content).hexdigest(),
            now,
            now,
        )
        result = repair(ws.db, ws.store, ws.library, report)
    finally:
        ws.close()
    assert (result.skipped, result.deleted, result.complete) == ([landed], [], False)
    assert landed in doc_names(h)


def test_daemon_entry_point_reports_and_repairs(h, monkeypatch):
    """`audit_engine` is what the daemon's weekly job calls with its Engine."""
    from objlib_daemon.config import load
    from objlib_daemon.sync.verify import audit_engine
    from objlib_daemon.workspace import open_workspace

    h.apply_env(monkeypatch)
    h.write("d/Kept.txt")
    h.sync()
    stale = filler("d/Kept.txt", 1500, "old")
    stray = inject(h, "Kept.txt", identity(h, "d/Kept.txt", stale), stale)
    ws = open_workspace(load(h.config_path))
    try:
        summary = audit_engine(ws.engine)
        assert not summary["clean"] and summary["repair"] is None
        assert stray in doc_names(h)
        summary = audit_engine(ws.engine, repair=True)
        assert summary["repair"]["deleted"] == [stray] and summary["repair"]["complete"]
        json.dumps(summary)  # the daemon shows it in its status
        assert audit_engine(ws.engine)["clean"]
    finally:
        ws.close()
    h.converged()
