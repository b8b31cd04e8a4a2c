"""Install objlibd as a systemd user unit or a launchd agent, from the repo's templates.

Why rendered, not copied: a service runs with no shell, no venv activation and
often another environment, so the unit must name the exact interpreter that
has objlibd installed, the config file and the state dir this user resolved.
The templates (systemd/, launchd/) hold every other decision with its reason.

Nothing here runs a command in a dry run. Where the service manager exists but
cannot be reached (systemd installed but not PID 1, a shell without a user
bus) the files are written and the enable/start commands printed instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from objlib_daemon.config import Config
from objlib_daemon.errors import ConfigurationError

SYSTEMD = "systemd"
LAUNCHD = "launchd"

UNIT = "objlibd.service"
DROPIN = "mount-bound.conf"
LABEL_DAEMON = "com.objlibd.daemon"
LABEL_ON_MOUNT = "com.objlibd.sync-on-mount"

# Above the worst drain: [daemon] shutdown_timeout plus a minute for closing
# the store and the database; never below two minutes.
MIN_STOP_TIMEOUT = 120
STOP_MARGIN = 60

_TEMPLATE_DIRS = {
    "objlibd.service": "systemd",
    "objlibd-mount-bound.conf": "systemd",
    f"{LABEL_DAEMON}.plist": "launchd",
    f"{LABEL_ON_MOUNT}.plist": "launchd",
}

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command with a timeout (a hung bus must not hang us)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


# --- templates and rendering ------------------------------------------------------


def template_path(name: str) -> Path:
    """The template shipped in the source tree (systemd/ or launchd/ next to the package)."""
    package = Path(__file__).resolve().parent
    for candidate in (
        package / "service_templates" / name,
        package.parent / _TEMPLATE_DIRS[name] / name,
    ):
        if candidate.is_file():
            return candidate
    raise ConfigurationError(
        f"service template {name} not found next to {package}: install objlibd from "
        "a source checkout (`pip install -e .`), or copy it from the repository's "
        f"{_TEMPLATE_DIRS[name]}/ folder"
    )


def program_argv() -> list[str]:
    """How a service starts objlibd: the running interpreter, never a PATH lookup.

    The interpreter is the thing a macOS TCC grant is given to, and the one
    whose site-packages hold this objlibd; `-m` needs a `__main__` module, so
    fall back to importing the CLI's entry point directly.
    """
    python = sys.executable or shutil.which("python3") or "python3"
    for module in ("objlib_daemon", "objlib_daemon.cli"):
        try:
            if importlib.util.find_spec(f"{module}.__main__") is not None:
                return [python, "-m", module]
        except ModuleNotFoundError:
            continue
    return [python, "-c", "from objlib_daemon.cli import main; main()"]


@dataclass(frozen=True)
class Context:
    """Everything a template needs, resolved once from the config and the environment."""

    argv: tuple[str, ...]
    config_path: Path
    state_dir: Path
    runtime_dir: Path | None
    home: Path
    stop_timeout: int

    @property
    def log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "objlibd"

    @property
    def environment(self) -> dict[str, str]:
        env = {"OBJLIBD_STATE_DIR": str(self.state_dir)}
        if self.runtime_dir is not None:
            env["OBJLIBD_RUNTIME_DIR"] = str(self.runtime_dir)
        return env


def context_for(config: Config, config_path: Path, *, home: Path | None = None) -> Context:
    """Pin the paths the CLI resolves now, so the service sees the same library.

    The state dir is always pinned (the service's environment may lack the
    variable or XDG dirs the user's shell has); the runtime dir only when the
    environment overrides it, because otherwise the daemon derives it from the
    config exactly as the CLI does.
    """
    runtime = os.environ.get("OBJLIBD_RUNTIME_DIR")
    stop = max(MIN_STOP_TIMEOUT, int(config.daemon.shutdown_timeout) + STOP_MARGIN)
    return Context(
        argv=tuple(program_argv()),
        config_path=config_path.expanduser().absolute(),
        state_dir=config.state_dir.expanduser().absolute(),
        runtime_dir=Path(runtime).expanduser().absolute() if runtime else None,
        home=(home or Path.home()).absolute(),
        stop_timeout=stop,
    )


def _systemd_word(value: str, *, exec_line: bool) -> str:
    """One double-quoted systemd word: specifiers (%) and, in Exec lines, $ escaped."""
    if "\n" in value or "\r" in value:
        raise ConfigurationError(f"cannot put a newline into a systemd unit: {value!r}")
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        value = value.replace("$", "$$")
    return f'"{value}"'


def render_systemd_unit(ctx: Context) -> str:
    text = template_path("objlibd.service").read_text(encoding="utf-8")
    argv = [*ctx.argv, "--config", str(ctx.config_path), "run"]
    exec_start = " ".join(_systemd_word(a, exec_line=True) for a in argv)
    environment = " ".join(
        _systemd_word(f"{k}={v}", exec_line=False) for k, v in ctx.environment.items()
    )
    return _fill(
        text,
        {
            "EXEC_START": exec_start,
            "ENVIRONMENT": environment,
            "TIMEOUT_STOP": str(ctx.stop_timeout),
        },
    )


def render_mount_dropin(mount_unit: str) -> str:
    text = template_path("objlibd-mount-bound.conf").read_text(encoding="utf-8")
    return _fill(text, {"MOUNT_UNIT": mount_unit})


def render_plist(ctx: Context, label: str) -> str:
    """The agent plist; comments kept, values XML-escaped, the result parsed back."""
    text = template_path(f"{label}.plist").read_text(encoding="utf-8")

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
    text = _fill(
        text,
        {
            "CONFIG": escape(str(ctx.config_path)),
            "STATE_DIR": escape(str(ctx.state_dir)),
            "LOG_DIR": escape(str(ctx.log_dir)),
        },
    )
    plistlib.loads(text.encode("utf-8"))  # a broken render must fail here, not in launchd
    return text


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", _strip_comments(text))
    if left:
        raise AssertionError(f"unfilled placeholder(s) {sorted(set(left))}")
    return text


def _strip_comments(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"^\s*#.*$", "", text, flags=re.M)


# --- systemd helpers ---------------------------------------------------------------


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


def mount_point(path: Path) -> Path:
    """The mount point holding `path` (which must exist)."""
    current = path.resolve()
    while not os.path.ismount(current):
        current = current.parent
    return current


def mount_unit_for(root: Path) -> str:
    """The mount unit of the volume holding the library, for the mount-bound variant."""
    if not root.exists():
        raise ConfigurationError(
            f"library root {root} is not there: plug the drive in (mounted) before "
            "installing the mount-bound variant, so its mount unit can be found"
        )
    point = mount_point(root)
    if point == Path("/"):
        raise ConfigurationError(
            f"{root} is on the root file system, not on a volume of its own: the "
            "mount-bound variant is for removable drives; install without --on-mount"
        )
    return f"{escape_path(str(point))}.mount"


def systemd_user_dir(home: Path) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else home / ".config") / "systemd" / "user"


def launch_agents_dir(home: Path) -> Path:
    return home / "Library" / "LaunchAgents"


# --- the manager -------------------------------------------------------------------


def default_manager() -> str:
    if sys.platform == "darwin":
        return LAUNCHD
    if sys.platform.startswith("linux"):
        return SYSTEMD
    raise ConfigurationError(
        f"no supported service manager on {sys.platform}: run `objlibd run` under "
        "your own supervisor"
    )


def present(manager: str) -> bool:
    """The manager exists on this machine at all (else install refuses)."""
    if manager == SYSTEMD:
        return sys.platform.startswith("linux") and shutil.which("systemctl") is not None
    return sys.platform == "darwin" and shutil.which("launchctl") is not None


def reachable(manager: str, runner: Runner = run_command) -> tuple[bool, str]:
    """Can we talk to the user's instance of the manager right now? (runs a probe)."""
    if not present(manager):
        return False, f"{manager} is not present on this machine"
    if manager == SYSTEMD:
        if not Path("/run/systemd/system").is_dir():
            return False, "systemd is installed but not running as init (PID 1)"
        probe = runner(["systemctl", "--user", "show-environment"])
        if probe.returncode != 0:
            return False, (
                "the systemd user manager cannot be reached from this shell (no user "
                "session bus: log in as that user directly, not via su/sudo)"
            )
        return True, "systemd user manager reachable"
    return True, "launchd reachable"


def gui_domain() -> str:
    return f"gui/{os.getuid()}"


# --- plans -------------------------------------------------------------------------


@dataclass
class Step:
    """One thing install/uninstall does: write or remove a file, or run a command."""

    kind: str  # "write" | "remove" | "mkdir" | "run"
    path: Path | None = None
    content: str = ""
    mode: int = 0o644
    argv: list[str] = field(default_factory=list)
    may_fail: bool = False  # e.g. unloading an agent that was not loaded

    def describe(self) -> str:
        if self.kind == "write":
            return f"write {self.path}"
        if self.kind == "remove":
            return f"remove {self.path}"
        if self.kind == "mkdir":
            return f"create {self.path}/"
        return " ".join(_shell_quote(a) for a in self.argv)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.path is not None:
            data["path"] = str(self.path)
        if self.argv:
            data["argv"] = list(self.argv)
        return data


@dataclass
class Plan:
    manager: str
    steps: list[Step]
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "write"]

    @property
    def commands(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "run"]


