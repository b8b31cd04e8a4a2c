"""Hostile round two (issue 12): a lost database, lying proxies, failures with an
outside cause, a vanished store, and the exit codes that tell each apart.

Each test drives the real CLI (and, on gemini, the real SDK against
tests/emulator.py) and would fail without the fix it names (F1, F2, F3, F6).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import pytest
from emulator import Fault, GeminiEmulator
from harness import Harness, filler

from objlib_daemon.config import load
from objlib_daemon.errors import CONFIG, SOME_FAILED, STORE_UNAVAILABLE
from objlib_daemon.stores.gemini import make_client

FILES = [f"lost/Lecture {i:02}.txt" for i in range(20)]


def uploads(h: Harness) -> int:
    """Uploads the store received (on the embedded store: documents created)."""
    if h.backend == "gemini":
        return len(h.emulator.find_requests("POST", phase="start"))
    return len(h.docs())


def lose_database(h: Harness) -> None:
    """What a user does after a damaged database: move it aside."""
    for suffix in ("", "-wal", "-shm"):
        db = h.state_dir / f"objlibd.db{suffix}"
        if db.exists():
            db.rename(db.with_name(db.name + ".lost"))


def listings(h: Harness) -> int:
    """Listings begun (a listing's later pages carry a pageToken)."""
    found = h.emulator.find_requests("GET", r"/documents$")
    return len([r for r in found if "pageToken" not in r.query])


def synced(h: Harness) -> None:
    for rel in FILES:
        h.write(rel)
    assert h.sync()["uploaded"] == len(FILES)
    if h.emulator is not None:
        h.emulator.clear_log()


# --- F1: adoption by identity ------------------------------------------------------------


def test_lost_database_then_init_and_sync_adopts_every_document(h):
    synced(h)
    before = uploads(h)
    lose_database(h)
    result = h.run("init", "--library", str(h.root), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["adoptable"] == len(FILES)
    if h.emulator is not None:
        h.emulator.clear_log()
    summary = h.sync()
    assert (summary["adopted"], summary["uploaded"], summary["deleted"]) == (len(FILES), 0, 0)
    assert uploads(h) == before
    h.converged()
    if h.emulator is not None:  # one listing for the whole pass, not one per file
        assert listings(h) == 1
        h.emulator.clear_log()
    again = h.sync()  # steady state: no listing, nothing to do
    assert again["unchanged"] == len(FILES) and again["adopted"] == 0
    if h.emulator is not None:
        assert listings(h) == 0
    assert all(r["state"] == "indexed" for r in h.rows().values())


def test_a_duplicate_left_by_the_old_bug_is_deleted_when_its_twin_is_adopted(h):
    synced(h)
    lose_database(h)
    h.run("init", "--library", str(h.root))
    # Before the fix, a sync here uploaded every file again: the store had two
    # copies of each. Make one such copy by hand and lose the database again.
    h.sync()
    rel = FILES[0]
    copy = h.row(rel)["document"]
    lose_database(h)
    h.run("init", "--library", str(h.root))
    summary = h.sync()
    assert summary["uploaded"] == 0 and summary["adopted"] == len(FILES)
    assert h.row(rel)["document"] == copy
    h.converged()


def test_rebuild_sets_the_damaged_database_aside_and_adopts(h):
    synced(h)
    db = h.state_dir / "objlibd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result = h.run("init", "--library", str(h.root), "--rebuild")
    assert result.exit_code == 0, result.output
    assert "set aside" in result.stdout and f"holds {len(FILES)} documents" in result.stdout
    assert list(h.state_dir.glob("objlibd.db.broken-*"))
    summary = h.sync()
    assert summary["uploaded"] == 0 and summary["adopted"] == len(FILES)
    h.converged()


def test_lost_database_then_verify_repair_deletes_nothing(h):
    synced(h)
    lose_database(h)
    h.run("init", "--library", str(h.root))
    result = h.run("verify", "--repair", "--json")
    assert result.exit_code in (0, SOME_FAILED), result.output
    report = json.loads(result.stdout)
    assert report["repair"]["deleted"] == [], report
    assert len(report["repair"]["adopted"]) == len(FILES)
    h.converged()
    assert h.sync()["uploaded"] == 0
    h.converged()


def test_a_changed_file_is_not_adopted_by_identity(h):
    synced(h)
    lose_database(h)
    h.run("init", "--library", str(h.root))
    h.write(FILES[3], filler(FILES[3], 3000, "edited while the database was lost"))
    summary = h.sync()
    assert (summary["adopted"], summary["uploaded"]) == (len(FILES) - 1, 1)
    # The stale document of the edited file is left to verify (it holds no row).
    result = h.run("verify", "--repair", "--json")
    assert len(json.loads(result.stdout)["repair"]["deleted"]) == 1
    h.converged()


# --- on gemini, through the real SDK: faults with an outside cause ----------------------


@pytest.fixture
def g(tmp_path) -> Iterator[Harness]:
    """An initialised gemini library; the emulator runs on the wall clock."""
    emu = GeminiEmulator(clock=time.time).start()
    try:
        harness = Harness(tmp_path, "gemini", emu)
        harness.env["GEMINI_API_KEY"] = emu.api_key
        assert harness.init().exit_code == 0
        yield harness
    finally:
        emu.stop()


def starts(h: Harness) -> int:
    return len(h.emulator.find_requests("POST", phase="start"))


def age(h: Harness, seconds: float = 3 * 86400) -> None:
    """As time passing would: upload attempts ended, and files failed, long ago."""
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(
            "UPDATE intents SET started_at = started_at - ?, ended_at = ended_at - ?",
            (seconds, seconds),
        )
        conn.execute("UPDATE files SET updated_at = updated_at - ?", (seconds,))


def no_failed_rows(h: Harness) -> None:
    assert [p for p, r in h.rows().items() if r["state"] != "indexed"] == []


def test_quota_reached_then_raised_converges_and_exits_6_until_then(g):
    for i in range(3):
        g.write(f"q/Early {i}.txt")
    g.sync()
    for i in range(4):
        g.write(f"q/Late {i}.txt")
    g.emulator.add_fault(Fault(phase="start", kind="storage_quota", times=None))
    for _ in range(2):  # every time, not only on the pass that met the quota
        result = g.run("sync")
        assert result.exit_code == SOME_FAILED, result.output
        assert "4 waiting" in result.stdout and "storage" in result.stdout, result.stdout
    g.emulator.clear_faults()  # the quota was raised
    summary = g.sync()
    assert summary["uploaded"] == 4 and summary["outstanding"]["waiting"] == 0
    g.converged()
    no_failed_rows(g)


def test_code_13_indexing_failure_then_healthy_converges(g):
    g.write("i/Fine.txt")
    g.write("i/Flaky.txt")
    g.emulator.add_fault(
        Fault(kind="operation_error", rpc_code=13, match_display_name="Flaky.txt")
    )
    summary = g.sync(code=SOME_FAILED)
    assert summary["failed"] == 0 and summary["outstanding"]["waiting"] == 1
    assert g.sync()["uploaded"] == 1  # healthy again, without --force
    age(g)  # the FAILED documents the failures left are settled by a later listing
    g.sync()
    g.converged()
    no_failed_rows(g)


@pytest.mark.parametrize("how", ["flag", "schedule", "settings"])
def test_a_refusal_whose_cause_went_is_retried_without_force(g, how):
    g.write("s/Big.txt", size=6000)
    g.emulator.add_fault(
        Fault(
            phase="start",
            match_display_name="Big.txt",
            status=400,
            message="Document size exceeds the limit.",
            times=None,
        )
    )
    g.sync(code=SOME_FAILED)
    for _ in range(2):  # exit 6 every time, and no hot loop on the same content
        left = g.sync(code=SOME_FAILED)["outstanding"]
        assert left["failed"] == 1 and "size exceeds" in left["examples"][0], left
    assert starts(g) == 1
    g.emulator.clear_faults()  # the limit was lifted
    args: tuple[str, ...] = ()
    if how == "flag":
        args = ("--retry-failed",)
    elif how == "schedule":  # [sync] retry_failed_after passed
        age(g)
    else:  # any change to the settings that decide refusals
        text = g.config_path.read_text().replace("[library]\n", '[library]\nmax_size = 90000000\n')
        g.config_path.write_text(text)
    assert g.sync(*args)["uploaded"] == 1
    g.converged()
    no_failed_rows(g)


def test_a_failed_import_is_recorded_and_its_document_deleted(g):
    """The FAILED document a refused import leaves is recorded (its intent stays)
    and deleted by recovery's listing, not left for verify to call a crash leftover."""
    g.write("v/Refused.txt")
    g.emulator.add_fault(
        Fault(kind="operation_error", rpc_code=3, match_display_name="Refused.txt")
    )
    assert g.sync(code=SOME_FAILED)["failed"] == 1
    assert g.emulator.find_requests("DELETE", r"/documents/")
    assert g.docs() == []
    report = json.loads(g.run("verify", "--json").stdout)
    assert report["counts"]["unrecorded"] == 0, report


def test_verify_reports_a_failed_stray_and_repair_requeues_its_file(g):
    g.write("v/Retried.txt")
    g.sync()
    lib = g.docs()[0].metadata["library_id"]
    sha = g.row("v/Retried.txt")["upload_sha256"]
    stray = g.emulator.add_document(
        g.store_resource,
        "Retried.txt",
        {"library_id": lib, "path": "v/Retried.txt", "sha256": sha},
        b"x" * 2048,
        "STATE_FAILED",
    )
    report = json.loads(g.run("verify", "--json").stdout)
    assert report["counts"]["failed"] == 1 and report["counts"]["unrecorded"] == 0, report
    result = g.run("verify", "--repair", "--json")
    repaired = json.loads(result.stdout)["repair"]
    assert repaired["deleted"] == [stray] and repaired["requeued"] == ["v/Retried.txt"]
    g.converged()
    no_failed_rows(g)


def test_verify_reports_a_document_stuck_pending(g):
    g.write("p/Stuck.txt")
    g.sync()
    g.emulator.set_state(g.row("p/Stuck.txt")["document"], "STATE_PENDING")
    result = g.run("verify", "--json")
    assert json.loads(result.stdout)["counts"]["pending"] == 1


# --- F2: an HTML 200 from a proxy is transient --------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(phase="finalize", kind="html_200", match_display_name="Proxied.txt"),
        Fault(method="GET", path="/operations/", kind="html_200", times=3),
    ],
    ids=["finalize after effect", "operations.get"],
)
def test_an_html_200_converges_with_no_duplicate_and_no_failure(g, fault):
    g.emulator.indexing_delay = 0.3  # operations are polled
    for rel in ("h/Proxied.txt", "h/Other.txt"):
        g.write(rel)
    g.emulator.add_fault(fault)
    for _ in range(3):
        result = g.run("sync", "--json")
        assert result.exit_code in (0, SOME_FAILED), result.output
        if result.exit_code == 0:
            break
        age(g)
    assert result.exit_code == 0, result.output
    age(g)
    g.sync()  # settles a copy the proxy's page hid, if any
    g.converged()
    no_failed_rows(g)


