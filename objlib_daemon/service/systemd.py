"""The Linux side: a systemd user unit, optionally bound to the library's mount.

Why its own module: everything systemd-specific lives here, namely the
quoting rules of unit files, the unit-name form of a mount point, the user
unit folder, the plans for install and uninstall and the `systemctl --user`
queries; manager.py calls the same functions in launchd.py for macOS.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from objlib_daemon.config import Config
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.library.volume import find_mount
from objlib_daemon.service.steps import Plan, Runner, Step
from objlib_daemon.service.templates import Context, fill, read_template

NAME = "systemd"
UNIT = "objlibd.service"
DROPIN = "mount-bound.conf"
# status: the file whose presence means "installed" (the drop-in only modifies it).
MAIN_FILES = ("unit",)
_SC = ["systemctl", "--user"]


# --- rendering -----------------------------------------------------------------------


def _word(value: str, *, exec_line: bool) -> str:
    """One double-quoted systemd word: specifiers (%) and, in Exec lines, $ escaped."""
    if "\n" in value or "\r" in value:
        raise ConfigurationError(f"cannot put a newline into a systemd unit: {value!r}")
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        value = value.replace("$", "$$")
    return f'"{value}"'


def render_unit(ctx: Context) -> str:
    text = read_template(NAME, UNIT)
    argv = [*ctx.argv, "--config", str(ctx.config_path), "run"]
    exec_start = " ".join(_word(a, exec_line=True) for a in argv)
    environment = " ".join(_word(f"{k}={v}", exec_line=False) for k, v in ctx.environment.items())
    return fill(
        text,
        {
            "EXEC_START": exec_start,
            "ENVIRONMENT": environment,
            "TIMEOUT_STOP": str(ctx.stop_timeout),
        },
    )


def render_mount_dropin(mount_unit: str) -> str:
    text = read_template(NAME, "objlibd-mount-bound.conf")
    return fill(text, {"MOUNT_UNIT": mount_unit})


def render_installed(ctx: Context, path: Path) -> str:
    """What `install` would write now at `path` (the unit; the drop-in is not compared)."""
    return render_unit(ctx)


def installed_program(path: Path) -> str | None:
    """The interpreter an installed unit starts (to spot a moved venv)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    match = re.search(r'^ExecStart=\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if not match:
        match = re.search(r"^ExecStart=\s*(\S+)", text, re.M)
    if not match:
        return None
    return match.group(1).replace("%%", "%").replace("$$", "$").replace('\\"', '"')


# --- mounts ---------------------------------------------------------------------------


def escape_path(path: str) -> str:
    """`systemd-escape --path`: the unit-name form of a mount point."""
    trimmed = re.sub(r"/+", "/", path).strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, ch in enumerate(trimmed):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and ch.isalnum()) or ch in ":_" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def mount_unit_for(root: Path) -> str:
    """The mount unit of the volume holding the library, for the mount-bound variant."""
    if not root.exists():
        raise ConfigurationError(
            f"library root {root} is not there: plug the drive in (mounted) before "
            "installing the mount-bound variant, so its mount unit can be found"
        )
    point = find_mount(root).point
    if point == Path("/"):
        raise ConfigurationError(
            f"{root} is on the root file system, not on a volume of its own: the "
            "mount-bound variant is for removable drives; install without --on-mount"
        )
    return f"{escape_path(str(point))}.mount"


# --- the user manager -----------------------------------------------------------------


def user_dir(home: Path) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else home / ".config") / "systemd" / "user"


def installed_files(home: Path) -> dict[str, Path]:
    unit_dir = user_dir(home)
    return {"unit": unit_dir / UNIT, "mount-bound": unit_dir / f"{UNIT}.d" / DROPIN}


def present() -> bool:
    return sys.platform.startswith("linux") and shutil.which("systemctl") is not None


