"""Reading and hashing a file so that what we hash is what we upload.

A file that changes while it is read (size or mtime differ before and after)
is not settled: the caller retries it later instead of uploading a torn copy.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future
from pathlib import Path
from typing import NamedTuple

# At or below this size a file is read in one call and hashed from memory:
# `file_digest` allocates a 256 KiB buffer per call, which doubles the cost of
# hashing a small file (docs/benchmarks.md, benchmark 2).
SMALL_FILE = 1 << 20
# Hash this many files or more on a process pool, PARALLEL_CHUNK per task. Fewer
# files are not worth the workers' start (a fresh interpreter each, in parallel).
PARALLEL_MIN = 2000
PARALLEL_CHUNK = 256
MAX_WORKERS = 4


class NotSettled(Exception):
    """The file changed while it was being read."""


class Snapshot(NamedTuple):
    """A file's size, mtime and hash as read (and its bytes, when kept for upload).

    A tuple: a forced reconcile builds one per file."""

    size: int
    mtime_ns: int
    sha256: str
    data: bytes | None = None


def stat_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def hash_file(path: Path | str) -> Snapshot:
    """SHA-256 without keeping the bytes (hashlib.file_digest: SHA instructions, no GIL)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        before = os.fstat(fd)
        if before.st_size <= SMALL_FILE:
            # One read from memory: no buffered file object, no 256 KiB buffer,
            # no read to see the end (a file that grew meanwhile has another size).
            digest = hashlib.sha256(_read_upto(fd, before.st_size)).hexdigest()
        else:
            with open(fd, "rb", closefd=False) as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
    finally:
        os.close(fd)
    return _settled(path, before, digest, None)


def _read_upto(fd: int, limit: int) -> bytes:
    """`limit` bytes, or fewer at the end of the file (a file that grew or shrank is
    caught as unsettled by its stat)."""
    parts = []
    left = limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # 0 or several reads


class HashStream:
    """Hash files as a walk finds them: in this process for a few, in a pool for many.

    The first PARALLEL_MIN paths are only kept; from then on they go in chunks
    to a process pool, one worker per core, as they are added, so the workers
    hash while the caller is still walking (docs/benchmarks.md, benchmark 2).
    Processes, not threads: a small file costs more Python than hashing, and
    threads take turns at the GIL with each other and with the walk (a
    thread pool made the forced reconcile 1.8-2.7x slower: docs/benchmarks.md).
    The workers are spawned, not forked (the daemon is threaded): each is a
    fresh interpreter that imports `__main__` again (multiprocessing's rule;
    `objlibd`'s main imports only the CLI). The first chunks sent are at
    least one per worker, so all workers are spawned at once (one spawned
    as a dead worker breaks the pool can hang its shutdown on Python 3.11).
    A chunk the pool cannot answer (a worker would not start, or died) is
    hashed here.

    With a `root`, paths are relative to it: the kernel then resolves a few
    names per file, not the whole absolute path (twice: open and the settled
    check).
    """

    def __init__(self, parallel_min: int | None = None, *, root: str | None = None) -> None:
        self.parallel_min = PARALLEL_MIN if parallel_min is None else parallel_min
        self.root = root
        self.workers = min(os.cpu_count() or 1, MAX_WORKERS)
        self.kept: list[Path | str] = []  # not yet sent to the pool
        self.pool: Executor | None = None
        self.sent: list[tuple[list[Path | str], Future[list[Snapshot | Exception]] | None]] = []

    def add(self, path: Path | str) -> None:
        self.kept.append(path)
        if self.pool is not None:
            if len(self.kept) >= PARALLEL_CHUNK:
                self._send()
        elif len(self.kept) >= self.parallel_min and self.workers >= 2:
            self.pool = _start_pool(self.workers, self.root)
            self._send()

    def _send(self) -> None:
        """Every kept path to the pool, in chunks; a chunk the pool refuses is kept
        for `results()` to hash here."""
        assert self.pool is not None
        kept, self.kept = self.kept, []
        for i in range(0, len(kept), PARALLEL_CHUNK):
            chunk = kept[i : i + PARALLEL_CHUNK]
            try:
                future = self.pool.submit(_hash_chunk, chunk)
            except (BrokenExecutor, OSError):
                future = None
            self.sent.append((chunk, future))

    def results(self) -> list[Snapshot | Exception]:
        """A snapshot or the error met for each path, in the order they were added;
        the pool is gone when this returns."""
        if self.pool is None:
            return list(_serial(self.kept, self.root))
        self._send()
        answers = [item for chunk, future in self.sent for item in self._answers(chunk, future)]
        self.close()
        return answers

    def _answers(
        self, chunk: list[Path | str], future: Future[list[Snapshot | Exception]] | None
    ) -> Iterable[Snapshot | Exception]:
        """The pool's answers for a chunk, or the chunk hashed here if the pool could
        not answer (a worker would not start, or died)."""
        if future is not None:
            try:
                return future.result()
            except (BrokenExecutor, OSError):
                pass
        return _serial(chunk, self.root)

    def close(self) -> None:
        """Stop the pool: its workers are gone when this returns (also for a walk
        that failed half way and never asked for results)."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> HashStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_pool(workers: int, root: str | None) -> Executor:
    """Spawned workers that run in `root`, if given (paths are relative to it)."""
    # Imported here: ~40 ms of imports that most commands never need.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=None if root is None else os.chdir,
        initargs=() if root is None else (root,),
    )


def _hash_chunk(paths: list[Path | str]) -> list[Snapshot | Exception]:
    """A worker's task: one chunk of paths, answered in order."""
    return list(_serial(paths, None))


def _serial(paths: Iterable[Path | str], root: str | None) -> Iterator[Snapshot | Exception]:
    for p in paths:
        try:
            yield hash_file(os.path.join(root, p) if root is not None else p)
        except (OSError, NotSettled) as exc:
            yield exc


def read_file(path: Path) -> Snapshot:
    """The bytes and their hash, read once (the upload sends exactly these bytes)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        data = fh.read()
    return _settled(path, before, hashlib.sha256(data).hexdigest(), data)


def _settled(path: Path | str, before: os.stat_result, digest: str, data: bytes | None) -> Snapshot:
    after = os.stat(path)
    if stat_key(before) != stat_key(after) or before.st_ino != after.st_ino:
        raise NotSettled(f"{os.path.basename(path)} changed while it was read")
    return Snapshot(before.st_size, before.st_mtime_ns, digest, data)
