"""The stat walk: every eligible regular file under the root, with size and mtime.

`Walk` is the one directory walker (the scan, a folder hint's expansion and
`count_folders`, the watches a recursive watch needs, all use it): iterative (no
recursion limit), each folder listed by descriptor, symlinks never followed,
which rules out loops and links pointing out of the library. `scan` judges
what it lists. Problems (unreadable folders, bad names, skipped links) are
collected for the caller to report once; none is fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.paths import BadName, key

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class Entry(NamedTuple):
    """One eligible file. A tuple: 100k of them are built per reconcile."""

    path: str  # key: relative, NFC
    size: int
    mtime_ns: int
    on_disk: str  # relative, as spelled on disk (the same string when ASCII)


class Walk:
    """Folders from `start` down, each as `(rel_dir, entries)`; the caller calls
    `enter(rel)` for each subfolder to descend into (paths relative to the root,
    as spelled on disk). A folder that cannot be listed is a problem, not an error.
    """

    def __init__(self, root: Path, start: str = "", problems: list[str] | None = None) -> None:
        self.root = os.fspath(root)
        self.problems = problems if problems is not None else []
        self._stack = [start]

    def enter(self, rel_dir: str) -> None:
        self._stack.append(rel_dir)

    def __iter__(self) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
        root, stack, problems = self.root, self._stack, self.problems
        while stack:
            rel_dir = stack.pop()
            try:
                fd = os.open(os.path.join(root, rel_dir) if rel_dir else root, _DIR_FLAGS)
            except OSError as exc:
                problems.append(f"{rel_dir or '.'}: cannot list folder: {exc.strerror}")
                continue
            try:
                try:
                    with os.scandir(fd) as it:
                        entries = list(it)
                except OSError as exc:
                    problems.append(f"{rel_dir or '.'}: cannot list folder: {exc.strerror}")
                    continue
                yield rel_dir, entries  # the caller stats them through `fd`: still open
            finally:
                os.close(fd)


def count_folders(root: Path) -> int:
    """The root and every folder below it, excluded ones too: the watches a
    recursive inotify watch needs (the watcher's check, `doctor`)."""
    count = 0
    walk = Walk(root)
    for rel_dir, entries in walk:
        count += 1
        prefix = f"{rel_dir}/" if rel_dir else ""
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                walk.enter(prefix + entry.name)
    return count


@dataclass
class ScanResult:
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    directories: int = 0
    ineligible: int = 0


def scan(
    root: Path,
    eligibility: Eligibility,
    found: Callable[[Entry], object] | None = None,
    *,
    under: str = "",
) -> ScanResult:
    """Every eligible file (below the folder `under`, as spelled on disk, when
    given), with the problems met; `found` is called with each one as the walk
    reaches it (a forced reconcile hashes them meanwhile).

    The per-entry work is kept small (docs/benchmarks.md, benchmark 1): folders
    are listed by descriptor (the kernel resolves only the name for each stat),
    a regular file is recognised by one `is_file` call from the dirent type, an
    ASCII name is its own NFC key and is judged by name alone when the globs
    allow it, and names are joined as strings.
    """
    result = ScanResult()
    entries = result.entries
    problems = result.problems
    path_ok = eligibility.path_ok
    name_ok = eligibility.name.match if eligibility.name is not None else None
    min_size, max_size = eligibility.min_size, eligibility.max_size
    new_entry = tuple.__new__
    walk = Walk(root, under, problems)
    enter = walk.enter
    for rel_dir, listed in walk:
        result.directories += 1
        prefix = f"{rel_dir}/" if rel_dir else ""
        for entry in listed:
            name = entry.name
            rel_raw = prefix + name
            if rel_raw.isascii():
                rel = rel_raw  # ASCII is valid UTF-8 and already NFC
                ok = name_ok(name) if name_ok is not None else path_ok(rel)
            else:
                try:
                    rel = key(rel_raw)
                except BadName as exc:
                    problems.append(str(exc))
                    continue
                ok = path_ok(rel)
            try:
                # is_file/is_dir without following: False for a symlink.
                if entry.is_file(follow_symlinks=False):
                    if not ok:
                        result.ineligible += 1
                        continue
                    st = entry.stat(follow_symlinks=False)
                elif entry.is_dir(follow_symlinks=False):
                    if eligibility.dir_ok(rel):
                        enter(rel_raw)
                    continue
                elif entry.is_symlink():
                    if ok or entry.is_dir():
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
            item = entries[rel] = new_entry(Entry, (rel, size, st.st_mtime_ns, rel_raw))
            if found is not None:
                found(item)
    return result
