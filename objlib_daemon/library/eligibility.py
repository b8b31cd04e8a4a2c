"""Which files are tracked: include/exclude globs and size bounds.

Globs are matched against the library-relative POSIX path, case-insensitively
(FAT sticks hold `NOTES.TXT`). `**/` matches any number of folders, including
none; `*` and `?` never cross a `/`. Ineligible files are simply not tracked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from objlib_daemon.config import LibraryConfig


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


@dataclass(frozen=True)
class Eligibility:
    include: re.Pattern[str]
    exclude: re.Pattern[str]
    min_size: int
    max_size: int

    @classmethod
    def from_config(cls, cfg: LibraryConfig) -> Eligibility:
        return cls(_compile(cfg.include), _compile(cfg.exclude), cfg.min_size, cfg.max_size)

    def path_ok(self, rel: str) -> bool:
        """Eligible by name (size not considered): included and not excluded."""
        return bool(self.include.match(rel)) and not self.exclude.match(rel)

    def dir_ok(self, rel: str) -> bool:
        """A folder is walked unless excluded (`.git`, `$RECYCLE.BIN`, ...)."""
        return not (self.exclude.match(rel) or self.exclude.match(rel + "/"))

    def size_ok(self, size: int) -> bool:
        return self.min_size <= size <= self.max_size

    def size_problem(self, size: int) -> str | None:
        if size < self.min_size:
            return f"smaller than library.min_size ({size} < {self.min_size} bytes)"
        if size > self.max_size:
            return f"larger than library.max_size ({size} > {self.max_size} bytes)"
        return None
