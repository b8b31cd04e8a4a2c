"""Reading and hashing a file so that what we hash is what we upload.

A file that changes while it is read (size or mtime differ before and after)
is not settled: the caller retries it later instead of uploading a torn copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


@dataclass(frozen=True)
class Snapshot:
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
            # One read from memory: no buffered file object, no 256 KiB buffer.
            digest = hashlib.sha256(_read_upto(fd, before.st_size + 1)).hexdigest()
        else:
            with open(fd, "rb", closefd=False) as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
    finally:
        os.close(fd)
    return _settled(path, before, digest, None)


def _read_upto(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes, to the end of the file (a file that grew is caught as unsettled)."""
    parts = []
    left = limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def hash_files(paths: Sequence[Path | str]) -> Iterator[Snapshot | Exception]:
    """`hash_file` over many paths, in order; a failure is yielded, not raised.

    A large batch is hashed by worker processes, one per core (fresh
    interpreters running `_worker`: nothing forked, nothing of the caller's
    imported); they start at once, so the caller can do other work while they
    hash. If they cannot run or die, the rest is hashed in this process.
    """
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if len(paths) >= PARALLEL_MIN and workers >= 2:
        try:
            return _Workers(paths, workers).results()
        except OSError:
            pass
    return _serial(paths, 0)


def _serial(paths: Sequence[Path | str], start: int) -> Iterator[Snapshot | Exception]:
    for p in paths[start:]:
        try:
            yield hash_file(p)
        except (OSError, NotSettled) as exc:
            yield exc


_WORKER = "from objlib_daemon.library.files import _worker; _worker()"


class _Workers:
    """Chunks go round-robin to the workers; answers are read back in chunk order."""

    def __init__(self, paths: Sequence[Path | str], workers: int) -> None:
        self.paths = paths
        self.chunks = [paths[i : i + PARALLEL_CHUNK] for i in range(0, len(paths), PARALLEL_CHUNK)]
        # The workers import this package from where this process did.
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(min(workers, len(self.chunks))):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _WORKER],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        env=env,
                    )
                )
        except OSError:
            self.close()
            raise
        n = len(self.procs)
        for i, proc in enumerate(self.procs):
            mine = self.chunks[i::n]
            threading.Thread(target=self._feed, args=(proc.stdin, mine), daemon=True).start()

    @staticmethod
    def _feed(stdin: IO[bytes], chunks: list[Sequence[Path | str]]) -> None:
        try:
            with stdin:
                for chunk in chunks:
                    stdin.write(b"".join(os.fsencode(p) + b"\0" for p in chunk))
        except OSError:
            pass  # the worker died: its reader sees EOF

    def results(self) -> Iterator[Snapshot | Exception]:
        done = 0
        try:
            for i, chunk in enumerate(self.chunks):
                out = self.procs[i % len(self.procs)].stdout
                assert out is not None
                for path in chunk:
                    item = _parse(out.readline(), path)
                    if item is None:
                        raise EOFError
                    yield item
                    done += 1
        except (OSError, EOFError):
            self.close()
            yield from _serial(self.paths, done)  # hash what is left here
        finally:
            self.close()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


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
