"""Which files are tracked: include/exclude globs and size bounds.

Globs are matched against the library-relative POSIX path, case-insensitively
(FAT sticks hold `NOTES.TXT`). `**/` matches any number of folders, including
none; `*` and `?` never cross a `/`. Ineligible files are simply not tracked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from objlib_daemon.config import DEFAULT_EXCLUDE, LibraryConfig


def glob_to_regex(glob: str) -> str:
    """Translate one glob into a regex body (no anchors)."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = glob[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def _compile(globs: Iterable[str]) -> re.Pattern[str]:
    # `**/A` | `**/B` is compiled as `(?:.*/)?(?:A|B)`, the same language: the
    # engine then backtracks over the folders once, not once per glob (2.5x
    # faster on the default excludes; every scanned file is matched).
    anywhere: list[str] = []
    bodies: list[str] = []
    for g in globs:
        if g.startswith("**/"):
            anywhere.append(glob_to_regex(g[3:]))
        else:
            bodies.append(glob_to_regex(g))
    if anywhere:
        bodies.append("(?:.*/)?(?:" + "|".join(anywhere) + ")")
    if not bodies:
        return re.compile(r"(?!)")
    return re.compile("^(?:" + "|".join(bodies) + ")$", re.IGNORECASE | re.DOTALL)


def _by_name(include: Iterable[str], exclude: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern over a file's name alone that says what the globs say of a file
    in a folder the walk entered, when they allow it; else None.

    They do when every include is `**/NAME` and every exclude is `**/NAME` or
    `**/FOLDER/**` (the walk never enters such a folder), with no `/` in NAME or
    FOLDER: the defaults are. Matching a name is a short match with no
    backtracking over the folders (docs/benchmarks.md, benchmark 1).
    """
    names_in: list[str] = []
    names_out: list[str] = []
    for globs, names, folders_ok in ((include, names_in, False), (exclude, names_out, True)):
        for g in globs:
            body = g[3:] if g.startswith("**/") else None
            if body is None or body.startswith("**"):
                return None
            if folders_ok and body.endswith("/**") and "/" not in body[:-3]:
                continue  # a whole folder: pruned by the walk
            if "/" in body:
                return None
            names.append(glob_to_regex(body))
    if not names_in:
        return None
    out = f"(?!(?:{'|'.join(names_out)})$)" if names_out else ""
    return re.compile(f"^{out}(?:{'|'.join(names_in)})$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Eligibility:
    include: re.Pattern[str]
    exclude: re.Pattern[str]
    min_size: int
    max_size: int
    # Eligible by name alone, for a file in a folder the walk entered (see _by_name).
    name: re.Pattern[str] | None = None

    @classmethod
    def from_config(cls, cfg: LibraryConfig) -> Eligibility:
        return cls(
            _compile(cfg.include),
            _compile(cfg.exclude),
            cfg.min_size,
            cfg.max_size,
            _by_name(cfg.include, cfg.exclude),
        )

    def path_ok(self, rel: str) -> bool:
        """Eligible by name (size not considered): included and not excluded."""
        return bool(self.include.match(rel)) and not self.exclude.match(rel)

    def dir_ok(self, rel: str) -> bool:
        """A folder is walked unless excluded (`.git`, `$RECYCLE.BIN`, ...)."""
        return not (self.exclude.match(rel) or self.exclude.match(rel + "/"))

    def size_problem(self, size: int) -> str | None:
        if size < self.min_size:
            return f"smaller than library.min_size ({size} < {self.min_size} bytes)"
        if size > self.max_size:
            return f"larger than library.max_size ({size} > {self.max_size} bytes)"
        return None


def why_not(cfg: LibraryConfig, rel: str, size: int | None) -> str | None:
    """Why `rel` (library-relative, of `size` bytes if known) is not tracked, naming
    the glob or bound that decides; None when it is eligible. For `objlibd why`:
    the walk itself only counts such files, it never says which rule (per-file
    reasons on every walk would cost time on 100k files)."""
    parts = rel.split("/")
    folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
    for glob in cfg.exclude:
        pattern = _compile([glob])
        litter = " (hidden file or OS litter)" if glob in DEFAULT_EXCLUDE else ""
        for folder in folders:
            if pattern.match(folder) or pattern.match(folder + "/"):
                return f"in folder {folder}/, excluded by library.exclude {glob!r}{litter}"
        if pattern.match(rel):
            return f"excluded by library.exclude {glob!r}{litter}"
    if not _compile(cfg.include).match(rel):
        return f"not a tracked format: matches none of library.include ({', '.join(cfg.include)})"
    if size is not None:
        return Eligibility.from_config(cfg).size_problem(size)
    return None
