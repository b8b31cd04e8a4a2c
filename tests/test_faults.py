"""The gemini backend under every fault the emulator can inject (issue 3, Tests).

Each sync must converge, or record the one permanent failure, with nothing
lost and no duplicate left. The request log is the witness: retry timing,
upload-first order, force on deletes, v1beta everywhere, and how few calls a
sync makes. The emulator runs on the wall clock here, so the log's times show
real waits (retryDelay); everything else is awaited by condition.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator

import keyring
import keyring.backends.fail
import keyring.core
import pytest
from emulator import Fault, GeminiEmulator
from harness import Harness, filler
from test_sync import make_due

from objlib_daemon.config import StoreConfig, load
from objlib_daemon.workspace import open_workspace


@pytest.fixture
def emulator() -> Iterator[GeminiEmulator]:
    emu = GeminiEmulator(clock=time.time).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def backend() -> str:
    return "gemini"


def starts(h) -> list:
    return h.emulator.find_requests("POST", phase="start")


def listings(h) -> list:
    return h.emulator.find_requests("GET", r"/documents$")


def store_setting(h, **values: object) -> None:
    """Set keys in the [store] table the harness wrote (replacing its own values)."""
    text = h.config_path.read_text()
    anchor = "requests_per_minute = 60000\n"
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}\n"
        text, found = re.subn(rf"(?m)^{key} = .*\n", line, text)
        if not found:
            text = text.replace(anchor, anchor + line)
    h.config_path.write_text(text)


def in_process(h, monkeypatch):
    """The library's workspace opened in this process, as the daemon holds it."""
    h.apply_env(monkeypatch)
    return open_workspace(load(h.config_path))


def no_duplicates(h) -> None:
    for path, docs in h.docs_by_path().items():
        assert len(docs) == 1, (path, [d.name for d in docs])


def rows_sql(h, statement: str) -> list[tuple]:
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        return conn.execute(statement).fetchall()


# --- transient errors: retried, honouring the server's advice ----------------------------


def test_429_with_retry_info_waits_the_advised_delay(h):
    h.write("q/One.txt")
    h.emulator.add_fault(Fault(phase="start", kind="retry_info", retry_delay=0.4, times=2))
    summary = h.sync()
    assert summary["uploaded"] == 1
    tries = starts(h)
    assert [r.status for r in tries] == [429, 429, 200]
    # retry_initial is 0.05 s: only honouring retryDelay explains these gaps.
    assert all(b.time - a.time >= 0.4 for a, b in zip(tries, tries[1:], strict=False))
    h.converged()


def test_429_storm_backs_off_in_the_queue_and_does_not_hot_loop(h, monkeypatch):
    h.write("q/Storm.txt")
    # Longer than the store waits in a thread: the advice goes to the queue.
    storm = h.emulator.add_fault(
        Fault(phase="start", kind="retry_info", retry_delay=900, times=None)
    )
    t0 = time.time()
    summary = h.sync(code=6)
    assert (summary["retrying"], summary["uploaded"]) == (1, 0)
    [(due, error)] = rows_sql(h, "SELECT next_attempt_at, last_error FROM pending_changes")
    assert due >= t0 + 900 and "429" in error
    assert len(starts(h)) == 1
    ws = in_process(h, monkeypatch)
    try:  # the daemon's drain: the row is not due yet, nothing is sent
        assert ws.engine.drain()["uploaded"] == 0
    finally:
        ws.close()
    assert len(starts(h)) == 1
    storm.times = 0
    make_due(h)
    assert h.sync()["uploaded"] == 1
    h.converged()


@pytest.mark.parametrize(
    "fault",
    [
        Fault(phase="start", status=500, times=2),
        Fault(phase="start", status=503, times=1),
        Fault(phase="finalize", status=503, times=1),
        Fault(method="GET", path=r"/operations/", status=503, times=2),
        Fault(phase="start", kind="reset", times=1),
        Fault(phase="finalize", kind="reset", times=1),
        Fault(method="GET", path=r"/operations/", kind="reset", times=1),
        Fault(kind="latency", latency=0.2, times=4),
    ],
    ids=lambda f: f"{f.kind}-{f.status}-{f.phase or f.path}",
)
def test_transient_faults_converge_without_duplicates(h, fault):
    h.emulator.indexing_delay = 0.3  # operations are polled, so GET faults bite
    for i in range(3):
        h.write(f"t/File {i}.txt")
    h.emulator.add_fault(fault)
    summary = h.sync()
    assert summary["uploaded"] == 3 and summary["retrying"] == 0
    assert fault.hits == fault.times  # the fault really happened
    h.converged()


