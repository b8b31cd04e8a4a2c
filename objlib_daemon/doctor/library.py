"""Doctor: the library root is there, on its volume, with a marker naming the recorded library.

Why separate: an unplugged or renamed drive is the commonest "it stopped
syncing", and each way it goes wrong (not mounted, macOS renamed the volume,
another library's drive, never initialised) has a different fix.
"""

from __future__ import annotations

from pathlib import Path

from objlib_daemon.config import Config
from objlib_daemon.doctor.report import Check
from objlib_daemon.library.volume import MARKER, MarkerError, find_mount, read_marker


def check_library(
    config: Config, meta: dict[str, str], out: list[Check], *, volumes_dir: Path
) -> None:
    """Root present, marker present and naming the recorded library."""
    raw = meta.get("root") or config.library.root
    if not raw:
        out.append(
            Check(
                "library",
                False,
                "no library root configured",
                "set [library] root in the config, or run `objlibd init --library PATH`",
            )
        )
        return
    root = Path(raw)
    recorded = meta.get("library_id")
    if not root.exists():
        renamed = _renamed_volume(root, recorded, volumes_dir)
        if renamed is not None:
            out.append(
                Check(
                    "library",
                    False,
                    f"library root {root} does not exist, but the library is at {renamed} "
                    "(macOS renamed the volume because another one has the same name)",
                    "eject the other volume and re-mount this one, or rename the volume "
                    "back in Finder",
                )
            )
            return
        out.append(
            Check(
                "library",
                False,
                f"library root {root} does not exist (volume not mounted?)",
                "plug in / mount the drive; if the library moved, run `objlibd init "
                "--library NEWPATH --adopt` and update [library] root",
            )
        )
        return
    if not root.is_dir():
        out.append(
            Check("library", False, f"library root {root} is not a folder", "fix [library] root")
        )
        return
    try:
        marker = read_marker(root)
    except MarkerError as exc:
        out.append(
            Check(
                "library",
                False,
                str(exc),
                f"restore {root / MARKER} from a backup, or remove it and run "
                f"`objlibd init --library {root} --adopt`",
            )
        )
        return
    if marker is None:
        out.append(
            Check(
                "library",
                False,
                f"no marker {MARKER} at {root} (not the library's volume, or never initialised)",
                f"mount the drive that holds the library, or run `objlibd init --library {root}`",
            )
        )
        return
    found = str(marker["library_id"])
    if recorded and found != recorded:
        out.append(
            Check(
                "library",
                False,
                f"marker at {root} names another library ({found}); the database records "
                f"{recorded}",
                f"mount the drive holding library {recorded}, or take this one over with "
                f"`objlibd init --library {root} --adopt`",
            )
        )
        return
    point = find_mount(root).point
    where = "on the system volume" if point == Path("/") else f"on the volume mounted at {point}"
    out.append(Check("library", True, f"{root} present {where}, marker names library {found}"))


def _renamed_volume(root: Path, library_id: str | None, volumes_dir: Path) -> Path | None:
    """macOS mounts a second volume called NAME as `NAME 1`: find our marker there."""
    try:
        rel = root.relative_to(volumes_dir)
    except ValueError:
        return None
    if not rel.parts or not library_id or not volumes_dir.is_dir():
        return None
    name, rest = rel.parts[0], rel.parts[1:]
    for candidate in sorted(volumes_dir.glob(f"{name} *")):
        moved = candidate.joinpath(*rest)
        try:
            marker = read_marker(moved)
        except MarkerError:
            continue
        if marker and marker.get("library_id") == library_id:
            return moved
    return None