def reachable(runner: Runner) -> tuple[bool, str]:
    if not Path("/run/systemd/system").is_dir():
        return False, "systemd is installed but not running as init (PID 1)"
    probe = runner([*_SC, "show-environment"])
    if probe.returncode != 0:
        return False, (
            "the systemd user manager cannot be reached from this shell (no user "
            "session bus: log in as that user directly, not via su/sudo)"
        )
    return True, "systemd user manager reachable"


def query(runner: Runner, files: dict[str, Path]) -> tuple[str, str]:
    """(enabled, active) as systemctl words."""
    enabled = runner([*_SC, "is-enabled", UNIT])
    active = runner([*_SC, "is-active", UNIT])
    return enabled.stdout.strip() or "unknown", active.stdout.strip() or "unknown"


# --- plans ----------------------------------------------------------------------------


def _linger_note() -> str | None:
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user and Path("/var/lib/systemd/linger", user).exists():
        return None
    return (
        "user services stop when you log out; to keep objlibd running without a "
        f"login session run: loginctl enable-linger {user or '$USER'}"
    )


def plan_install(ctx: Context, config: Config, on_mount: bool) -> Plan:
    files = installed_files(ctx.home)
    dropin = files["mount-bound"]
    steps = [Step("write", files["unit"], render_unit(ctx))]
    if on_mount:
        mount = mount_unit_for(config.require_root())
        steps += [
            Step("write", dropin, render_mount_dropin(mount)),
            Step("run", argv=[*_SC, "daemon-reload"]),
            # Out of default.target, into the mount's wants: it follows the drive.
            Step("run", argv=[*_SC, "disable", UNIT], may_fail=True),
            Step("run", argv=[*_SC, "add-wants", mount, UNIT]),
            Step("run", argv=[*_SC, "restart", UNIT]),
        ]
        notes = [f"objlibd now starts when {mount} is mounted and stops when it goes away"]
    else:
        switching = dropin.exists()  # from the mount-bound variant back to the default
        if switching:
            steps.append(Step("remove", dropin))
        steps.append(Step("run", argv=[*_SC, "daemon-reload"]))
        if switching:  # drops the <mount>.wants link add-wants made
            steps.append(Step("run", argv=[*_SC, "disable", UNIT], may_fail=True))
        steps += [
            Step("run", argv=[*_SC, "enable", UNIT]),
            # restart, not start: an upgrade must replace the running daemon.
            Step("run", argv=[*_SC, "restart", UNIT]),
        ]
        notes = []
    linger = _linger_note()
    if linger:
        notes.append(linger)
    if config.store.backend == "gemini":
        notes.append(
            "no keyring in the service's session? put GEMINI_API_KEY=... into "
            f"{ctx.home / '.config/objlibd/env'} (chmod 600); the unit reads it"
        )
    notes.append("logs: journalctl --user -u objlibd -f")
    return Plan(NAME, steps, notes)


def _our_wants_links(unit_dir: Path) -> list[Path]:
    """Enable symlinks of our unit (default.target.wants, <mount>.wants) in the user dir."""
    if not unit_dir.is_dir():
        return []
    return sorted(p for p in unit_dir.glob(f"*.wants/{UNIT}") if p.is_symlink())


def plan_uninstall(home: Path, reachable_now: bool) -> Plan:
    steps: list[Step] = []
    if reachable_now:
        steps.append(Step("run", argv=[*_SC, "disable", "--now", UNIT], may_fail=True))
    else:
        # systemctl cannot be asked: remove the enable links it made ourselves.
        steps += [Step("remove", link) for link in _our_wants_links(user_dir(home))]
        steps.append(Step("run", argv=[*_SC, "stop", UNIT], may_fail=True))
    files = installed_files(home)
    for path in (files["mount-bound"], files["unit"]):
        if path.exists():
            steps.append(Step("remove", path))
    steps.append(Step("run", argv=[*_SC, "daemon-reload"]))
    return Plan(NAME, steps)