def test_transient_fault_on_the_old_documents_delete_leaves_an_orphan_retried_later(h):
    rel = "t/Replaced.txt"
    h.write(rel)
    h.sync()
    old = h.row(rel)["document"]
    h.write(rel, filler(rel, 3000, "v2"))
    h.emulator.add_fault(Fault(method="DELETE", status=503, times=None))
    summary = h.sync()
    assert (summary["modified"], summary["deleted"]) == (1, 0)
    assert rows_sql(h, "SELECT document FROM orphans") == [(old,)]
    h.emulator.clear_faults()
    assert h.sync("--cleanup-orphans")["orphans_cleaned"] == 1
    h.converged()


# --- permanent and "already done" answers -------------------------------------------------


def test_a_400_for_one_file_fails_that_file_only_and_is_not_retried(h):
    for rel in ("p/Good 1.txt", "p/Broken.txt", "p/Good 2.txt"):
        h.write(rel)
    h.emulator.add_fault(
        Fault(
            phase="start",
            match_display_name="Broken.txt",
            status=400,
            message="Unsupported file type.",
            times=None,
        )
    )
    summary = h.sync(code=6)
    assert (summary["failed"], summary["uploaded"], summary["retrying"]) == (1, 2, 0)
    row = h.row("p/Broken.txt")
    assert row["state"] == "failed" and "Unsupported file type" in row["last_error"]
    assert sorted(h.docs_by_path()) == ["p/Good 1.txt", "p/Good 2.txt"]
    assert len([r for r in starts(h) if r.status == 400]) == 1  # permanent: not retried
    status = h.run("status")
    assert "p/Broken.txt" in status.stdout and "Unsupported file type" in status.stdout
    h.emulator.clear_log()
    # Same content: no hot loop, and still exit 6 while the file is not in the store.
    assert h.sync(code=6)["outstanding"]["failed"] == 1
    assert starts(h) == []
    assert h.row("p/Broken.txt")["state"] == "failed"
    h.emulator.clear_faults()
    h.write("p/Broken.txt", filler("p/Broken.txt", 2500, "fixed"))
    assert h.sync()["uploaded"] == 1  # new content is tried again
    h.converged()


def test_delete_answering_404_is_success(h):
    rel = "d/Gone Already.txt"
    h.write(rel)
    h.sync()
    old = h.row(rel)["document"]
    h.emulator.remove_document(old)  # e.g. an earlier delete whose answer was lost
    h.write(rel, filler(rel, 3000, "v2"))
    summary = h.sync()
    assert (summary["modified"], summary["deleted"]) == (1, 1)
    [delete] = h.emulator.find_requests("DELETE")
    assert delete.status == 404
    assert rows_sql(h, "SELECT count(*) FROM orphans") == [(0,)]
    h.converged()


@pytest.mark.parametrize("times", [1, None])
def test_a_spurious_404_on_the_old_documents_delete_leaves_no_duplicate(h, times):
    """The delete of a replaced document answers 404 while the document stays.
    Taken for "already gone", the old document would be forgotten and stay in
    the store beside its replacement. Checked, it is deleted on a retry, or,
    while the server keeps lying, kept as an orphan until a delete sticks."""
    rel = "d/Replaced Twice.txt"
    h.write(rel)
    h.sync()
    old = h.row(rel)["document"]
    h.write(rel, filler(rel, 3000, "v2"))
    fault = h.emulator.add_fault(Fault(kind="spurious_404_delete", times=times))
    h.sync()
    assert fault.hits >= 1
    if times is None:
        assert rows_sql(h, "SELECT document FROM orphans") == [(old,)]
        assert h.emulator.document(old) is not None
        h.emulator.clear_faults()
        assert h.sync("--cleanup-orphans")["orphans_cleaned"] == 1
    assert h.emulator.document(old) is None
    assert rows_sql(h, "SELECT count(*) FROM orphans") == [(0,)]
    no_duplicates(h)
    h.converged()


