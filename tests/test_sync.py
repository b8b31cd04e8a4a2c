"""The one-shot sync's truths (issue 2), on both backends."""

from __future__ import annotations

import json
import os
import time

import pytest
from harness import filler


def test_new_files_uploaded_and_nothing_else_touched(h):
    h.write("Courses/OPAR/OPAR - Lesson 01 - Reason.txt")
    h.write("Books/Ayn Rand - Atlas Shrugged.txt", size=5000)
    h.write("tiny.txt", b"too small")  # under min_size: not tracked
    h.write(".hidden.txt", size=4096)
    before = {p.name: p.stat().st_mtime_ns for p in h.root.rglob("*") if p.is_file()}
    summary = h.sync()
    assert (summary["new"], summary["uploaded"], summary["deleted"]) == (2, 2, 0)
    h.converged()
    assert set(h.rows()) == {
        "Courses/OPAR/OPAR - Lesson 01 - Reason.txt",
        "Books/Ayn Rand - Atlas Shrugged.txt",
    }
    after = {p.name: p.stat().st_mtime_ns for p in h.root.rglob("*") if p.is_file()}
    assert before == after  # the library itself is never written (marker aside)


def test_replace_uploads_new_before_deleting_old(h):
    rel = "MOTM/MOTM_2021-03-07_Objectivity.txt"
    h.write(rel)
    h.sync()
    old_doc = h.row(rel)["document"]
    h.write(rel, filler(rel, 3000, "edited"))
    summary = h.sync()
    assert (summary["modified"], summary["uploaded"], summary["deleted"]) == (1, 1, 1)
    new_doc = h.row(rel)["document"]
    assert new_doc != old_doc
    assert [d.name for d in h.docs()] == [new_doc]
    with h.db() as conn:
        actions = [
            r["action"]
            for r in conn.execute("SELECT action FROM journal WHERE path = ? ORDER BY id", (rel,))
        ]
    assert actions[-2:] == ["replaced", "deleted"]  # upload first, then delete
    if h.backend == "gemini":
        log = [
            (r.method, r.phase)
            for r in h.emulator.requests
            if r.method in ("POST", "DELETE") and (r.phase in ("start", None))
        ]
        starts = [i for i, (m, p) in enumerate(log) if p == "start"]
        deletes = [i for i, (m, _) in enumerate(log) if m == "DELETE"]
        assert starts[-1] < deletes[-1]


def test_failed_replacement_keeps_old_document_and_is_retried(h, monkeypatch):
    rel = "Courses/OPAR/OPAR - Lesson 02 - Logic.txt"
    h.write(rel)
    h.sync()
    old = dict(h.row(rel))
    h.write(rel, filler(rel, 2500, "v2"))
    fail_uploads(h, monkeypatch)
    summary = h.sync(code=6)
    assert summary["retrying"] == 1 and summary["uploaded"] == 0
    row = h.row(rel)
    assert (row["document"], row["upload_sha256"]) == (old["document"], old["upload_sha256"])
    assert [d.name for d in h.docs()] == [old["document"]]
    unfail_uploads(h, monkeypatch)
    make_due(h)
    summary = h.sync()
    assert summary["modified"] == 1
    h.converged()


def fail_uploads(h, monkeypatch) -> None:
    """Make every upload fail transiently: emulator 503s, or a failing local store."""
    if h.backend == "gemini":
        from emulator import Fault

        h._fault = h.emulator.add_fault(
            Fault(path=r":uploadToFileSearchStore", phase="start", status=503, times=None)
        )
    else:
        from objlib_daemon.stores.base import TransientError
        from objlib_daemon.stores.local import LocalStore

        def broken(self, *a, **k):
            raise TransientError("disk busy (test)")

        monkeypatch.setattr(LocalStore, "upload", broken)


def unfail_uploads(h, monkeypatch) -> None:
    if h.backend == "gemini":
        h._fault.times = 0
    else:
        monkeypatch.undo()


def make_due(h) -> None:
    """Skip the backoff: make every queued row due now (as time passing would)."""
    import sqlite3

    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute("UPDATE pending_changes SET next_attempt_at = 0")


def test_deletion_marks_missing_and_keeps_document(h):
    h.write("a/Keep.txt")
    h.write("a/Gone.txt")
    h.sync()
    doc = h.row("a/Gone.txt")["document"]
    (h.root / "a/Gone.txt").unlink()
    t0 = time.time()
    summary = h.sync()
    assert summary["missing"] == 1 and summary["deleted"] == 0
    row = h.row("a/Gone.txt")
    assert row["state"] == "missing" and row["missing_since"] >= t0 - 1
    assert doc in {d.name for d in h.docs()}


def test_missing_and_back_unchanged_is_restored_without_upload(h):
    content = filler("x", 3000)
    h.write("b/Back.txt", content)
    h.sync()
    doc = h.row("b/Back.txt")["document"]
    (h.root / "b/Back.txt").unlink()
    h.sync()
    h.write("b/Back.txt", content)
    summary = h.sync()
    assert (summary["restored"], summary["uploaded"]) == (1, 0)
    row = h.row("b/Back.txt")
    assert (row["state"], row["missing_since"], row["document"]) == ("indexed", None, doc)
    assert h.sync()["hashed"] == 0  # and it stays restored


