"""Library-relative path keys: POSIX separators, NFC, valid UTF-8.

macOS hands out NFD names and Linux keeps whatever bytes were written, so the
key is the NFC form and `resolve` finds the on-disk spelling again.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path


class BadName(ValueError):
    """A name that cannot be a key (not valid UTF-8)."""


def key(rel: str) -> str:
    """Normalise a relative path (str from os APIs) into the database key."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise BadName(f"{shown!r}: name is not valid UTF-8; rename the file") from None
    rel = rel.replace(os.sep, "/") if os.sep != "/" else rel
    return unicodedata.normalize("NFC", rel)


def relative_key(root: Path, path: str | os.PathLike[str]) -> str | None:
    """Key for an absolute path under `root`, or None when outside it."""
    try:
        rel = os.path.relpath(os.fspath(path), os.fspath(root))
    except ValueError:
        return None
    if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
        return None
    return key(rel)


def resolve(root: Path, rel_key: str) -> Path:
    """The on-disk path for a key; falls back to an NFC-equal spelling per component."""
    direct = root / rel_key
    if os.path.lexists(direct):
        return direct
    current = root
    for part in rel_key.split("/"):
        candidate = current / part
        if not os.path.lexists(candidate):
            try:
                with os.scandir(current) as it:
                    match = next(
                        (e.name for e in it if unicodedata.normalize("NFC", e.name) == part),
                        None,
                    )
            except OSError:
                return direct
            if match is None:
                return direct
            candidate = current / match
        current = candidate
    return current
