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
from typing import NamedTuple

from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.paths import BadName, key


class Entry(NamedTuple):
    """One eligible file. A tuple: 100k of them are built per reconcile."""

    path: str  # key: relative, NFC
    size: int
    mtime_ns: int
    on_disk: str  # relative, as spelled on disk (the same string when ASCII)


@dataclass
class ScanResult:
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    directories: int = 0
    ineligible: int = 0


def walk(root: Path, eligibility: Eligibility, result: ScanResult) -> Iterator[Entry]:
    """Yield eligible files; fill `result.problems` and counters as it goes.

    The per-entry work is kept small (docs/benchmarks.md, benchmark 1): a
    regular file is recognised by one `is_file` call from the dirent type, an
    ASCII name is its own NFC key, and names are joined as strings.
    """
    entries = result.entries
    problems = result.problems
    path_ok = eligibility.path_ok
    min_size, max_size = eligibility.min_size, eligibility.max_size
    root_s = os.fspath(root)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        result.directories += 1
        try:
            it = os.scandir(os.path.join(root_s, rel_dir) if rel_dir else root_s)
        except OSError as exc:
            problems.append(f"{rel_dir or '.'}: cannot list folder: {exc.strerror}")
            continue
        prefix = f"{rel_dir}/" if rel_dir else ""
        with it:
            for entry in it:
                rel_raw = prefix + entry.name
                if rel_raw.isascii():
                    rel = rel_raw  # ASCII is valid UTF-8 and already NFC
                else:
                    try:
                        rel = key(rel_raw)
                    except BadName as exc:
                        problems.append(str(exc))
                        continue
                try:
                    # is_file/is_dir without following: False for a symlink.
                    if entry.is_file(follow_symlinks=False):
                        if not path_ok(rel):
                            result.ineligible += 1
                            continue
                        st = entry.stat(follow_symlinks=False)
                    elif entry.is_dir(follow_symlinks=False):
                        if eligibility.dir_ok(rel):
                            stack.append(rel_raw)
                        continue
                    elif entry.is_symlink():
                        if path_ok(rel) or entry.is_dir():
                            problems.append(f"{rel}: symbolic link not followed")
                        continue
                    else:
                        continue  # FIFOs, sockets, devices
                except OSError as exc:
                    problems.append(f"{rel}: cannot stat: {exc.strerror}")
                    continue
                size = st.st_size
                if not min_size <= size <= max_size:
                    result.ineligible += 1
                    continue
                if rel in entries:
                    problems.append(
                        f"{rel}: two names on disk normalise to the same path; one is skipped"
                    )
                    continue
                item = Entry(rel, size, st.st_mtime_ns, rel_raw)
                entries[rel] = item
                yield item


def scan(root: Path, eligibility: Eligibility) -> ScanResult:
    result = ScanResult()
    for _ in walk(root, eligibility, result):
        pass
    return result
