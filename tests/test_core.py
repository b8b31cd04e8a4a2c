"""Init, config, eligibility, scanning and status: the pieces under `sync`."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from harness import Harness, real_paths

from objlib_daemon.config import LibraryConfig
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.scan import scan
from objlib_daemon.state.db import SCHEMA_VERSION, Database
from objlib_daemon.units import parse_duration


@pytest.fixture
def lh(tmp_path) -> Harness:
    harness = Harness(tmp_path, "local")
    assert harness.init().exit_code == 0
    return harness


def test_init_records_library_and_refuses_another_librarys_root(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    a = Harness(tmp_path / "a", "local")
    assert a.init().exit_code == 0
    marker = json.loads((a.root / ".objlibd").read_text())
    with a.db() as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["library_id"] == marker["library_id"]
    assert (meta["store_backend"], meta["root"]) == ("local", str(a.root))
    # A second state dir pointed at the same root reads the existing marker.
    b = Harness(tmp_path / "b", "local")
    b.root.rmdir()
    b.root = a.root
    assert b.init().exit_code == 0
    with b.db() as conn:
        assert dict(conn.execute("SELECT key, value FROM meta"))["library_id"] == meta["library_id"]
    # A root whose marker names another library is refused without --adopt.
    other = Harness(tmp_path / "c", "local")
    assert other.init().exit_code == 0
    result = other.run("init", "--library", str(a.root))
    assert result.exit_code == 4 and "--adopt" in result.stderr
    assert other.run("init", "--library", str(a.root), "--adopt").exit_code == 0


def test_missing_and_invalid_config_exit_78_with_a_fix(lh):
    lh.config_path.write_text('[library]\nroot = "/x"\nmin_size = "big"\n')
    result = lh.run("status")
    assert result.exit_code == 78
    assert "library.min_size" in result.stderr and "integer" in result.stderr
    lh.config_path.write_text('[sync]\nprune_after = "soon"\n')
    assert "prune_after" in lh.run("sync").stderr
    lh.config_path.unlink()
    result = lh.run("sync")
    assert result.exit_code == 78 and "objlibd init" in result.stderr


def test_durations():
    """One parser for the config, `--older-than` and RetryInfo's "1.5s"."""
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90s") == parse_duration(90) == 90
    assert parse_duration("1.5s") == 1.5
    for bad in ("soon", "-5s", -1, True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_eligibility_globs_litter_and_size():
    e = Eligibility.from_config(LibraryConfig())
    assert e.path_ok("a.txt") and e.path_ok("Deep/er/B.TXT") and e.path_ok("x/y.docx")
    assert e.path_ok("a.epub") and not e.path_ok("a.mobi") and not e.path_ok("x/.hidden.txt")
    assert not e.path_ok("x/._a.txt") and not e.path_ok(".Trashes/a.txt")
    assert not e.dir_ok("$RECYCLE.BIN") and not e.dir_ok("a/.git") and e.dir_ok("Courses")
    assert e.size_problem(1024) is None and e.size_problem(100_000_000) is None
    assert "smaller" in (e.size_problem(1023) or "")
    assert "larger" in (e.size_problem(100_000_001) or "")


@pytest.mark.parametrize(
    ("include", "exclude", "by_name"),
    [
        (None, None, True),  # the defaults
        (("**/*.txt", "**/[A-C]*.md"), ("**/*~", "**/.git/**", "**/draft?.txt"), True),
        (("Courses/**/*.txt",), (), False),  # a folder in an include: by path only
        (("**/*.txt",), ("Old/**",), False),  # an exclude anchored at the root
        (("**/*.txt",), ("**/a/b/**",), False),  # a folder path in an exclude
    ],
)
def test_eligibility_by_name_agrees_with_the_full_globs(include, exclude, by_name):
    """The walk judges a file by its name alone where the globs allow it: for every
    real path (and litter beside it) in a folder the walk enters, the same verdict."""
    cfg = LibraryConfig()
    if include is not None:
        cfg = LibraryConfig(include=include, exclude=exclude)
    e = Eligibility.from_config(cfg)
    assert (e.name is not None) == by_name
    if e.name is None:
        return
    names = ["", "._", ".", "~$", "draft1", "Bnotes"]
    checked = 0
    for path in real_paths():
        folder, _, name = path.rpartition("/")
        parts = folder.split("/") if folder else []
        if not all(e.dir_ok("/".join(parts[: i + 1])) for i in range(len(parts))):
            continue
        stem = name.rsplit(".", 1)[0]
        for candidate in [name, *(p + name for p in names), stem + ".txt~", stem + ".MD"]:
            rel = f"{folder}/{candidate}" if folder else candidate
            assert bool(e.name.match(candidate)) == e.path_ok(rel), rel
            checked += 1
    assert checked > 10_000


def test_scanner_reports_problems_and_never_fails(tmp_path):
    root = tmp_path / "lib"
    (root / "ok").mkdir(parents=True)
    (root / "ok/good.txt").write_bytes(b"x" * 2000)
    os.symlink(root, root / "ok/loop")  # a loop: not followed
    os.symlink("/etc/hostname", root / "ok/outside.txt")  # points out: not followed
    os.mkfifo(root / "ok/pipe.txt")
    (root / os.fsdecode(b"bad-\xff.txt")).write_bytes(b"y" * 2000)
    locked = root / "locked"
    locked.mkdir()
    (locked / "secret.txt").write_bytes(b"z" * 2000)
    locked.chmod(0)
    try:
        result = scan(root, Eligibility.from_config(LibraryConfig()))
    finally:
        locked.chmod(0o755)
    assert set(result.entries) == {"ok/good.txt"} | (
        {"locked/secret.txt"} if os.geteuid() == 0 else set()
    )
    text = "\n".join(result.problems)
    assert "symbolic link" in text and "UTF-8" in text
    if os.geteuid() != 0:
        assert "cannot list folder" in text


def test_nfd_and_nfc_names_are_one_key(lh):
    import unicodedata

    name = "Café Lecture.txt"
    lh.write(unicodedata.normalize("NFD", name))
    assert lh.sync()["uploaded"] == 1
    assert set(lh.rows()) == {unicodedata.normalize("NFC", name)}
    assert lh.sync()["hashed"] == 0


def test_status_json_has_the_documented_keys(lh):
    lh.write("s/One.txt")
    lh.sync()
    data = json.loads(lh.run("status", "--json").stdout)
    assert data["files"]["indexed"] == 1
    assert data["queue"]["pending"] == 0 and data["orphans"] == 0
    assert (data["store"]["backend"], data["store"]["name"]) == ("local", "local")
    assert data["library"]["root"] == str(lh.root) and data["library"]["available"] is True
    assert data["last_sync"]["result"]["outcome"] == "ok"
    (lh.root / ".objlibd").unlink()
    data = json.loads(lh.run("status", "--json").stdout)
    assert data["library"]["available"] is False


def test_search_cli_returns_ranked_hits_with_paths(lh):
    lh.write("a/Free Will.txt", b"free will and volition " * 100)
    lh.write("b/Other.txt", b"capitalism and rights " * 100)
    lh.sync()
    data = json.loads(lh.run("search", "volition", "--json").stdout)
    assert [h["path"] for h in data["hits"]] == ["a/Free Will.txt"]


def test_corrupt_or_foreign_database_is_a_clear_error(lh):
    db = lh.state_dir / "objlibd.db"
    for suffix in ("-wal", "-shm"):
        (lh.state_dir / f"objlibd.db{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not sqlite" * 100)
    result = lh.run("sync")
    assert result.exit_code == 78 and "is damaged" in result.stderr
    assert "objlibd init --rebuild" in result.stderr
    db.unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE something_else (x)")
    result = lh.run("sync")
    assert result.exit_code == 78 and "not an objlibd database" in result.stderr


def test_schema_migrates_from_an_older_version(lh):
    with sqlite3.connect(lh.state_dir / "objlibd.db") as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    assert lh.run("sync").exit_code == 0
    with lh.db() as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version[0] == str(SCHEMA_VERSION)
    # Version 1 had no intents.ended_at.
    with sqlite3.connect(lh.state_dir / "objlibd.db") as conn:
        conn.execute("ALTER TABLE intents DROP COLUMN ended_at")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    assert lh.run("sync").exit_code == 0
    with lh.db() as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(intents)")}
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert "ended_at" in columns and version[0] == str(SCHEMA_VERSION)
    with sqlite3.connect(lh.state_dir / "objlibd.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    result = lh.run("sync")
    assert result.exit_code == 78 and "upgrade objlibd" in result.stderr


def test_a_queue_row_of_schema_4_is_queued_after_the_migration(lh):
    """Schema 4 stored a waiting queue row as "pending", a file state's word: the
    migration renames it, or the row would never be claimed again."""
    lh.write("q/Waiting.txt")
    with sqlite3.connect(lh.state_dir / "objlibd.db") as conn:
        conn.execute(
            "INSERT INTO pending_changes (path, reason, gen, first_seen, last_seen, state,"
            " attempts, next_attempt_at, lane) VALUES"
            " ('q/Waiting.txt', 'event', 1, 0, 0, 'pending', 0, 0, 0)"
        )
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    Database(lh.state_dir / "objlibd.db").close()  # a writer's open migrates
    with lh.db() as conn:
        states = [r["state"] for r in conn.execute("SELECT state FROM pending_changes")]
    assert states == ["queued"]
    summary = lh.sync()
    assert summary["new"] == 1 and summary["outstanding"]["waiting"] == 0


def test_unreadable_file_is_reported_and_retried_once_fixed(lh):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions cannot make a file unreadable")
    p = lh.write("u/Locked.txt")
    lh.write("u/Fine.txt")
    p.chmod(0)
    summary = lh.sync(code=6)
    assert summary["uploaded"] == 1
    assert "permission" in lh.row("u/Locked.txt")["last_error"].lower()
    p.chmod(0o644)
    from test_sync import make_due

    make_due(lh)
    assert lh.sync()["uploaded"] == 1
    lh.converged()


def test_oversized_tracked_file_keeps_its_document(lh):
    lh.config_path.write_text(
        lh.config_path.read_text().replace("[library]\n", "[library]\nmax_size = 4096\n")
    )
    lh.write("big/Grows.txt", size=2000)
    lh.sync()
    doc = lh.row("big/Grows.txt")["document"]
    lh.write("big/Grows.txt", size=5000)
    summary = lh.sync(code=6)
    assert summary["failed"] == 1
    row = lh.row("big/Grows.txt")
    assert row["document"] == doc and "max_size" in row["last_error"]
    assert json.loads(lh.run("status", "--json").stdout)["failed"][0]["path"] == "big/Grows.txt"
