"""The volume marker and the "is the library really here?" check.

Deletion is never inferred from absence unless the marker with our library id
is readable at the root and the root is on the same device as when the pass
started (docs/design.md invariant 2). Anything else means "unavailable".
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARKER = ".objlibd"
# Linux's mount table: each line names a mount's id and its mount point.
MOUNTINFO = "/proc/self/mountinfo"


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


# --- which mount holds the library ------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    point: Path
    id: str | None  # the kernel's mount id (Linux): a remount of the same drive changes it


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _read_mountinfo() -> str | None:
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def find_mount(path: Path, mountinfo: str | None = None) -> Mount:
    """The mount holding `path`: the longest mount point above it in the mount
    table (`mountinfo`'s text, read here when not given), with its id; where
    there is no table (macOS), the nearest folder above that is a mount point.

    The one lookup for the volume monitor (is it still the same mount?), the
    mount-bound service (which mount unit?) and `doctor` (which volume?).
    """
    target = os.path.realpath(path)
    table = mountinfo if mountinfo is not None else _read_mountinfo()
    best: Mount | None = None
    for line in (table or "").splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # >= : a later line for the same point is a mount stacked on top of it.
        if inside and (best is None or len(point) >= len(str(best.point))):
            best = Mount(Path(point), fields[0])
    if best is not None:
        return best
    current = Path(target)
    while not os.path.ismount(current):
        current = current.parent
    return Mount(current, None)