def test_operation_that_never_finishes_is_resolved_by_looking_the_document_up(h):
    store_setting(h, operation_timeout=0.3)
    h.write("n/Never Done.txt")
    h.write("n/Fine.txt")
    h.emulator.add_fault(
        Fault(phase="start", match_display_name="Never Done.txt", kind="never_done")
    )
    summary = h.sync()
    assert summary["uploaded"] == 2
    assert len(starts(h)) == 2  # found, not uploaded again
    h.converged()


def test_never_finishing_operation_with_get_404_falls_back_to_a_listing(h):
    """Neither the operation nor the guessed name finds the document: the wait gives
    up (transient), the intent stays, and the next pass's listing adopts it."""
    store_setting(h, operation_timeout=0.3)
    h.write("n/Lost Name.txt")
    h.emulator.add_fault(Fault(phase="start", kind="never_done"))
    h.emulator.add_fault(Fault(method="GET", path=r"/documents/", kind="not_found", times=None))
    summary = h.sync(code=6)
    assert (summary["retrying"], summary["uploaded"]) == (1, 0)
    assert {r.status for r in h.emulator.find_requests("GET", r"/documents/")} == {404}
    make_due(h)
    summary = h.sync()
    assert summary["uploaded"] == 0 and len(starts(h)) == 1  # adopted from the listing
    assert listings(h)
    h.converged()


def await_indexed(h) -> None:
    deadline = time.time() + 10
    while any(d["state"] != "STATE_ACTIVE" for d in h.emulator.documents()):
        assert time.time() < deadline, h.emulator.documents()
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["deadline", "operation_404"])
def test_import_still_indexing_is_adopted_later_not_uploaded_twice(h, how):
    """The operation outlives operation_timeout (or is forgotten: 404) while the
    document is still indexing. It exists, so the retry must end with it, not
    with a copy: the intent survives until a listing shows the document."""
    store_setting(h, operation_timeout=0.3)
    rel = "n/Slow Import.txt"
    h.write(rel)
    h.emulator.indexing_delay = 1.0
    if how == "operation_404":
        h.emulator.add_fault(Fault(method="GET", path=r"/operations/", kind="not_found"))
    summary = h.sync(code=6)
    assert (summary["retrying"], summary["uploaded"]) == (1, 0)
    assert len(starts(h)) == 1
    await_indexed(h)
    make_due(h)
    summary = h.sync()
    assert summary["uploaded"] == 0 and len(starts(h)) == 1  # adopted
    h.converged()


def test_import_still_indexing_at_the_retry_is_waited_on_not_uploaded_again(h):
    """Retried while the first import is still indexing: the retry finds the
    intent with its operation and waits on that import instead of uploading a
    copy (the pipeline's indexing stage is durable)."""
    store_setting(h, operation_timeout=0.3)
    rel = "n/Very Slow Import.txt"
    h.write(rel)
    h.emulator.indexing_delay = 1.5
    h.sync(code=6)
    make_due(h)
    h.run("sync", "--json")  # waits on the same operation (done or not by its deadline)
    assert len(starts(h)) == 1
    await_indexed(h)
    make_due(h)
    assert h.sync()["uploaded"] == 0
    assert len(starts(h)) == 1
    no_duplicates(h)
    h.converged()


def test_finalize_that_lands_but_answers_503_leaves_no_duplicate(h):
    """The first finalize created the document; its answer was a 503, the upload was
    retried and landed again. The sync must end with one document."""
    h.emulator.clear_log()  # init's listing (it counts documents to adopt) is not the sync's
    h.write("f/Twice.txt")
    h.write("f/Once.txt")
    h.emulator.add_fault(Fault(kind="finalize_then_503", match_display_name="Twice.txt"))
    summary = h.sync()
    assert summary["uploaded"] == 2
    assert len(starts(h)) == 3
    assert len(listings(h)) == 1  # one listing resolves the attempt, not one per file
    h.converged()
    # The attempt's intent stays until a listing late enough to show a copy
    # still on its way (engine.INTENT_GRACE); the next sync after that settles it.
    [(ended,)] = rows_sql(h, "SELECT ended_at FROM intents")
    assert ended is not None
    age_intents(h)
    h.sync()
    assert len(listings(h)) == 2
    assert rows_sql(h, "SELECT count(*) FROM intents") == [(0,)]
    h.converged()