def test_prune_deletes_only_long_missing(h):
    h.write("old.txt")
    h.write("young.txt")
    h.sync()
    (h.root / "old.txt").unlink()
    (h.root / "young.txt").unlink()
    h.sync()
    with __import__("sqlite3").connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(
            "UPDATE files SET missing_since = ? WHERE path = 'old.txt'", (time.time() - 8 * 86400,)
        )
    young_doc = h.row("young.txt")["document"]
    summary = h.sync("--prune-missing", "--older-than", "7d")
    assert summary["pruned"] == 1
    assert h.row("old.txt")["state"] == "pruned" and h.row("old.txt")["document"] is None
    assert [d.name for d in h.docs()] == [young_doc]


def test_force_hashes_everything_and_reuploads_only_differences(h):
    for i in range(3):
        h.write(f"f/File {i}.txt")
    h.sync()
    summary = h.sync("--force")
    assert (summary["hashed"], summary["uploaded"]) == (3, 0)
    # An enrichment version change (new rules) re-uploads under --force only.
    with h.config_path.open("a") as fh:
        fh.write('\n[[metadata.rules]]\npattern = "^f/"\nfields = { category = "files" }\n')
    assert h.sync()["uploaded"] == 0
    summary = h.sync("--force")
    assert (summary["modified"], summary["uploaded"], summary["deleted"]) == (3, 3, 3)
    assert {d.metadata.get("category") for d in h.docs()} == {"files"}


def test_dry_run_changes_nothing(h):
    h.write("c/One.txt")
    h.sync()
    h.write("c/Two.txt")
    (h.root / "c/One.txt").unlink()
    db_file = h.state_dir / "objlibd.db"
    before_db, before_docs = db_file.read_bytes(), sorted(d.name for d in h.docs())
    if h.backend == "gemini":
        h.emulator.clear_log()
    result = h.run("sync", "--dry-run", "-v")
    assert result.exit_code == 0, result.output
    assert "new" in result.stdout and "c/Two.txt" in result.stdout
    assert db_file.read_bytes() == before_db
    assert sorted(d.name for d in h.docs()) == before_docs
    if h.backend == "gemini":
        assert [r for r in h.emulator.requests if r.path != "/__docs"] == []


def test_the_dry_run_lists_what_the_sync_then_does(h):
    """What an action comes to is said once (`Action.outcome`): the dry run's
    files are the ones the sync then lists, with the same actions."""
    for rel in ("d/Edited.txt", "d/Deleted.txt", "d/Renamed.txt", "d/Back.txt"):
        h.write(rel)
    h.sync()
    back = (h.root / "d/Back.txt").read_bytes()
    (h.root / "d/Back.txt").unlink()
    assert h.sync()["missing"] == 1
    h.write("d/Edited.txt", filler("d/Edited.txt", 3000, "edited"))
    (h.root / "d/Deleted.txt").unlink()
    (h.root / "d/Renamed.txt").rename(h.root / "d/Now Renamed.txt")
    h.write("d/Back.txt", back)
    h.write("d/New.txt")
    planned = json.loads(h.run("sync", "--dry-run", "--json").stdout)["files"]
    done = h.sync("-v")["files"]

    def lines(files: list[dict]) -> list[tuple]:
        return sorted((f["path"], f["action"], f["moved_from"]) for f in files)

    assert lines(planned) == lines(done)
    assert {f["action"] for f in done} == {"new", "modified", "moved", "missing", "restored"}


def test_skip_enrichment_uploads_raw_bytes_with_identity_only(h):
    rel = "Courses/OPAR/OPAR - Lesson 03 - Ethics.txt"
    raw = filler(rel, 2048)
    h.write(rel, raw)
    h.sync("--skip-enrichment")
    (doc,) = h.docs()
    assert set(doc.metadata) == {"library_id", "path", "sha256"}
    assert h.content(doc.name) == raw


def test_enriched_upload_has_header_and_metadata(h):
    rel = "Courses/OPAR/OPAR - Lesson 03 - Ethics.txt"
    raw = filler(rel, 2048)
    h.write(rel, raw)
    h.sync()
    (doc,) = h.docs()
    body = h.content(doc.name)
    assert body.endswith(raw) and body != raw
    assert b"Lesson" in body[: len(body) - len(raw)]
    assert doc.metadata["path"] == rel and doc.metadata.get("course")


def test_orphans_cleaned_at_sync_start_and_by_flag(h, monkeypatch):
    old = replace_with_deletes_failing(h, monkeypatch, "o/Doc.txt")
    with h.db() as conn:
        assert [r[0] for r in conn.execute("SELECT document FROM orphans")] == [old]
    assert old in {d.name for d in h.docs()}
    unfail_deletes(h, monkeypatch)
    summary = h.sync("--cleanup-orphans")
    assert summary["orphans_cleaned"] == 1
    assert old not in {d.name for d in h.docs()}
    with h.db() as conn:
        assert conn.execute("SELECT count(*) FROM orphans").fetchone()[0] == 0


