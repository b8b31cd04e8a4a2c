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

from objlib_daemon.errors import CONFIG, SOME_FAILED, STORE_UNAVAILABLE

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
