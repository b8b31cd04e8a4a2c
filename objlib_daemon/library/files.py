"""Reading and hashing a file so that what we hash is what we upload.

A file that changes while it is read (size or mtime differ before and after)
is not settled: the caller retries it later instead of uploading a torn copy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


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


def hash_file(path: Path) -> Snapshot:
    """SHA-256 without keeping the bytes (hashlib.file_digest: SHA instructions, no GIL)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return _settled(path, before, digest, None)


def read_file(path: Path) -> Snapshot:
    """The bytes and their hash, read once (the upload sends exactly these bytes)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        data = fh.read()
    return _settled(path, before, hashlib.sha256(data).hexdigest(), data)


def _settled(path: Path, before: os.stat_result, digest: str, data: bytes | None) -> Snapshot:
    after = os.stat(path)
    if stat_key(before) != stat_key(after) or before.st_ino != after.st_ino:
        raise NotSettled(f"{path.name} changed while it was read")
    return Snapshot(before.st_size, before.st_mtime_ns, digest, data)