def _shell_quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _linger_note() -> str | None:
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if user and Path("/var/lib/systemd/linger", user).exists():
        return None
    return (
        "user services stop when you log out; to keep objlibd running without a "
        f"login session run: loginctl enable-linger {user or '$USER'}"
    )


def plan_install(
    manager: str,
    config: Config,
    config_path: Path,
    *,
    on_mount: bool = False,
    home: Path | None = None,
) -> Plan:
    ctx = context_for(config, config_path, home=home)
    if manager == SYSTEMD:
        return _plan_install_systemd(ctx, config, on_mount)
    return _plan_install_launchd(ctx, on_mount)


def _plan_install_systemd(ctx: Context, config: Config, on_mount: bool) -> Plan:
    unit_dir = systemd_user_dir(ctx.home)
    dropin = unit_dir / f"{UNIT}.d" / DROPIN
    steps = [Step("write", unit_dir / UNIT, render_systemd_unit(ctx))]
    sc = ["systemctl", "--user"]
    if on_mount:
        mount = mount_unit_for(config.require_root())
        steps += [
            Step("write", dropin, render_mount_dropin(mount)),
            Step("run", argv=[*sc, "daemon-reload"]),
            # Out of default.target, into the mount's wants: it follows the drive.
            Step("run", argv=[*sc, "disable", UNIT], may_fail=True),
            Step("run", argv=[*sc, "add-wants", mount, UNIT]),
            Step("run", argv=[*sc, "restart", UNIT]),
        ]
        notes = [f"objlibd now starts when {mount} is mounted and stops when it goes away"]
    else:
        switching = dropin.exists()  # from the mount-bound variant back to the default
        if switching:
            steps.append(Step("remove", dropin))
        steps.append(Step("run", argv=[*sc, "daemon-reload"]))
        if switching:  # drops the <mount>.wants link add-wants made
            steps.append(Step("run", argv=[*sc, "disable", UNIT], may_fail=True))
        steps += [
            Step("run", argv=[*sc, "enable", UNIT]),
            # restart, not start: an upgrade must replace the running daemon.
            Step("run", argv=[*sc, "restart", UNIT]),
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
    return Plan(SYSTEMD, steps, notes)


def _plan_install_launchd(ctx: Context, on_mount: bool) -> Plan:
    agents = launch_agents_dir(ctx.home)
    wanted, other = (LABEL_ON_MOUNT, LABEL_DAEMON) if on_mount else (LABEL_DAEMON, LABEL_ON_MOUNT)
    domain = gui_domain()
    steps: list[Step] = []
    other_plist = agents / f"{other}.plist"
    if other_plist.exists():  # one or the other: both would sync the same library
        steps += [
            Step("run", argv=["launchctl", "bootout", f"{domain}/{other}"], may_fail=True),
            Step("remove", other_plist),
        ]
    plist = agents / f"{wanted}.plist"
    steps += [
        # launchd opens the log files but does not create their folder.
        Step("mkdir", ctx.log_dir),
        Step("write", plist, render_plist(ctx, wanted)),
        # bootstrap refuses a loaded label: unload the old version first.
        Step("run", argv=["launchctl", "bootout", f"{domain}/{wanted}"], may_fail=True),
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
    return Plan(LAUNCHD, steps, notes)


def _our_wants_links(unit_dir: Path) -> list[Path]:
    """Enable symlinks of our unit (default.target.wants, <mount>.wants) in the user dir."""
    if not unit_dir.is_dir():
        return []
    return sorted(p for p in unit_dir.glob(f"*.wants/{UNIT}") if p.is_symlink())


def plan_uninstall(manager: str, *, home: Path | None = None, reachable_now: bool) -> Plan:
    home = (home or Path.home()).absolute()
    steps: list[Step] = []
    if manager == SYSTEMD:
        unit_dir = systemd_user_dir(home)
        sc = ["systemctl", "--user"]
        if reachable_now:
            steps.append(Step("run", argv=[*sc, "disable", "--now", UNIT], may_fail=True))
        else:
            # systemctl cannot be asked: remove the enable links it made ourselves.
            steps += [Step("remove", link) for link in _our_wants_links(unit_dir)]
            steps.append(Step("run", argv=[*sc, "stop", UNIT], may_fail=True))
        for path in (unit_dir / f"{UNIT}.d" / DROPIN, unit_dir / UNIT):
            if path.exists():
                steps.append(Step("remove", path))
        steps.append(Step("run", argv=[*sc, "daemon-reload"]))
        return Plan(SYSTEMD, steps)
    agents = launch_agents_dir(home)
    for label in (LABEL_DAEMON, LABEL_ON_MOUNT):
        plist = agents / f"{label}.plist"
        if plist.exists():
            steps += [
                Step(
                    "run", argv=["launchctl", "bootout", f"{gui_domain()}/{label}"], may_fail=True
                ),
                Step("remove", plist),
            ]
    return Plan(LAUNCHD, steps, [f"logs are kept in {home / 'Library/Logs/objlibd'}"])


@dataclass
class Outcome:
    """What applying a plan did: files touched, commands run (with results) or to run."""

    done: list[str] = field(default_factory=list)
    to_run: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def apply(plan: Plan, *, run: bool, runner: Runner = run_command) -> Outcome:
    """Write/remove the files; run the commands when `run`, else list them for the user."""
    outcome = Outcome()
    for step in plan.steps:
        if step.kind == "write":
            assert step.path is not None
            step.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = step.path.with_name(step.path.name + ".tmp")
            tmp.write_text(step.content, encoding="utf-8")
            os.chmod(tmp, step.mode)
            os.replace(tmp, step.path)
            outcome.done.append(step.describe())
        elif step.kind == "remove":
            assert step.path is not None
            step.path.unlink(missing_ok=True)
            _prune_empty(step.path.parent)
            outcome.done.append(step.describe())
        elif step.kind == "mkdir":
            assert step.path is not None
            if not step.path.is_dir():
                step.path.mkdir(parents=True, mode=0o700)
                outcome.done.append(step.describe())
        elif not run:
            outcome.to_run.append(step.describe())
        else:
            result = runner(step.argv)
            if result.returncode == 0 or step.may_fail:
                outcome.done.append(step.describe())
            else:
                detail = (result.stderr or result.stdout or "").strip().splitlines()
                outcome.failed.append(
                    f"{step.describe()} (exit {result.returncode}"
                    + (f": {detail[-1]}" if detail else "")
                    + ")"
                )
    return outcome


def _prune_empty(directory: Path) -> None:
    """Remove a drop-in dir we emptied (objlibd.service.d), nothing above it."""
    if directory.name.endswith(".d") or directory.name.endswith(".wants"):
        with contextlib.suppress(OSError):
            directory.rmdir()


# --- status ------------------------------------------------------------------------


def installed_files(manager: str, home: Path | None = None) -> dict[str, Path]:
    home = (home or Path.home()).absolute()
    if manager == SYSTEMD:
        unit_dir = systemd_user_dir(home)
        return {"unit": unit_dir / UNIT, "mount-bound": unit_dir / f"{UNIT}.d" / DROPIN}
    agents = launch_agents_dir(home)
    return {
        LABEL_DAEMON: agents / f"{LABEL_DAEMON}.plist",
        LABEL_ON_MOUNT: agents / f"{LABEL_ON_MOUNT}.plist",
    }


def installed_program(path: Path) -> str | None:
    """The interpreter an installed unit or plist starts (to spot a moved venv)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if path.suffix == ".plist":
        try:
            args = plistlib.loads(raw).get("ProgramArguments") or []
        except Exception:  # a hand-edited, broken plist: report as unknown
            return None
        return str(args[0]) if args else None
    match = re.search(r'^ExecStart=\s*"((?:[^"\\]|\\.)*)"', raw.decode("utf-8", "replace"), re.M)
    if not match:
        match = re.search(r"^ExecStart=\s*(\S+)", raw.decode("utf-8", "replace"), re.M)
    if not match:
        return None
    return match.group(1).replace("%%", "%").replace("$$", "$").replace('\\"', '"')


def status(
    manager: str,
    *,
    config: Config | None,
    config_path: Path | None,
    home: Path | None = None,
    runner: Runner = run_command,
    probe: bool = True,
) -> dict[str, Any]:
    """Installed? current? enabled/active? Runs read-only manager queries when `probe`."""
    home = (home or Path.home()).absolute()
    files = installed_files(manager, home)
    data: dict[str, Any] = {"manager": manager, "present": present(manager), "files": {}}
    for name, path in files.items():
        entry: dict[str, Any] = {"path": str(path), "installed": path.exists()}
        if path.exists():
            program = installed_program(path)
            entry["program"] = program
            entry["program_exists"] = bool(program and Path(program).exists())
        data["files"][name] = entry
    if manager == SYSTEMD:
        main = data["files"]["unit"]
    else:
        main = next(
            (
                data["files"][k]
                for k in (LABEL_DAEMON, LABEL_ON_MOUNT)
                if data["files"][k]["installed"]
            ),
            data["files"][LABEL_DAEMON],
        )
    data["installed"] = bool(main["installed"])
    if data["installed"] and config is not None and config_path is not None:
        data["current"] = _is_current(manager, main, config, config_path, home)
    ok, why = reachable(manager, runner) if probe else (False, "not probed")
    data["reachable"] = ok
    data["reachable_reason"] = why
    data["enabled"] = data["active"] = None
    if ok and data["installed"]:
        if manager == SYSTEMD:
            enabled = runner(["systemctl", "--user", "is-enabled", UNIT])
            active = runner(["systemctl", "--user", "is-active", UNIT])
            data["enabled"] = enabled.stdout.strip() or "unknown"
            data["active"] = active.stdout.strip() or "unknown"
        else:
            label = LABEL_DAEMON if files[LABEL_DAEMON].exists() else LABEL_ON_MOUNT
            shown = runner(["launchctl", "print", f"{gui_domain()}/{label}"])
            if shown.returncode != 0:
                data["enabled"], data["active"] = "not loaded", "inactive"
            else:
                state = re.search(r"^\s*state = (\S+)", shown.stdout, re.M)
                data["enabled"] = "loaded"
                data["active"] = (
                    "active"
                    if state and state.group(1) == "running"
                    else (state.group(1) if state else "unknown")
                )
    return data


def _is_current(
    manager: str, entry: dict[str, Any], config: Config, config_path: Path, home: Path
) -> bool | None:
    """Does the installed file equal what `install` would write now?"""
    try:
        ctx = context_for(config, config_path, home=home)
        if manager == SYSTEMD:
            expected = render_systemd_unit(ctx)
        else:
            label = Path(entry["path"]).stem
            expected = render_plist(ctx, label)
        return Path(entry["path"]).read_text(encoding="utf-8") == expected
    except (OSError, ConfigurationError):
        return None