def age_intents(h, seconds: float = 3600) -> None:
    """As time passing would: every unfinished upload attempt ended `seconds` ago."""
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(
            "UPDATE intents SET started_at = started_at - ?, ended_at = ended_at - ?",
            (seconds, seconds),
        )


def test_a_copy_the_listing_does_not_show_yet_is_found_by_a_later_listing(h):
    """A finalize landed but answered 503, and the store lists new documents only
    a while later (0.25-1.5 s on the real service): the listing right after the
    repeated upload misses the first copy. It must not be taken as proof that
    nothing landed; a later listing finds the copy and deletes it."""
    h.emulator.listing_delay = 1.0
    h.write("f/Lagging.txt")
    h.emulator.add_fault(Fault(kind="finalize_then_503", match_display_name="Lagging.txt"))
    assert h.sync()["uploaded"] == 1
    assert len(h.emulator.documents()) == 2  # the copy exists, not listed yet
    assert rows_sql(h, "SELECT count(*) FROM intents") == [(1,)]
    time.sleep(1.1)  # the copy is listed now
    age_intents(h, 30)
    h.sync()
    no_duplicates(h)
    assert rows_sql(h, "SELECT count(*) FROM intents") == [(0,)]
    h.converged()


# --- the circuit breaker --------------------------------------------------------------------


def test_breaker_opens_pauses_the_drain_and_closes_after_cooldown(h, monkeypatch):
    store_setting(h, breaker_threshold=2, breaker_cooldown=0.5)
    # The store's breaker alone: with AI enrichment a question already sent
    # to the model is answered before its row is handed back, which can
    # outlast a cooldown this short.
    h.config_path.write_text(h.config_path.read_text() + "\n[enrichment]\nenabled = false\n")
    for i in range(4):
        h.write(f"b/File {i}.txt")
    outage = h.emulator.add_fault(Fault(phase="start", status=503, times=None))
    ws = in_process(h, monkeypatch)
    try:
        ws.engine.reconcile()
        counts = ws.engine.drain(concurrency=1)
        health = ws.store.health()["breaker"]
        assert health["state"] == "open" and health["consecutive_failures"] >= 2
        assert "503" in health["last_error"]
        assert counts["paused"] >= 1 and counts["uploaded"] == 0
        sent = len(starts(h))
        assert sent == 2  # then it failed fast: nothing more went out
        with ws.db.session() as s:  # nothing lost: every file is still queued
            from objlib_daemon.state import queue

            assert queue.depth(s) == 4
        outage.times = 0
        deadline = time.time() + 10
        while ws.store.health()["breaker"]["state"] == "open":
            assert time.time() < deadline
            time.sleep(0.05)
        make_due(h)
        counts = ws.engine.drain()
        assert counts["uploaded"] == 4
        assert ws.store.health()["breaker"]["state"] == "closed"
    finally:
        ws.close()
    h.converged()


def test_breaker_open_makes_a_one_shot_sync_say_so(h):
    store_setting(h, breaker_threshold=2, breaker_cooldown=60)
    for i in range(3):
        h.write(f"b/File {i}.txt")
    h.emulator.add_fault(Fault(phase="start", status=503, times=None))
    result = h.run("sync", "--json")
    assert result.exit_code == 6, result.output
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "incomplete"
    assert rows_sql(h, "SELECT count(*) FROM pending_changes") == [(3,)]


# --- what goes over the wire ------------------------------------------------------------------


