"""Hashing many files: the process pool, its fallback, and the forced reconcile
that hashes while it walks (docs/benchmarks.md, benchmark 2)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.spawn
import os
import threading
import unicodedata
from pathlib import Path

import pytest

from objlib_daemon.library import files
from objlib_daemon.library.files import HashStream, Snapshot


def _tree(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"d{i % 7}" / f"file {i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"content {i}\n".encode() * (i % 50 + 1))
        paths.append(p)
    return paths


def _expected(p: Path) -> Snapshot | type[Exception]:
    try:
        st = p.stat()
        data = p.read_bytes()
    except IsADirectoryError:
        return IsADirectoryError
    except FileNotFoundError:
        return FileNotFoundError
    return Snapshot(st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest())


def _check(paths: list[Path], got: list[Snapshot | Exception]) -> None:
    assert len(got) == len(paths)
    for p, item in zip(paths, got, strict=True):
        want = _expected(p)
        if isinstance(want, type):
            assert isinstance(item, want), (p, item)
        else:
            assert item == want, p


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative-to-root"])
def test_the_pool_answers_in_order_with_failures_in_place(tmp_path: Path, relative: bool) -> None:
    paths = _tree(tmp_path, 700)
    # A folder and a vanished file among them: errors come back in their place.
    paths[10] = tmp_path / "d1"
    paths[400] = tmp_path / "gone.txt"
    stream = HashStream(parallel_min=1, root=str(tmp_path) if relative else None)
    for p in paths:
        stream.add(p.relative_to(tmp_path) if relative else p)
    assert stream.pool is not None, "the pool should have started"
    got = stream.results()
    _check(paths, got)
    assert "gone.txt" in str(got[400]), "the error says which file"
    assert multiprocessing.active_children() == [], "the workers outlived the results"


def test_a_stream_closed_without_results_leaves_no_worker_or_thread(tmp_path: Path) -> None:
    """A forced walk that fails half way (the drive pulled) closes its stream without
    asking for results: the workers and the pool's threads all go."""
    paths = _tree(tmp_path, 1500)
    threads = set(threading.enumerate())
    with HashStream(parallel_min=1) as stream:
        for p in paths:
            stream.add(p)
        assert multiprocessing.active_children()
    assert multiprocessing.active_children() == []
    assert set(threading.enumerate()) <= threads


@pytest.mark.parametrize("killed_after", [1100, 1500], ids=["before-any-answer", "half-way"])
def test_a_killed_worker_costs_nothing_but_time(tmp_path: Path, killed_after: int) -> None:
    """A worker that dies (the OOM killer, a crash) leaves its chunks to be hashed here.
    The pool starts with chunks for every worker, so all are spawned at once (a worker
    spawned as the pool breaks can hang its shutdown on Python 3.11)."""
    paths = _tree(tmp_path, 2000)
    with HashStream(parallel_min=1100) as stream:  # 5 chunks: a task for each of 4 workers
        for p in paths[:killed_after]:
            stream.add(p)
        workers = multiprocessing.active_children()
        assert workers
        for worker in workers:
            worker.kill()
            worker.join()
        for p in paths[killed_after:]:
            stream.add(p)
        _check(paths, stream.results())
    assert multiprocessing.active_children() == []


def test_workers_that_cannot_start_leave_it_to_this_process(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 600)
    spawn = multiprocessing.get_context("spawn")
    python = multiprocessing.spawn.get_executable()
    spawn.set_executable(str(tmp_path / "no-such-python"))
    try:
        stream = HashStream(parallel_min=1)
        for p in paths:
            stream.add(p)
        _check(paths, stream.results())
    finally:
        spawn.set_executable(python)
    assert multiprocessing.active_children() == []


def test_forced_sync_hashes_every_file_in_the_walk_and_queues_only_differences(
    h, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sync --force` hashes every file on the workers during the scan and hands the
    applier only what differs (here a content change that kept size and mtime)."""
    monkeypatch.setattr(files, "PARALLEL_MIN", 5)
    monkeypatch.setattr(files, "PARALLEL_CHUNK", 4)  # many chunks, answered after the walk
    for i in range(40):
        h.write(f"a/File {i}.txt", f"text {i:03}\n".encode() * 200)
    nfd = unicodedata.normalize("NFD", "a/Café.txt")
    h.write(nfd, b"accented\n" * 200)
    assert h.sync()["new"] == 41
    # Same size, same mtime, other bytes: only a forced pass can see it.
    sneaky = h.root / "a/File 7.txt"
    st = sneaky.stat()
    sneaky.write_bytes(b"TEXT 007\n" * 200)
    os.utime(sneaky, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert h.sync()["modified"] == 0

    summary = h.sync("--force")
    assert summary["hashed"] == 41
    assert (summary["modified"], summary["uploaded"], summary["deleted"]) == (1, 1, 1)
    assert summary["unchanged"] == 40
    assert h.row("a/File 7.txt")["sha256"] == hashlib.sha256(b"TEXT 007\n" * 200).hexdigest()
    assert h.row(unicodedata.normalize("NFC", nfd))["state"] == "indexed"

    summary = h.sync("--force")
    assert (summary["hashed"], summary["uploaded"], summary["unchanged"]) == (41, 0, 41)
    result = h.run("sync", "--dry-run", "--force", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["hashed"], plan["unchanged"]) == (41, 41), plan


def test_the_first_chunks_start_every_worker_at_once() -> None:
    """HashStream relies on it: a worker spawned while a dead one breaks the
    pool can hang the pool's shutdown (Python 3.11)."""
    from objlib_daemon.library import files

    assert files.PARALLEL_MIN >= files.PARALLEL_CHUNK * files.MAX_WORKERS
