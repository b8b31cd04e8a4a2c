"""Doctor: is objlibd installed as a service, and is it running (or rightly waiting)?

Why separate: not installed is fine (`objlibd run` by hand works too), but an
installed unit whose interpreter vanished, or one that is not running, is a
silent stop. A daemon that answers on its control socket is asked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.doctor.report import Check
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.service import launchd
from objlib_daemon.service import manager as svc
from objlib_daemon.service.steps import Runner


def _daemon_answer(config: Config | None) -> dict[str, Any] | None:
    """The running daemon's status over its control socket; None when none answers."""
    if config is None:
        return None
    from objlib_daemon.daemon.control import request

    try:
        return request(config, {"cmd": "status"})
    except Exception:  # a daemon that answers badly is reported as not answering
        return None


def check_service(
    config: Config | None, config_path: Path, out: list[Check], runner: Runner
) -> None:
    """Installed and running? Not installed is fine: `objlibd run` by hand works too."""
    answer = _daemon_answer(config)
    running = ""
    if answer:
        info = answer.get("daemon") if isinstance(answer.get("daemon"), dict) else answer
        pid = f"pid {info['pid']}, " if info.get("pid") else ""
        running = f"a daemon answers on the control socket ({pid}{info.get('state', '?')})"
    try:
        manager = svc.default_manager()
    except ConfigurationError:
        out.append(Check("service", True, running or "no service manager on this platform"))
        return
    st = svc.status(manager, config=config, config_path=config_path, runner=runner)
    where = next((f["path"] for f in st["files"].values() if f["installed"]), None)
    if not st["installed"]:
        message = f"not installed as a {manager} service (optional: `objlibd service install`)"
        out.append(Check("service", True, f"{message}; {running}" if running else message))
        return
    main = next(f for f in st["files"].values() if f["installed"])
    if main.get("program") and not main.get("program_exists"):
        out.append(
            Check(
                "service",
                False,
                f"{where} starts {main['program']}, which no longer exists",
                "run `objlibd service install` again (the venv moved or Python was upgraded)",
            )
        )
        return
    drift = (
        "; differs from what `objlibd service install` writes now (re-run it if you "
        "changed the config path, state dir or venv)"
        if st.get("current") is False
        else ""
    )
    if answer:
        out.append(Check("service", True, f"installed at {where}; {running}{drift}"))
        return
    if not st["reachable"]:
        out.append(
            Check(
                "service",
                True,
                f"installed at {where}; {st['reachable_reason']}, so whether it runs "
                f"cannot be checked here{drift}",
            )
        )
        return
    if st["active"] == "active":
        out.append(Check("service", True, f"installed at {where} and running{drift}"))
        return
    follows_drive = manager == svc.SYSTEMD and st["files"]["mount-bound"]["installed"]
    if follows_drive and not _library_mounted(config):
        out.append(Check("service", True, f"installed (mount-bound), waiting for the drive{drift}"))
        return
    logs = (
        "journalctl --user -u objlibd -e"
        if manager == svc.SYSTEMD
        else "~/Library/Logs/objlibd/objlibd.log"
    )
    start = (
        "systemctl --user start objlibd"
        if manager == svc.SYSTEMD
        else f"launchctl kickstart {launchd.gui_domain()}/{launchd.LABEL_DAEMON}"
    )
    out.append(
        Check(
            "service",
            False,
            f"installed at {where} but not running ({st['active']}, {st['enabled']})",
            f"read why in {logs}, then `{start}`",
        )
    )


def _library_mounted(config: Config | None) -> bool:
    root = config.library.root if config else None
    return bool(root and root.exists())
