"""The debouncer's timing: each path is due `settle_seconds` after its own last event.

Counting from the flush that wrote it instead made every save wait half a
second more (docs/benchmarks.md, benchmark 8); counting from the first event of
a burst would read a file that is still being written.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from objlib_daemon.daemon.debounce import FLUSH_INTERVAL, Debouncer
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import PendingChange

SETTLE = 2.0


def test_each_path_is_due_settle_seconds_after_its_own_last_event(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db", create=True)
    flushed: list[float] = []
    done = threading.Event()

    def on_flushed(at: float) -> None:
        flushed.append(at)
        done.set()

    deb = Debouncer(db, SETTLE, on_flushed=on_flushed, on_overload=lambda: None)
    deb.start()
    try:
        first = time.time()
        deb.add("a/first.txt")
        deb.add("a/bumped.txt")
        # Within the same gathering window: a later event for one path.
        time.sleep(FLUSH_INTERVAL / 5)  # a gap between two events, not a wait for a condition
        bumped = time.time()
        deb.add("a/bumped.txt")
        assert done.wait(10), "the debouncer never flushed"
    finally:
        deb.stop()
    with db.session() as s:
        due = {r.path: r.next_attempt_at for r in s.query(PendingChange)}
    tolerance = 0.05
    assert abs(due["a/first.txt"] - (first + SETTLE)) < tolerance, due
    assert abs(due["a/bumped.txt"] - (bumped + SETTLE)) < tolerance, due
    # The drain is woken for the earliest of them, not for the flush time + settle.
    assert abs(flushed[0] - due["a/first.txt"]) < 1e-6
    db.close()
