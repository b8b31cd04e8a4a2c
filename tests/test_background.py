"""The rows a reconcile fetches in a helper process during its walk (state/background.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from objlib_daemon.state import background
from objlib_daemon.state.background import BackgroundQuery
from objlib_daemon.sync import reconcile as engine


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "odd name é" / "rows.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (path TEXT PRIMARY KEY, state TEXT, size INT, mtime_ns INT)")
    rows = [
        (f"d/Café {i}.txt", "indexed", i * 1000, 1_700_000_000_123_456_789 + i) for i in range(500)
    ]
    rows.append(("gone.txt", "missing", None, None))
    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return path


def test_helper_returns_exactly_what_a_direct_query_does(tmp_path: Path) -> None:
    path = _db(tmp_path)
    sql = "SELECT path, state, size, mtime_ns FROM t WHERE state = ? ORDER BY path"
    got = BackgroundQuery(path, sql, ("indexed",)).rows()
    with sqlite3.connect(path) as db:
        want = db.execute(sql, ("indexed",)).fetchall()
    assert got == want and len(got) == 500


@pytest.mark.parametrize("sql", ["SELECT nonsense FROM t", "DROP TABLE t"])
def test_a_failing_or_writing_query_delivers_nothing(tmp_path: Path, sql: str) -> None:
    path = _db(tmp_path)
    assert BackgroundQuery(path, sql).rows() is None
    with sqlite3.connect(path) as db:  # read-only: the table is still there
        assert db.execute("SELECT count(*) FROM t").fetchone() == (501,)


def test_no_helper_at_all_delivers_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(background.sys, "executable", str(tmp_path / "no-python"))
    assert BackgroundQuery(_db(tmp_path), "SELECT 1").rows() is None


@pytest.mark.parametrize("helper_works", [True, False])
def test_reconcile_with_rows_from_the_helper_or_without(h, monkeypatch, helper_works) -> None:
    """Whether the helper delivers or the engine falls back to reading the rows itself,
    a reconcile finds the same changes."""
    monkeypatch.setattr(engine, "BACKGROUND_ROWS", 1)
    delivered: list[bool] = []
    real_rows = BackgroundQuery.rows

    def rows(self):  # type: ignore[no-untyped-def]
        got = real_rows(self) if helper_works else None
        delivered.append(got is not None)
        return got

    monkeypatch.setattr(BackgroundQuery, "rows", rows)
    for i in range(6):
        h.write(f"a/File {i}.txt")
    assert h.sync()["new"] == 6
    h.write("a/File 2.txt", b"changed " * 300)
    h.write("b/New.txt")
    (h.root / "a/File 4.txt").unlink()
    summary = h.sync()
    assert (summary["modified"], summary["new"], summary["missing"]) == (1, 1, 1), summary
    assert summary["unchanged"] == 4
    assert delivered and set(delivered) == {helper_works}
