"""Reading and hashing a file so that what we hash is what we upload.

A file that changes while it is read (size or mtime differ before and after)
is not settled: the caller retries it later instead of uploading a torn copy.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

# At or below this size a file is read in one call and hashed from memory:
# `file_digest` allocates a 256 KiB buffer per call, which doubles the cost of
# hashing a small file (docs/benchmarks.md, benchmark 2).
SMALL_FILE = 1 << 20
# A forced reconcile hashes files on a pool of threads, one per core (at most
# MAX_WORKERS), CHUNK files per task.
CHUNK = 256
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
    """Hash files on a thread pool as a walk finds them, so that the pool hashes
    while the caller is still walking (docs/benchmarks.md, benchmark 2).

    The system calls and the hashing (from 2 KiB) release the GIL; the Python
    between them, and the walk's, does not, so threads gain less than
    processes would. A `ProcessPoolExecutor` was faster, but hung when a
    worker died at the wrong moment (docs/benchmarks.md, benchmark 2, third
    round). A task per chunk of files, not per file, keeps the pool's own
    cost small. With a `root`, paths are relative to it.
    """

    def __init__(self, *, root: str | None = None) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(
            min(os.cpu_count() or 1, MAX_WORKERS), thread_name_prefix="hash"
        )
        self.chunk: list[Path | str] = []
        self.sent: list[Future[list[Snapshot | Exception]]] = []

    def add(self, path: Path | str) -> None:
        self.chunk.append(path)
        if len(self.chunk) >= CHUNK:
            self._send()

    def _send(self) -> None:
        self.sent.append(self.pool.submit(_hash_all, self.chunk, self.root))
        self.chunk = []

    def results(self) -> list[Snapshot | Exception]:
        """A snapshot or the error met for each path, in the order they were added;
        the pool is gone when this returns."""
        if self.chunk:
            self._send()
        answers = [item for future in self.sent for item in future.result()]
        self.close()
        return answers

    def close(self) -> None:
        """Stop the pool: its threads are gone when this returns (also for a walk
        that failed half way and never asked for results)."""
        self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> HashStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_all(paths: list[Path | str], root: str | None) -> list[Snapshot | Exception]:
    """`hash_file` of each path (joined to `root`, if any); a failure is returned, not raised."""
    answers: list[Snapshot | Exception] = []
    for p in paths:
        try:
            answers.append(hash_file(os.path.join(root, p) if root is not None else p))
        except (OSError, NotSettled) as exc:
            answers.append(exc)
    return answers


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