# --- F6: errors and exit codes ------------------------------------------------------------


def test_the_store_deleted_on_the_server_stops_sync_and_verify_with_the_fix(g):
    g.write("d/One.txt")
    g.sync()
    g.write("d/One.txt", filler("d/One.txt", 3000, "edited"))
    client = make_client(g.emulator.api_key, load(g.config_path).store.base_url)
    client.file_search_stores.delete(name=g.store_resource, config={"force": True})
    for args in (["sync"], ["verify"]):
        result = g.run(*args)
        assert result.exit_code == CONFIG, (args, result.output)
        assert "objlibd store create" in result.stderr, result.stderr
    assert g.row("d/One.txt")["state"] == "indexed"  # not a per-file failure


def test_the_daemon_pauses_remote_work_when_the_store_was_deleted(tmp_path, monkeypatch):
    from daemon_helpers import Env, wait_until, write

    emu = GeminiEmulator().start()
    env = Env(tmp_path / "lib", backend="gemini", emulator=emu)
    env.apply_env(monkeypatch)
    try:
        write(env.root / "d" / "One.txt", "one")
        env.init()
        env.start()
        env.wait_converged()
        client = make_client(emu.api_key, env.config().store.base_url)
        client.file_search_stores.delete(name=env.store_resource, config={"force": True})
        write(env.root / "d" / "Two.txt", "two, after the store went")
        status = wait_until(
            lambda: (s := env.status())["daemon"]["state"] == "paused" and s,
            timeout=30,
            what="the daemon paused on the vanished store",
        )
        assert "objlibd store create" in json.dumps(status["daemon"]), status["daemon"]
        assert env.db("SELECT count(*) FROM files WHERE state = 'failed'") == [(0,)]
        assert env.stop() == 0
    finally:
        env.close()
        emu.stop()


