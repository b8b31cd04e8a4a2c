"""The sync core's pipeline and its one pass, tested for real.

- the planner's decision table;
- the queue's lanes (a fresh change ahead of a bulk pass);
- pipelined uploads: bytes go up while earlier imports are still indexing;
- upload first, proven by the emulator's request log, with a `kill -9` of
  the daemon in each stage (uploading, indexing, retiring);
- the same behaviour from `objlibd sync`, an inline `objlibd reconcile` and
  the daemon.

Everything runs the real daemon or CLI as a process, the real google-genai
SDK against tests/emulator.py (on the real clock, so indexing takes time),
and a real SQLite file.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from daemon_helpers import Env, wait_until, write
from emulator import Fault, GeminiEmulator

from objlib_daemon.state import queue
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import FileState
from objlib_daemon.sync.planner import Action, Disk, Row, decide

V = "v1"

# --- the planner ---------------------------------------------------------------------------


def _row(state: str, *, document: bool = True, uploaded: str = "a", seen: str = "a") -> Row:
    return Row(state, 10, 1, seen, uploaded if document else None, "doc" if document else None, V)


# (row, disk, force) -> action. Disk contents: "a" is what the document holds.
TABLE = [
    (None, Disk(False), False, Action.UNCHANGED),
    (None, Disk(True, 10, 1, "a"), False, Action.NEW),
    (_row(FileState.INDEXED), Disk(False), False, Action.VANISHED),
    (_row(FileState.PENDING, document=False), Disk(False), False, Action.FORGET),
    (_row(FileState.MISSING), Disk(False), False, Action.UNCHANGED),
    (_row(FileState.PRUNED, document=False), Disk(False), False, Action.UNCHANGED),
    (_row(FileState.INDEXED), Disk(True, 10, 1), False, Action.UNCHANGED),  # stat same: not hashed
    (_row(FileState.INDEXED), Disk(True, 10, 2, "a"), False, Action.REFRESH),
    (_row(FileState.INDEXED), Disk(True, 11, 2, "b"), False, Action.MODIFIED),
    (_row(FileState.INDEXED), Disk(True, 10, 1, "a"), True, Action.REFRESH),
    (_row(FileState.MISSING), Disk(True, 10, 1, "a"), False, Action.RESTORED),
    (_row(FileState.MISSING), Disk(True, 11, 1, "b"), False, Action.MODIFIED),
    (_row(FileState.PRUNED, document=False), Disk(True, 10, 1, "a"), False, Action.NEW),
    (_row(FileState.FAILED, seen="b"), Disk(True, 11, 2, "b"), False, Action.STILL_FAILED),
    (_row(FileState.FAILED, seen="b"), Disk(True, 11, 2, "b"), True, Action.MODIFIED),
    (_row(FileState.FAILED, document=False, seen="b"), Disk(True, 11, 2, "c"), False, Action.NEW),
    (_row(FileState.PENDING, document=False), Disk(True, 10, 1, "a"), False, Action.NEW),
]


@pytest.mark.parametrize(("row", "disk", "force", "expected"), TABLE)
def test_planner_table(row, disk, force, expected) -> None:
    assert decide(row, disk, force=force, enrichment_version=V) is expected


def test_planner_over_every_combination_keeps_the_invariants() -> None:
    """Whatever the row and the disk: absence never uploads, presence never marks
    missing, and a file with a live document is never uploaded as "new"."""
    rows = [None] + [
        _row(state, document=doc, uploaded=up, seen=seen)
        for state, doc, up, seen in itertools.product(FileState, (True, False), "ab", "ab")
    ]
    disks = [Disk(False), Disk(True, 10, 1)] + [Disk(True, 10, 1, sha) for sha in "ab"]
    for row, disk, force in itertools.product(rows, disks, (False, True)):
        action = decide(row, disk, force=force, enrichment_version=V)
        if not disk.present:
            assert action in (Action.UNCHANGED, Action.VANISHED, Action.FORGET), (row, disk)
        else:
            assert action not in (Action.VANISHED, Action.FORGET), (row, disk)
        if action is Action.NEW:
            assert row is None or row.document is None or row.state == FileState.PRUNED, (row, disk)


# --- the queue's lanes -----------------------------------------------------------------------


def test_a_fresh_change_is_claimed_before_a_bulk_pass(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db", create=True)
    try:
        with db.session() as s:
            queue.enqueue(s, [(f"bulk/{i:04}.txt", queue.SCAN) for i in range(1000)])
        with db.session() as s:
            queue.enqueue(s, [("saved.txt", queue.EVENT)])
            # A bulk row the watcher then saw is fresh too.
            queue.enqueue(s, [("bulk/0999.txt", queue.EVENT)])
        with db.session() as s:
            first = [c.path for c in queue.claim(s, limit=3)]
        assert set(first[:2]) == {"saved.txt", "bulk/0999.txt"} and first[2].startswith("bulk/")
    finally:
        db.close()


# --- the daemon against a service that takes time to index -----------------------------------


@pytest.fixture
def service():
    """The emulator on the real clock, so indexing takes the time it is told to."""
    emu = GeminiEmulator(clock=time.time).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def env(tmp_path: Path, service: GeminiEmulator, monkeypatch: pytest.MonkeyPatch):
    e = Env(tmp_path / "lib", backend="gemini", emulator=service)
    e.apply_env(monkeypatch)
    e.init()
    try:
        yield e
    finally:
        e.close()


def starts(emu: GeminiEmulator) -> list:
    return emu.find_requests("POST", phase="start")


def test_uploads_go_up_while_earlier_imports_are_still_indexing(env, service) -> None:
    """Concurrency 2, 8 new files, 3 s indexing: every upload is sent before the
    first import can be done; waiting for one import never holds an upload slot."""
    service.indexing_delay = 3.0
    for i in range(8):
        write(env.root / f"p/File {i}.txt", f"file {i}")
    env.config_path.write_text(env.config_text().replace("[store]\n", "[store]\nconcurrency = 2\n"))
    result = env.cli("sync", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    sent = sorted(r.time for r in starts(service))
    assert len(sent) == 8
    assert sent[-1] < sent[0] + service.indexing_delay
    env.wait_converged()


def _docs(service: GeminiEmulator) -> dict[str, str]:
    return {d["name"]: service.metadata(d)["path"] for d in service.documents()}


def _held(service: GeminiEmulator, **match) -> Fault:
    return service.add_fault(Fault(kind="latency", latency=4.0, times=None, **match))


@pytest.mark.parametrize("stage", ["uploading", "indexing", "retiring"])
def test_kill_9_in_each_stage_converges_upload_first(env, service, stage) -> None:
    """Edits under the daemon, `kill -9` while uploads are held (uploading),
    imports are indexing, or superseded documents are being deleted (retiring);
    after a restart the store converges exactly, and no document was deleted
    before its file's replacement existed (upload first)."""
    for i in range(6):
        write(env.root / f"k/Lecture {i}.txt", f"lecture {i}")
    env.start()
    env.wait_converged()
    before = _docs(service)
    sent = len(starts(service))
    if stage == "uploading":
        _held(service, phase="finalize")
    elif stage == "indexing":
        service.indexing_delay = 30.0
    else:
        _held(service, method="DELETE")
    for i in range(6):
        write(env.root / f"k/Lecture {i}.txt", f"lecture {i}, corrected", size=1700)
    if stage == "retiring":
        wait_until(
            lambda: env.db("SELECT count(*) FROM orphans")[0][0] > 0,
            timeout=30,
            what="a superseded document awaiting deletion",
        )
    else:
        wait_until(lambda: len(starts(service)) > sent, timeout=30, what="an upload")
        if stage == "indexing":
            wait_until(
                lambda: env.db("SELECT count(*) FROM intents WHERE operation IS NOT NULL")[0][0],
                timeout=30,
                what="an import recorded as indexing",
            )
    env.kill()
    service.clear_faults()
    service.indexing_delay = 0.5
    env.start()
    env.wait_converged(timeout=60)
    # Upload first: each old document was deleted only after a document of the
    # same path that still exists had been created.
    created = {d["name"]: d["createTime"] for d in service.documents()}
    live = {service.metadata(d)["path"]: d["name"] for d in service.documents()}
    for record in service.find_requests("DELETE", r"/documents/"):
        name = record.path.split("/v1beta/", 1)[-1]
        if name in before and record.status == 200:
            replacement = live[before[name]]
            assert _rfc3339(created[replacement]) <= record.time, (name, replacement)


