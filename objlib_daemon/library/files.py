"""Reading and hashing a file so that what we hash is what we upload.

A file that changes while it is read (size or mtime differ before and after)
is not settled: the caller retries it later instead of uploading a torn copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

# At or below this size a file is read in one call and hashed from memory:
# `file_digest` allocates a 256 KiB buffer per call, which doubles the cost of
# hashing a small file (docs/benchmarks.md, benchmark 2).
SMALL_FILE = 1 << 20
# Hash this many files or more on several cores. Processes: a thread per small
# file is slower than one thread (platform-notes.md). Fewer files are not worth
# the workers' start-up (~50 ms each, in parallel).
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


def hash_files(paths: Iterable[Path | str]) -> Iterator[Snapshot | Exception]:
    """`hash_file` over many paths, in order; a failure is yielded, not raised."""
    stream = HashStream()
    for p in paths:
        stream.add(p)
    return stream.results()


class HashStream:
    """Hash files as a walk finds them: in this process for a few, on workers for many.

    The first PARALLEL_MIN paths are only kept; from then on they go to worker
    processes, one per core, as they are added, so the workers hash while the
    caller is still walking (docs/benchmarks.md, benchmark 2). The workers are
    fresh interpreters running `_worker` (nothing forked, nothing of the
    caller's imported). Whatever they cannot answer (they would not start,
    died, or sent garbage) is hashed here. `results()` yields in the order
    the paths were added.

    With a `root`, paths are relative to it and the workers run there: the
    kernel then resolves a few names per file, not the whole absolute path
    (twice: open and the settled check).
    """

    def __init__(self, parallel_min: int | None = None, *, root: str | None = None) -> None:
        self.parallel_min = PARALLEL_MIN if parallel_min is None else parallel_min
        self.root = root
        self.workers = min(os.cpu_count() or 1, MAX_WORKERS)
        self.kept: list[Path | str] = []
        self.pool: _Pool | None = None

    def add(self, path: Path | str) -> None:
        if self.pool is not None:
            self.pool.add(path)
            return
        self.kept.append(path)
        if len(self.kept) >= self.parallel_min and self.workers >= 2:
            try:
                self.pool = _Pool(self.workers, self.root)
            except OSError:
                self.workers = 1  # cannot start processes here: stay serial
                return
            for p in self.kept:
                self.pool.add(p)
            self.kept = []

    def results(self) -> Iterator[Snapshot | Exception]:
        if self.pool is None:
            return _serial(self.kept, self.root)
        return self.pool.results()

    def close(self) -> None:
        """Stop the workers (a walk that failed half way never asks for results)."""
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> HashStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serial(paths: Iterable[Path | str], root: str | None) -> Iterator[Snapshot | Exception]:
    for p in paths:
        try:
            yield hash_file(os.path.join(root, p) if root is not None else p)
        except (OSError, NotSettled) as exc:
            yield exc


_WORKER = "from objlib_daemon.library.files import _worker; _worker()"


class _Pool:
    """Worker processes fed chunks round-robin, each answering into a temporary file.

    Each worker's input is written by a thread of its own: a caller writing
    the pipes itself would block on one full pipe while the other worker runs
    dry. Answers go to a file, not a pipe: a pipe fills up within a thousand
    answers and would stall the worker unless yet another thread kept reading it.
    """

    def __init__(self, workers: int, root: str | None) -> None:
        self.root = root
        # The workers import this package from where this process did.
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.answers: list[IO[bytes]] = []
        try:
            for _ in range(workers):
                out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
                self.answers.append(out)
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _WORKER],
                        stdin=subprocess.PIPE,
                        stdout=out,
                        stderr=subprocess.DEVNULL,
                        env=env,
                        cwd=root,
                    )
                )
        except OSError:
            self.close()
            raise
        self.inputs: list[queue.SimpleQueue[bytes | None]] = []
        self.feeders: list[threading.Thread] = []
        for proc in self.procs:
            self.inputs.append(queue.SimpleQueue())
            self.feeders.append(
                threading.Thread(
                    target=_feed,
                    args=(proc.stdin, self.inputs[-1]),
                    name="hash-feeder",
                    daemon=True,
                )
            )
            self.feeders[-1].start()
        self.chunks: list[list[Path | str]] = []
        self.chunk: list[Path | str] = []

    def add(self, path: Path | str) -> None:
        self.chunk.append(path)
        if len(self.chunk) >= PARALLEL_CHUNK:
            self._send()

    def _send(self) -> None:
        to = self.inputs[len(self.chunks) % len(self.inputs)]
        to.put(os.fsencode("\0".join(map(os.fspath, self.chunk)) + "\0"))
        self.chunks.append(self.chunk)
        self.chunk = []

    def results(self) -> Iterator[Snapshot | Exception]:
        """Wait for the workers (they exit once their input ends), then yield their
        answers in order; the workers are gone when this returns."""
        if self.chunk:
            self._send()
        self._end_input()
        lines = []
        for proc, out in zip(self.procs, self.answers, strict=True):
            proc.wait()
            out.seek(0)
            lines.append(iter(out.read().splitlines()))
        self.close()
        return self._in_order(lines)

    def _in_order(self, lines: list[Iterator[bytes]]) -> Iterator[Snapshot | Exception]:
        n = len(lines)
        for i, chunk in enumerate(self.chunks):
            for path in chunk:
                item = _parse(next(lines[i % n], b""), path)
                if item is None:  # the worker died: hash the rest of its share here
                    lines[i % n] = iter(())
                    item = next(_serial([path], self.root))
                yield item

    def _end_input(self) -> None:
        for to in getattr(self, "inputs", []):  # absent when a worker failed to start
            to.put(None)  # the end: the feeder closes the worker's input and exits

    def close(self) -> None:
        """Workers killed if still running, feeder threads ended, answer files closed
        (also for a walk that failed half way and never asked for results)."""
        self._end_input()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for feeder in getattr(self, "feeders", []):
            feeder.join()  # its worker is gone: a blocked write fails at once
        for out in self.answers:
            out.close()


def _feed(stdin: IO[bytes] | None, chunks: queue.SimpleQueue[bytes | None]) -> None:
    assert stdin is not None
    # A worker that died makes the write fail: its answers run short.
    with contextlib.suppress(OSError), stdin:
        while (chunk := chunks.get()) is not None:
            stdin.write(chunk)


def _parse(line: bytes, path: Path | str) -> Snapshot | Exception | None:
    """One answer of `_worker` (None: no answer, the worker died)."""
    kind, _, rest = line.rstrip(b"\n").partition(b"\t")
    try:
        if kind == b"ok":
            size, mtime_ns, sha256 = rest.split(b"\t")
            return Snapshot(int(size), int(mtime_ns), sha256.decode())
        if kind == b"unsettled":
            return NotSettled(f"{os.path.basename(path)} changed while it was read")
        if kind == b"oserror":
            code = int(rest)
            return OSError(code, os.strerror(code), os.fspath(path))
    except ValueError:
        pass
    return None


def _worker() -> None:
    """Hash NUL-terminated paths from stdin; one tab-separated answer line each."""
    out = sys.stdout.buffer
    buf = b""
    while True:
        data = sys.stdin.buffer.read1(1 << 16)
        if not data:
            break
        buf += data
        *names, buf = buf.split(b"\0")
        for name in names:
            try:
                snap = hash_file(os.fsdecode(name))
                out.write(b"ok\t%d\t%d\t%s\n" % (snap.size, snap.mtime_ns, snap.sha256.encode()))
            except NotSettled:
                out.write(b"unsettled\n")
            except OSError as exc:
                out.write(b"oserror\t%d\n" % (exc.errno or errno.EIO))
        out.flush()


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
