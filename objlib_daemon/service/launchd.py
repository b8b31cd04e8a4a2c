"""The macOS side: a launchd agent, either the daemon or a one-shot sync on every mount.

Why its own module: plists are XML with their own escaping and a parse
check, the agents live in ~/Library/LaunchAgents, and launchctl speaks in
`gui/<uid>/<label>` domains; manager.py calls the same functions in
systemd.py for Linux.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from objlib_daemon.config import Config
from objlib_daemon.service.steps import Plan, Runner, Step
from objlib_daemon.service.templates import Context, fill, read_template

NAME = "launchd"
LABEL_DAEMON = "com.objlibd.daemon"
LABEL_ON_MOUNT = "com.objlibd.sync-on-mount"
# status: whichever agent is installed (they exclude each other), else the daemon's.
MAIN_FILES = (LABEL_DAEMON, LABEL_ON_MOUNT)


def render_plist(ctx: Context, label: str) -> str:
    """The agent plist; comments kept, values XML-escaped, the result parsed back."""
    text = read_template(NAME, f"{label}.plist")

    def program(match: re.Match[str]) -> str:
        indent = match.group(1)
        return "\n".join(f"{indent}<string>{escape(a)}</string>" for a in ctx.argv)

    text = re.sub(r"^([ \t]*)<string>@OBJLIBD@</string>", program, text, flags=re.M)
    extra = "".join(
        f"\n    <key>{escape(k)}</key>\n    <string>{escape(v)}</string>"
        for k, v in ctx.environment.items()
        if k != "OBJLIBD_STATE_DIR"
    )
    text = text.replace("<string>@STATE_DIR@</string>", "<string>@STATE_DIR@</string>" + extra)
    text = re.sub(
        r"(<key>ExitTimeOut</key>\s*<integer>)\d+(</integer>)",
        rf"\g<1>{ctx.stop_timeout}\g<2>",
        text,
    )
    text = fill(
        text,
        {
            "CONFIG": escape(str(ctx.config_path)),
            "STATE_DIR": escape(str(ctx.state_dir)),
            "LOG_DIR": escape(str(ctx.log_dir)),
        },
    )
    plistlib.loads(text.encode("utf-8"))  # a broken render must fail here, not in launchd
    return text


def render_installed(ctx: Context, path: Path) -> str:
    """What `install` would write now at `path` (the plist named by its label)."""
    return render_plist(ctx, path.stem)


def installed_program(path: Path) -> str | None:
    """The interpreter an installed plist starts (to spot a moved venv)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        args = plistlib.loads(raw).get("ProgramArguments") or []
    except Exception:  # a hand-edited, broken plist: report as unknown
        return None
    return str(args[0]) if args else None


def agents_dir(home: Path) -> Path:
    return home / "Library" / "LaunchAgents"


def installed_files(home: Path) -> dict[str, Path]:
    return {label: agents_dir(home) / f"{label}.plist" for label in MAIN_FILES}


def gui_domain() -> str:
    return f"gui/{os.getuid()}"


def present() -> bool:
    return sys.platform == "darwin" and shutil.which("launchctl") is not None


def reachable(runner: Runner) -> tuple[bool, str]:
    return True, "launchd reachable"


def query(runner: Runner, files: dict[str, Path]) -> tuple[str, str]:
    """(enabled, active) from `launchctl print` of the installed agent."""
    label = LABEL_DAEMON if files[LABEL_DAEMON].exists() else LABEL_ON_MOUNT
    shown = runner(["launchctl", "print", f"{gui_domain()}/{label}"])
    if shown.returncode != 0:
        return "not loaded", "inactive"
    state = re.search(r"^\s*state = (\S+)", shown.stdout, re.M)
    if state and state.group(1) == "running":
        return "loaded", "active"
    return "loaded", state.group(1) if state else "unknown"


def _bootout(label: str) -> Step:
    # bootout of a label that is not loaded fails; that is fine.
    return Step("run", argv=["launchctl", "bootout", f"{gui_domain()}/{label}"], may_fail=True)


def plan_install(ctx: Context, config: Config, on_mount: bool) -> Plan:
    agents = agents_dir(ctx.home)
    wanted, other = (LABEL_ON_MOUNT, LABEL_DAEMON) if on_mount else (LABEL_DAEMON, LABEL_ON_MOUNT)
    domain = gui_domain()
    steps: list[Step] = []
    other_plist = agents / f"{other}.plist"
    if other_plist.exists():  # one or the other: both would sync the same library
        steps += [_bootout(other), Step("remove", other_plist)]
    plist = agents / f"{wanted}.plist"
    steps += [
        # launchd opens the log files but does not create their folder.
        Step("mkdir", ctx.log_dir),
        Step("write", plist, render_plist(ctx, wanted)),
        # bootstrap refuses a loaded label: unload the old version first.
        _bootout(wanted),
        Step("run", argv=["launchctl", "enable", f"{domain}/{wanted}"]),
        Step("run", argv=["launchctl", "bootstrap", domain, str(plist)]),
    ]
    notes = [
        f"logs: tail -f {ctx.log_dir}/{'sync-on-mount' if on_mount else 'objlibd'}.log",
        # TCC grants belong to the real binary, not the venv's symlink to it.
        "a library on a removable volume needs a one-time permission: allow "
        f"{os.path.realpath(ctx.argv[0])} under System Settings > Privacy & Security > "
        "Files and Folders > Removable Volumes (or Full Disk Access)",
    ]
    return Plan(NAME, steps, notes)


def plan_uninstall(home: Path, reachable_now: bool) -> Plan:
    steps: list[Step] = []
    for label, plist in installed_files(home).items():
        if plist.exists():
            steps += [_bootout(label), Step("remove", plist)]
    return Plan(NAME, steps, [f"logs are kept in {home / 'Library/Logs/objlibd'}"])