def test_persistent_5xx_on_the_listing_is_a_transient_exit_code(g):
    g.write("l/One.txt")
    g.sync()
    g.emulator.add_fault(Fault(method="GET", path=r"/documents$", status=503, times=None))
    result = g.run("verify")
    assert result.exit_code == STORE_UNAVAILABLE, result.output
    assert "try again later" in result.stderr


def test_an_ambiguous_store_name_at_init_is_a_permanent_error(tmp_path):
    emu = GeminiEmulator().start()
    try:
        emu.create_store("Twin")
        emu.create_store("Twin")
        harness = Harness(tmp_path, "gemini", emu)
        harness.env["GEMINI_API_KEY"] = emu.api_key
        harness.config_path.write_text(
            f'[library]\nroot = "{harness.root}"\n\n[store]\nbackend = "gemini"\n'
            f'name = "Twin"\nbase_url = "{emu.url}"\n',
            encoding="utf-8",
        )
        result = harness.run("init", "--library", str(harness.root))
        assert result.exit_code == CONFIG, result.output
        assert "2 stores are named 'Twin'" in result.stderr
        assert "try again later" not in result.stderr
    finally:
        emu.stop()


def test_doctor_finds_garbage_in_the_middle_of_the_database(h):
    for i in range(40):
        h.write(f"g/File {i}.txt")
    h.sync()
    db = h.state_dir / "objlibd.db"
    data = db.read_bytes()
    half = len(data) // 2 // 4096 * 4096
    db.write_bytes(data[:half] + b"\xa5" * (len(data) - half))
    result = h.run("doctor")
    assert result.exit_code == 1, result.output
    assert "is damaged" in result.output and "objlibd init --rebuild" in result.output
