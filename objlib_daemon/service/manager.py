"""Which service manager, and install / uninstall / status for either one.

Why a dispatcher: the CLI and doctor speak of "the manager" without caring
which; systemd.py and launchd.py answer the same questions (files, plans,
reachability, enabled/active) in their own terms, and this module asks the
right one. `reachable` and `status` run read-only manager queries only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.service import launchd, systemd
from objlib_daemon.service.steps import Plan, Runner, run_command
from objlib_daemon.service.templates import context_for

SYSTEMD = systemd.NAME
LAUNCHD = launchd.NAME
_MANAGERS: dict[str, ModuleType] = {SYSTEMD: systemd, LAUNCHD: launchd}


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
    return _MANAGERS[manager].present()


def reachable(manager: str, runner: Runner = run_command) -> tuple[bool, str]:
    """Can we talk to the user's instance of the manager right now? (runs a probe)."""
    if not present(manager):
        return False, f"{manager} is not present on this machine"
    return _MANAGERS[manager].reachable(runner)


def plan_install(
    manager: str,
    config: Config,
    config_path: Path,
    *,
    on_mount: bool = False,
    home: Path | None = None,
) -> Plan:
    ctx = context_for(config, config_path, home=home)
    return _MANAGERS[manager].plan_install(ctx, config, on_mount)


def plan_uninstall(manager: str, *, home: Path | None = None, reachable_now: bool) -> Plan:
    home = (home or Path.home()).absolute()
    return _MANAGERS[manager].plan_uninstall(home, reachable_now)


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
    mod = _MANAGERS[manager]
    home = (home or Path.home()).absolute()
    files = mod.installed_files(home)
    data: dict[str, Any] = {"manager": manager, "present": present(manager), "files": {}}
    for name, path in files.items():
        entry: dict[str, Any] = {"path": str(path), "installed": path.exists()}
        if path.exists():
            program = mod.installed_program(path)
            entry["program"] = program
            entry["program_exists"] = bool(program and Path(program).exists())
        data["files"][name] = entry
    main = next(
        (data["files"][k] for k in mod.MAIN_FILES if data["files"][k]["installed"]),
        data["files"][mod.MAIN_FILES[0]],
    )
    data["installed"] = bool(main["installed"])
    if data["installed"] and config is not None and config_path is not None:
        data["current"] = _is_current(mod, Path(main["path"]), config, config_path, home)
    ok, why = reachable(manager, runner) if probe else (False, "not probed")
    data["reachable"] = ok
    data["reachable_reason"] = why
    data["enabled"] = data["active"] = None
    if ok and data["installed"]:
        data["enabled"], data["active"] = mod.query(runner, files)
    return data


def _is_current(
    mod: ModuleType, path: Path, config: Config, config_path: Path, home: Path
) -> bool | None:
    """Does the installed file equal what `install` would write now?"""
    try:
        expected = mod.render_installed(context_for(config, config_path, home=home), path)
        return path.read_text(encoding="utf-8") == expected
    except (OSError, ConfigurationError):
        return None