def test_api_economy_order_force_and_v1beta(h):
    n = 4
    for i in range(n):
        h.write(f"e/File {i}.txt")
    h.emulator.clear_log()
    assert h.sync()["uploaded"] == n
    assert len(starts(h)) == n and listings(h) == []

    h.emulator.clear_log()
    summary = h.sync()
    assert summary["unchanged"] == n and h.emulator.requests == []

    h.write("e/File 0.txt", filler("e/File 0.txt", 3000, "v2"))
    h.emulator.clear_log()
    assert h.sync()["modified"] == 1
    log = h.emulator.requests
    [start] = starts(h)
    [delete] = h.emulator.find_requests("DELETE")
    assert log.index(start) < log.index(delete)  # upload first
    assert delete.query.get("force") == "True"
    assert listings(h) == []
    assert all(r.api_version == "v1beta" for r in log)
    h.converged()


def test_every_request_of_a_busy_sync_uses_v1beta(h):
    h.emulator.indexing_delay = 0.2
    for i in range(3):
        h.write(f"v/File {i}.txt")
    h.sync()
    h.write("v/File 0.txt", filler("v/File 0.txt", 3000, "v2"))
    h.sync()
    assert h.run("verify").exit_code == 0
    versions = {r.api_version for r in h.emulator.requests}
    assert versions == {"v1beta"}
    kinds = {(r.method, r.phase) for r in h.emulator.requests}
    assert {("POST", "start"), ("POST", "finalize"), ("GET", None), ("DELETE", None)} <= kinds


# --- credentials and store identity ---------------------------------------------------------


@pytest.fixture
def no_keyring(monkeypatch):
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(keyring.backends.fail.Keyring())


def test_missing_api_key_exits_78_before_any_request(h, no_keyring):
    h.write("k/File.txt")
    h.env["GEMINI_API_KEY"] = None
    h.env["GOOGLE_API_KEY"] = None
    h.emulator.clear_log()
    result = h.run("sync")
    assert result.exit_code == 78, result.output
    assert "objlibd auth set" in result.stderr and "GEMINI_API_KEY" in result.stderr
    assert h.emulator.requests == []
    assert h.row("k/File.txt") is None


def test_wrong_api_key_exits_78_and_stops(h):
    wrong = "AIzaWRONG-objlibd-0000000000000000000"
    for i in range(3):
        h.write(f"k/File {i}.txt")
    h.env["GEMINI_API_KEY"] = wrong
    h.emulator.clear_log()
    result = h.run("sync")
    assert result.exit_code == 78, result.output
    assert "rejected the API key" in result.stderr and "objlibd auth set" in result.stderr
    assert wrong not in result.output and wrong not in result.stderr
    # One per worker at most: no retries, no other files.
    assert 1 <= len(starts(h)) <= StoreConfig().concurrency
    assert {r.status for r in h.emulator.requests} == {400}
    assert not rows_sql(h, "SELECT path FROM files WHERE state = 'failed'")
    assert rows_sql(h, "SELECT count(*) FROM pending_changes") == [(3,)]


@pytest.mark.parametrize("name", ["No Such Store", "fileSearchStores/nosuchstore-000000000000"])
def test_unknown_store_at_init_exits_78(tmp_path, emulator, name):
    harness = Harness(tmp_path, "gemini", emulator)
    harness.env["GEMINI_API_KEY"] = emulator.api_key
    harness.config_path.write_text(
        f'[library]\nroot = "{harness.root}"\n\n[store]\nbackend = "gemini"\n'
        f'name = "{name}"\nbase_url = "{emulator.url}"\n',
        encoding="utf-8",
    )
    result = harness.run("init", "--library", str(harness.root))
    assert result.exit_code == 78, result.output
    assert "objlibd store create" in result.stderr and name in result.stderr
    assert emulator.stores() == []  # never created implicitly


def test_store_mismatch_exits_4(h):
    other = h.emulator.create_store("another")
    result = h.run("init", "--library", str(h.root), "--store", other)
    assert result.exit_code == 4, result.output
    assert h.store_resource in result.stderr
    h.write("m/File.txt")
    h.config_path.write_text(h.config_path.read_text().replace(h.store_resource, other))
    h.emulator.clear_log()
    result = h.run("sync")
    assert result.exit_code == 4
    assert other in result.stderr and h.store_resource in result.stderr
    assert h.emulator.requests == []
