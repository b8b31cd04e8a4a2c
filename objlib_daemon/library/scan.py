"""The stat walk: every eligible regular file under the root, with size and mtime.

An iterative `os.scandir` walk (no recursion limit, one stat per entry that
the dirent cache doesn't answer). Symlinks are never followed: that rules out
loops and links pointing out of the library. Problems (unreadable folders,
bad names, skipped links) are collected for the caller to report once; none
is fatal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.paths import BadName, key


@dataclass(frozen=True)
class Entry:
    path: str  # key: relative, NFC
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    directories: int = 0
    ineligible: int = 0


def walk(root: Path, eligibility: Eligibility, result: ScanResult) -> Iterator[Entry]:
    """Yield eligible files; fill `result.problems` and counters as it goes."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        result.directories += 1
        try:
            it = os.scandir(root / rel_dir if rel_dir else root)
        except OSError as exc:
            result.problems.append(f"{rel_dir or '.'}: cannot list folder: {exc.strerror}")
            continue
        with it:
            for entry in it:
                rel_raw = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    rel = key(rel_raw)
                except BadName as exc:
                    result.problems.append(str(exc))
                    continue
                try:
                    if entry.is_symlink():
                        if eligibility.path_ok(rel) or entry.is_dir():
                            result.problems.append(f"{rel}: symbolic link not followed")
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if eligibility.dir_ok(rel):
                            stack.append(rel_raw)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue  # FIFOs, sockets, devices
                    if not eligibility.path_ok(rel):
                        result.ineligible += 1
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    result.problems.append(f"{rel}: cannot stat: {exc.strerror}")
                    continue
                if not eligibility.size_ok(st.st_size):
                    result.ineligible += 1
                    continue
                if rel in result.entries:
                    result.problems.append(
                        f"{rel}: two names on disk normalise to the same path; one is skipped"
                    )
                    continue
                item = Entry(rel, st.st_size, st.st_mtime_ns)
                result.entries[rel] = item
                yield item


def scan(root: Path, eligibility: Eligibility) -> ScanResult:
    result = ScanResult()
    for _ in walk(root, eligibility, result):
        pass
    return result
