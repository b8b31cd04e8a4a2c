"""The volume marker and the "is the library really here?" check.

Deletion is never inferred from absence unless the marker with our library id
is readable at the root and the root is on the same device as when the pass
started (design.md invariant 2). Anything else means "unavailable".
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARKER = ".objlibd"


class MarkerError(Exception):
    pass


def read_marker(root: Path) -> dict[str, object] | None:
    """The marker's content, None when absent; MarkerError when unreadable or malformed."""
    try:
        raw = (root / MARKER).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise MarkerError(f"cannot read {root / MARKER}: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise MarkerError(f"{root / MARKER} is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("library_id"), str):
        raise MarkerError(f"{root / MARKER} has no library_id")
    return data


def write_marker(root: Path, library_id: str | None = None) -> str:
    """Create the marker (with a new library id unless given); returns the id."""
    library_id = library_id or uuid.uuid4().hex
    payload = {"library_id": library_id, "created": time.time(), "tool": "objlibd"}
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    os.replace(tmp, root / MARKER)
    return library_id


@dataclass(frozen=True)
class VolumeState:
    available: bool
    reason: str
    device: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available, "reason": self.reason}


def probe(root: Path, library_id: str) -> VolumeState:
    """Is the library present right now? Cheap: one stat and one small read."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return VolumeState(False, f"library root {root} does not exist (volume not mounted?)")
    except OSError as exc:
        return VolumeState(False, f"library root {root} cannot be read: {exc.strerror}")
    try:
        marker = read_marker(root)
    except MarkerError as exc:
        return VolumeState(False, str(exc))
    if marker is None:
        return VolumeState(
            False,
            f"marker {MARKER} missing at {root} (volume not mounted, or a different folder)",
        )
    if marker["library_id"] != library_id:
        return VolumeState(
            False, f"marker at {root} names another library ({marker['library_id']})"
        )
    return VolumeState(True, "marker present", st.st_dev)


class VolumeGuard:
    """Pins the device seen at the start of a pass; `verify()` before any missing mark."""

    def __init__(self, root: Path, library_id: str) -> None:
        self.root = root
        self.library_id = library_id
        self.start = probe(root, library_id)

    @property
    def available(self) -> bool:
        return self.start.available

    def verify(self) -> VolumeState:
        now = probe(self.root, self.library_id)
        if now.available and now.device != self.start.device:
            return VolumeState(False, "library root changed device during the pass")
        if now.available and not self.start.available:
            return VolumeState(False, "volume was unavailable when the pass started")
        return now