def _rfc3339(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- one pass, three entry points ------------------------------------------------------------


def _run_entry(env: Env, entry: str) -> None:
    if entry == "daemon":
        if env.proc is None or env.proc.poll() is not None:
            env.start()
        env.cli("reconcile", "--wait", check=True, timeout=120)
    else:
        env.cli(entry, check=True, timeout=120)
    env.wait_converged(timeout=60)


@pytest.mark.parametrize("entry", ["sync", "reconcile", "daemon"])
def test_every_entry_point_runs_the_same_pass(env, service, entry) -> None:
    """First sync, then an edit, a rename, a deletion and a new file: `objlibd
    sync`, `objlibd reconcile` with no daemon, and the daemon end in the same
    state, with the same documents for the same contents."""
    for name in ("Edited", "Renamed", "Deleted", "Kept"):
        write(env.root / f"e/{name}.txt", name)
    _run_entry(env, entry)
    kept_doc = env.db("SELECT document FROM files WHERE path = 'e/Kept.txt'")[0][0]
    write(env.root / "e/Edited.txt", "edited again", size=1800)
    (env.root / "e/Renamed.txt").rename(env.root / "e/Now Renamed.txt")
    (env.root / "e/Deleted.txt").unlink()
    write(env.root / "e/New.txt", "new")
    _run_entry(env, entry)
    states = env.file_states()
    assert states == {
        "e/Edited.txt": FileState.INDEXED,
        "e/Now Renamed.txt": FileState.INDEXED,
        "e/Deleted.txt": FileState.MISSING,
        "e/Kept.txt": FileState.INDEXED,
        "e/New.txt": FileState.INDEXED,
    }
    assert env.db("SELECT document FROM files WHERE path = 'e/Kept.txt'")[0][0] == kept_doc
    assert env.db("SELECT count(*) FROM orphans")[0][0] == 0
    assert len(service.documents()) == 5  # the missing file keeps its document


def test_an_import_stuck_indexing_is_never_counted_indexed(env, service) -> None:
    """F5: the store keeps a document PENDING past the deadline. The sync says
    so (exit 6, retrying), the file is not `indexed`, `status` counts it as
    indexing, and the next sync waits on the same import instead of uploading
    a copy; once indexed, it is recorded."""
    env.config_path.write_text(
        env.config_text().replace("[store]\n", '[store]\noperation_timeout = "1s"\n')
    )
    service.indexing_delay = 3600.0
    write(env.root / "s/Stuck.txt", "stuck")
    result = env.cli("sync", "--json", timeout=120)
    assert result.returncode == 6, result.stdout + result.stderr
    assert env.file_states().get("s/Stuck.txt") != FileState.INDEXED
    status = env.cli_json("status")
    assert status["indexing"] == 1
    for doc in service.documents():  # the service finally finishes indexing it
        service.set_state(doc["name"], "STATE_ACTIVE")
    env.cli("sync", "--json", timeout=120)
    assert len(starts(service)) == 1  # waited on, not uploaded again
    env.wait_converged()
    assert env.cli_json("status")["indexing"] == 0


def test_recovery_never_touches_an_import_being_resumed(tmp_path: Path, monkeypatch) -> None:
    """After a crash, a drain resumes waiting on an accepted import while an older
    attempt of the same path (a crash leftover without an operation) makes
    recovery list the store. The resumed import's document is listed (still
    indexing) but is the tracker's: recovery must not delete it as a stray,
    or the row would end up recording a deleted document."""
    from harness import API_KEY, Harness

    from objlib_daemon.config import load
    from objlib_daemon.state.models import Intent
    from objlib_daemon.sync.applier import Indexing
    from objlib_daemon.workspace import open_workspace

    emu = GeminiEmulator(clock=time.time, api_key=API_KEY).start()
    try:
        h = Harness(tmp_path, "gemini", emulator=emu)
        assert h.init().exit_code == 0
        h.apply_env(monkeypatch)
        rel = "r/Lecture.txt"
        h.write(rel, b"first version " * 200)
        h.sync()
        ws = open_workspace(load(h.config_path))
        try:
            with ws.db.session() as s:  # an earlier run's attempt that left nothing
                s.add(Intent(path=rel, sha256="0" * 64, started_at=time.time() - 120))
            h.write(rel, b"second version " * 200)
            emu.indexing_delay = 1.0
            ws.engine.require_volume()
            started = ws.engine.applier.start(rel)
            assert isinstance(started, Indexing)  # accepted, indexing: then the crash
        finally:
            ws.close()
        # Indexed (and so listed) before the restarted drain records it.
        wait_until(
            lambda: all(d["state"] == "STATE_ACTIVE" for d in emu.documents()),
            what="the import indexed",
        )
        ws = open_workspace(load(h.config_path))  # the restart
        try:
            ws.engine.require_volume()
            ws.engine.drain()
        finally:
            ws.close()
        document = h.row(rel)["document"]
        assert emu.document(document) is not None, "the recorded document was deleted"
        h.converged()
    finally:
        emu.stop()


# --- the embedded store: batches --------------------------------------------------------------


def test_kill_9_during_a_batched_local_first_sync_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`objlibd sync` on the local store uploads and records batches of files
    (Applier.upload_batch). Killed with -9 while it does (twice, at different
    points: the store holding documents whose record may not be written yet),
    the next sync ends with every file's document, once: none lost, no
    duplicate. The killed runs' intents, kept for a grace period after the
    restart (recovery.INTENT_GRACE), then settle without another upload."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    from harness import Harness

    from objlib_daemon.sync import recovery

    files = 3000
    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    for i in range(files):
        h.write(f"d{i % 20:02d}/f{i:05d}.txt", size=1200 + i % 500)
    env = {k: v for k, v in (os.environ | h.env).items() if v is not None}
    index = h.state_dir / "local-store" / "index.db"

    def stored() -> int:
        try:
            with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    killed_at = []
    for more in (1, 600):  # first batch in the store; then some batches later
        proc = subprocess.Popen(
            [sys.executable, "-c", "from objlib_daemon.cli import main; main()", "sync"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start = stored()
        deadline = time.monotonic() + 120
        while stored() < start + more and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at.append(stored())
    assert 0 < killed_at[0] <= killed_at[1] < files, killed_at  # killed mid-sync, twice

    summary = h.sync()
    assert summary["failed"] == 0, summary
    h.converged()  # every file: exactly one document, of its content
    rows = h.rows()
    assert len(rows) == files and {r["state"] for r in rows.values()} == {FileState.INDEXED}
    assert len(h.docs()) == files
    with h.db() as conn:
        assert conn.execute("SELECT count(*) FROM pending_changes").fetchone()[0] == 0

    monkeypatch.setattr(recovery, "INTENT_GRACE", 0.0)  # the grace period is over
    assert h.sync()["uploaded"] == 0
    h.converged()
    with h.db() as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