def test_orphans_retried_automatically_when_due(h, monkeypatch):
    replace_with_deletes_failing(h, monkeypatch, "o/Auto.txt")
    unfail_deletes(h, monkeypatch)
    import sqlite3

    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute("UPDATE orphans SET next_attempt_at = 0")
    assert h.sync()["orphans_cleaned"] == 1
    h.converged()


def replace_with_deletes_failing(h, monkeypatch, rel: str) -> str:
    """Sync `rel`, change it, and sync again while deletes fail: the first
    document is left an orphan. Returns it; deletes keep failing."""
    h.write(rel)
    h.sync()
    old = h.row(rel)["document"]
    h.write(rel, filler(rel, 3000, "v2"))
    fail_deletes(h, monkeypatch)
    h.sync()
    return old


def fail_deletes(h, monkeypatch) -> None:
    if h.backend == "gemini":
        from emulator import Fault

        h._dfault = h.emulator.add_fault(
            Fault(method="DELETE", path=r"documents/", status=503, times=None)
        )
    else:
        from objlib_daemon.stores.base import TransientError
        from objlib_daemon.stores.local import LocalStore

        def broken(self, document):
            raise TransientError("busy (test)")

        monkeypatch.setattr(LocalStore, "delete", broken)


def unfail_deletes(h, monkeypatch) -> None:
    if h.backend == "gemini":
        h._dfault.times = 0
    else:
        monkeypatch.undo()


def test_store_mismatch_exits_4_before_any_remote_call(h):
    h.write("m/File.txt")
    text = h.config_path.read_text()
    if h.backend == "gemini":
        text = text.replace(h.store_resource, "fileSearchStores/other-abcdefabcdef")
        h.emulator.clear_log()
    else:
        text += '\n[store]\nname = "another"\n'
    h.config_path.write_text(text)
    result = h.run("sync")
    assert result.exit_code == 4, result.output
    assert "store" in result.stderr and "config" in result.stderr
    if h.backend == "gemini":
        assert h.emulator.requests == []
    assert h.docs() == []


def test_unavailable_volume_exits_3_and_marks_nothing(h):
    h.write("v/One.txt")
    h.sync()
    (h.root / ".objlibd").rename(h.tmp / "marker.bak")
    (h.root / "v/One.txt").unlink()
    result = h.run("sync")
    assert result.exit_code == 3, result.output
    assert "marker" in result.stderr
    assert h.row("v/One.txt")["state"] == "indexed"


def test_mass_missing_guard_exits_5(h):
    for i in range(60):
        h.write(f"g/File {i:02}.txt")
    h.sync()
    for i in range(55):
        (h.root / f"g/File {i:02}.txt").unlink()
    result = h.run("sync")
    assert result.exit_code == 5, result.output
    assert "--allow-mass-missing" in result.stderr
    assert {r["state"] for r in h.rows().values()} == {"indexed"}
    # --force is about hashing, not about the guard (it used to override it).
    assert h.run("sync", "--force").exit_code == 5
    assert {r["state"] for r in h.rows().values()} == {"indexed"}
    assert h.sync("--allow-mass-missing")["missing"] == 55


def test_no_change_sync_hashes_nothing(h):
    for i in range(5):
        h.write(f"n/File {i}.txt")
    h.sync()
    if h.backend == "gemini":
        h.emulator.clear_log()
    summary = h.sync()
    assert (summary["hashed"], summary["uploaded"], summary["unchanged"]) == (0, 0, 5)
    if h.backend == "gemini":
        assert h.emulator.requests == []


def test_rename_is_a_move(h):
    h.write("r/Before.txt")
    h.sync()
    old = h.row("r/Before.txt")["document"]
    os.rename(h.root / "r/Before.txt", h.root / "r/After.txt")
    summary = h.sync()
    assert (summary["moved"], summary["uploaded"], summary["deleted"]) == (1, 1, 1)
    assert summary["missing"] == 0
    assert h.row("r/Before.txt") is None
    assert old not in {d.name for d in h.docs()}
    h.converged()


def test_touch_refreshes_mtime_only(h):
    p = h.write("t/Touched.txt")
    h.sync()
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = h.sync()
    assert (summary["hashed"], summary["uploaded"], summary["unchanged"]) == (1, 0, 1)
    assert h.row("t/Touched.txt")["mtime_ns"] == p.stat().st_mtime_ns


@pytest.mark.parametrize(
    "name",
    [
        "Peikoff Podcast/Episode 12 – 3⧸4⧸2015 [abc].txt",
        "Ayn Rand Institute/Milton Friedman vs Ayn Rand： How To Change the World.txt",
        "L" * 240 + ".txt",
    ],
)
def test_odd_names(h, name):
    h.write(name)
    assert h.sync()["uploaded"] == 1
    h.converged()
