"""Folder hints: the watcher's producers hold hints only, the scanner expands them.

A folder event (created, moved, deleted) or a folder with more than
`FOLDER_CAP` events in one gathering window becomes ONE queue row, `folder/`
with reason `folder` (Syncthing's watch aggregator does the same with its
per-directory cap). When it is due, the drain has the scanner compare that
folder's subtree with the `files` table and enqueue what differs, so a renamed
folder is still a set of moves, a deleted one is marked missing only on a
verified volume, and its files go in the fresh lane ahead of bulk rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from objlib_daemon.daemon.debounce import FOLDER_CAP, Debouncer
from objlib_daemon.errors import VolumeUnavailable
from objlib_daemon.library.volume import MARKER
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import Lane, PendingChange, QueueState


def _queued(db: Database) -> dict[str, tuple[str, int]]:
    with db.session() as s:
        return {r.path: (r.reason, r.lane) for r in s.query(PendingChange)}


def test_a_folder_over_its_cap_collapses_into_one_hint(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db", create=True)
    overloads: list[int] = []
    deb = Debouncer(db, 2.0, on_flushed=lambda _at: None, on_overload=lambda: overloads.append(1))
    for i in range(FOLDER_CAP):  # at the cap: each path still its own row
        deb.add(f"edge/{i}.txt")
    for i in range(FOLDER_CAP + 1):  # one more than the cap: one scan of the folder
        deb.add(f"big/{i}.txt", queue.MOVED_FROM)
    deb.add("big/deeper/late.txt")  # below a held hint: covered by its scan
    for i in range(FOLDER_CAP + 1):  # folder hints count in their parent too
        deb.add_folder(f"tree/{i}")
    deb.add("small/a.txt")
    deb.add_folder("made")
    deb.add("made/inside/x.txt")
    assert deb.pending() == FOLDER_CAP + 4
    assert deb.flush() == FOLDER_CAP + 4
    rows = _queued(db)
    assert rows.pop("big/") == rows.pop("tree/") == rows.pop("made/") == ("folder", Lane.FOLDERS)
    assert rows.pop("small/a.txt") == ("event", Lane.FRESH)
    assert rows == {f"edge/{i}.txt": ("event", Lane.FRESH) for i in range(FOLDER_CAP)}
    assert not overloads
    # Nothing is kept from one window to the next: the folder counts start again.
    deb.add("big/again.txt")
    assert deb.flush() == 1 and "big/again.txt" in _queued(db)
    db.close()


def _expand_all(ws) -> None:
    with ws.db.session() as s:  # due now: the settle time is the debouncer's business
        s.query(PendingChange).update({PendingChange.next_attempt_at: 0.0})
    ws.engine.reconciler.expand_due()


def test_folder_hints_expand_into_moves_missing_marks_and_fresh_rows(ws) -> None:
    h = ws.harness
    h.write("d/x.txt")
    h.write("d/sub/y.txt")
    h.write("gone/k.txt")
    ws.engine.run_pass()
    docs = {p: h.row(p)["document"] for p in ("d/x.txt", "d/sub/y.txt", "gone/k.txt")}
    (h.root / "e").mkdir()
    os.rename(h.root / "d", h.root / "e" / "d2")  # what one DirMovedEvent says
    for p in (h.root / "gone" / "k.txt", h.root / "gone"):
        p.unlink() if p.is_file() else p.rmdir()
    h.write("e/d2/sub/new.txt")
    with ws.db.session() as s:
        queue.enqueue(s, [("r/Kept.txt", queue.SCAN)])  # a bulk row already waiting
        hints = [(queue.folder_key(f), queue.FOLDER) for f in ("d", "e/d2", "gone")]
        queue.enqueue(s, hints)

    _expand_all(ws)
    rows = _queued(ws.db)
    assert rows == {
        "r/Kept.txt": ("scan", Lane.BULK),  # unchanged on disk, but queued before: kept
        "d/x.txt": ("moved_from", Lane.FRESH),
        "d/sub/y.txt": ("moved_from", Lane.FRESH),
        "gone/k.txt": ("moved_from", Lane.FRESH),
        "e/d2/x.txt": ("event", Lane.FRESH),
        "e/d2/sub/y.txt": ("event", Lane.FRESH),
        "e/d2/sub/new.txt": ("event", Lane.FRESH),
    }
    with ws.db.session() as s:  # the fresh lane first
        assert [c.path for c in queue.claim(s, limit=7)][-1] == "r/Kept.txt"
        s.query(PendingChange).update({PendingChange.state: QueueState.QUEUED})

    counts = ws.engine.drain()
    # A move's old path may be marked missing first within a batch; recording the
    # new path then retires it (sync/applier.py, `_moved_from`): two moves either way.
    assert (counts["moved"], counts["new"], counts["uploaded"]) == (2, 1, 3), counts
    assert h.row("d/x.txt") is None and h.row("d/sub/y.txt") is None
    assert h.row("e/d2/x.txt")["state"] == h.row("e/d2/sub/y.txt")["state"] == "indexed"
    missing = h.row("gone/k.txt")
    assert missing["state"] == "missing" and missing["document"] == docs["gone/k.txt"]
    with ws.db.session() as s:
        assert queue.depth(s) == 0, queue.entries(s)


def test_a_folder_hint_waits_while_the_volume_is_away(ws) -> None:
    """A folder that vanished with the drive is not expanded into missing marks:
    the hint stays queued until the library is verified present."""
    h = ws.harness
    marker = (h.root / MARKER).read_bytes()
    (h.root / MARKER).unlink()
    (h.root / "r" / "Kept.txt").unlink()
    with ws.db.session() as s:
        queue.enqueue(s, [(queue.folder_key("r"), queue.FOLDER)])
    with pytest.raises(VolumeUnavailable):
        _expand_all(ws)
    assert _queued(ws.db) == {"r/": ("folder", Lane.FOLDERS)}
    assert h.row("r/Kept.txt")["state"] == "indexed"

    (h.root / MARKER).write_bytes(marker)
    ws.engine.require_volume()
    counts = ws.engine.drain()
    assert counts["missing"] == 1 and h.row("r/Kept.txt")["state"] == "missing"
