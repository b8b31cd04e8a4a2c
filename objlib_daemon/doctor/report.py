"""One doctor result and the closing line: what every check returns and how it is shown.

Why its own module: every group of checks builds `Check`s, and the CLI renders
them as text or JSON (`check`, `ok`, `message`, `fix`); keeping the shape in one
place keeps those keys stable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One result: `fix` is empty when `ok`."""

    check: str
    ok: bool
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.ok:
            return f"[ok]   {self.check}: {self.message}"
        return f"[FAIL] {self.check}: {self.message} -- fix: {self.fix}"


def summary(results: list[Check]) -> str:
    problems = sum(not r.ok for r in results)
    if not problems:
        return f"all {len(results)} checks passed"
    return f"{problems} problem(s) found"
