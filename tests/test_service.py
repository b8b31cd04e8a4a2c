"""Service files: the rendered unit verifies, plists hold their keys, install writes them.

systemd here may be installed but not PID 1 (docs/platform-notes.md), so the unit is
checked with `systemd-analyze verify`, never started; launchd is absent, so
plists are checked with plistlib. The service manager is never driven: every
test that could run a command replaces the runner.
"""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from objlib_daemon import errors
from objlib_daemon.cli import cli
from objlib_daemon.config import from_dict
from objlib_daemon.library.volume import Mount
from objlib_daemon.service import launchd, manager, systemd
from objlib_daemon.service.steps import apply
from objlib_daemon.service.templates import Context, context_for, program_argv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME (and no XDG_CONFIG_HOME) so nothing lands in the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("OBJLIBD_RUNTIME_DIR", raising=False)
    return home


@pytest.fixture
def setup(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A config file with a library root, and the env the CLI reads."""
    root = tmp_path / "lib"
    root.mkdir()
    config = tmp_path / "conf dir" / "config.toml"  # a space, to exercise quoting
    config.parent.mkdir()
    config.write_text(f'[library]\nroot = "{root}"\n', encoding="utf-8")
    state = tmp_path / "state"
    monkeypatch.setenv("OBJLIBD_CONFIG", str(config))
    monkeypatch.setenv("OBJLIBD_STATE_DIR", str(state))
    return {"root": root, "config": config, "state": state, "home": home}


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Fail loudly if anything tries to run a process; record runner calls."""
    calls: list[list[str]] = []

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a command was run: {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    return calls


def _ctx(tmp_path: Path, **daemon: object) -> Context:
    config = from_dict({"library": {"root": str(tmp_path)}, "daemon": daemon})
    return context_for(config, tmp_path / "100% $real cfg.toml", home=tmp_path / "home")


def _verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit_dir / systemd.UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- templates -------------------------------------------------------------------


def test_unit_template_holds_the_service_contract() -> None:
    text = (REPO / "systemd" / "objlibd.service").read_text(encoding="utf-8")
    lines = {line.strip() for line in text.splitlines()}
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "UMask=0077",
        "EnvironmentFile=-%h/.config/objlibd/env",
        "WantedBy=default.target",
    ):
        assert expected in lines
    assert any(x.startswith("WatchdogSec=") for x in lines)
    prevent = next(x for x in lines if x.startswith("RestartPreventExitStatus="))
    assert "78" in prevent.split("=", 1)[1].split()
    assert "RequiresMountsFor" not in "".join(x for x in lines if not x.startswith("#"))


def test_plist_templates_parse() -> None:
    for name in ("com.objlibd.daemon.plist", "com.objlibd.sync-on-mount.plist"):
        data = plistlib.loads((REPO / "launchd" / name).read_bytes())
        assert data["Label"] == name.removesuffix(".plist")


# --- rendering -------------------------------------------------------------------


def test_program_is_the_running_interpreter() -> None:
    argv = program_argv()
    assert argv[0] == sys.executable
    completed = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "service" in completed.stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / systemd.UNIT).write_text(systemd.render_unit(ctx), encoding="utf-8")
    result = _verify(unit_dir)
    assert result.returncode == 0, result.stderr
    assert systemd.UNIT not in result.stderr, result.stderr  # no warnings about our unit


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_rendered_mount_dropin_passes_verify(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    unit_dir = tmp_path / "units"
    (unit_dir / f"{systemd.UNIT}.d").mkdir(parents=True)
    (unit_dir / systemd.UNIT).write_text(systemd.render_unit(ctx), encoding="utf-8")
    dropin = systemd.render_mount_dropin("media-me-LIB.mount")
    (unit_dir / f"{systemd.UNIT}.d" / systemd.DROPIN).write_text(dropin, encoding="utf-8")
    assert "BindsTo=media-me-LIB.mount" in dropin and "After=media-me-LIB.mount" in dropin
    # The mount unit is the one the automounter would bring; verify needs it to exist.
    (unit_dir / "media-me-LIB.mount").write_text(
        "[Mount]\nWhat=/dev/disk/by-label/LIB\nWhere=/media/me/LIB\n", encoding="utf-8"
    )
    result = _verify(unit_dir)
    assert result.returncode == 0, result.stderr


def test_unit_quotes_awkward_paths(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    unit = systemd.render_unit(ctx)
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    # % is a specifier and $ a variable to systemd: both doubled, the path quoted.
    assert '"' + str(tmp_path / "100%% $$real cfg.toml") + '"' in exec_start
    assert exec_start.startswith(f'ExecStart="{sys.executable}"')
    assert exec_start.endswith('"run"')
    assert f'Environment="OBJLIBD_STATE_DIR={ctx.state_dir}"' in unit
    path = tmp_path / "objlibd.service"
    path.write_text(unit, encoding="utf-8")
    assert systemd.installed_program(path) == sys.executable


def test_stop_timeouts_follow_shutdown_timeout(tmp_path: Path) -> None:
    default = _ctx(tmp_path)
    assert default.stop_timeout == 120
    assert "TimeoutStopSec=120s" in systemd.render_unit(default)
    long = _ctx(tmp_path, shutdown_timeout="5m")
    assert "TimeoutStopSec=360s" in systemd.render_unit(long)
    data = plistlib.loads(launchd.render_plist(long, launchd.LABEL_DAEMON).encode())
    assert data["ExitTimeOut"] == 360


def test_daemon_plist_holds_its_keys(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    data = plistlib.loads(launchd.render_plist(ctx, launchd.LABEL_DAEMON).encode())
    assert data["Label"] == launchd.LABEL_DAEMON
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ThrottleInterval"] == 30
    assert data["ExitTimeOut"] >= 120
    assert data["ProcessType"] == "Background"
    logs = str(tmp_path / "home" / "Library" / "Logs" / "objlibd")
    assert data["StandardErrorPath"].startswith(logs + "/")
    assert data["StandardOutPath"].startswith(logs + "/")
    args = data["ProgramArguments"]
    assert args[0] == sys.executable
    assert args[-3:] == ["--config", str(tmp_path / "100% $real cfg.toml"), "run"]
    assert data["EnvironmentVariables"]["OBJLIBD_STATE_DIR"] == str(ctx.state_dir)
    assert "@" not in "".join(map(str, args))


def test_sync_on_mount_plist_holds_its_keys(tmp_path: Path) -> None:
    data = plistlib.loads(launchd.render_plist(_ctx(tmp_path), launchd.LABEL_ON_MOUNT).encode())
    assert data["StartOnMount"] is True
    assert data["KeepAlive"] is False
    assert data["ProgramArguments"][0] == sys.executable
    assert data["ProgramArguments"][-1] == "sync"
    assert data["StandardErrorPath"].endswith("/Library/Logs/objlibd/sync-on-mount.log")


def test_runtime_dir_override_is_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJLIBD_RUNTIME_DIR", str(tmp_path / "run"))
    ctx = _ctx(tmp_path)
    assert f'"OBJLIBD_RUNTIME_DIR={tmp_path / "run"}"' in systemd.render_unit(ctx)
    data = plistlib.loads(launchd.render_plist(ctx, launchd.LABEL_DAEMON).encode())
    assert data["EnvironmentVariables"]["OBJLIBD_RUNTIME_DIR"] == str(tmp_path / "run")


@pytest.mark.parametrize(
    "path", ["/media/me/LIBRARY", "/media/me/MY STICK", "/mnt/usb-1/", "/media/zoë/.x", "/"]
)
def test_escape_path_matches_systemd_escape(path: str) -> None:
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape is not installed here")
    expected = subprocess.run(
        [tool, "--path", path], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert systemd.escape_path(path) == expected


# --- the CLI ---------------------------------------------------------------------


def test_install_dry_run_uses_interpreter_and_config(
    setup: dict[str, Path], no_commands: list[list[str]]
) -> None:
    result = CliRunner().invoke(cli, ["service", "install", "--systemd", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f'ExecStart="{sys.executable}"' in result.output
    assert f'"--config" "{setup["config"]}" "run"' in result.output
    assert f'"OBJLIBD_STATE_DIR={setup["state"]}"' in result.output
    assert "systemctl --user enable objlibd.service" in result.output
    assert "nothing was written" in result.output
    assert not any(setup["home"].rglob("*")), "a dry run wrote into HOME"


def test_launchd_dry_run_renders_anywhere(
    setup: dict[str, Path], no_commands: list[list[str]]
) -> None:
    result = CliRunner().invoke(cli, ["service", "install", "--launchd", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"<string>{sys.executable}</string>" in result.output
    assert f"<string>{setup['config']}</string>" in result.output
    assert "launchctl bootstrap gui/" in result.output
    assert not any(setup["home"].rglob("*"))


def test_install_refuses_where_the_manager_is_absent(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, no_commands: list[list[str]]
) -> None:
    monkeypatch.setattr(manager, "present", lambda manager: False)
    result = CliRunner().invoke(cli, ["service", "install", "--launchd"])
    assert result.exit_code == 78, result.output
    assert "launchd is not present on this machine" in result.output
    assert not any(setup["home"].rglob("*"))


def test_install_without_config_exits_78(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBJLIBD_CONFIG", str(tmp_path / "absent.toml"))
    result = CliRunner().invoke(cli, ["service", "install", "--systemd", "--dry-run"])
    assert result.exit_code == 78
    assert "no config file" in result.output


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "present", lambda manager: True)
    monkeypatch.setattr(manager, "reachable", lambda manager, runner=None: (False, "not here"))


def test_install_writes_the_unit_into_home(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, no_commands: list[list[str]]
) -> None:
    _unreachable(monkeypatch)
    result = CliRunner().invoke(cli, ["service", "install", "--systemd"])
    assert result.exit_code == 0, result.output
    unit = setup["home"] / ".config" / "systemd" / "user" / "objlibd.service"
    assert unit.is_file()
    assert f'"--config" "{setup["config"]}" "run"' in unit.read_text(encoding="utf-8")
    assert "not here; run these yourself" in result.output
    assert "systemctl --user restart objlibd.service" in result.output
    assert "loginctl enable-linger" in result.output

    status = CliRunner().invoke(cli, ["service", "status", "--systemd", "--json"])
    assert status.exit_code == 0, status.output
    assert '"installed": true' in status.output and '"current": true' in status.output

    # Uninstall where systemctl cannot be asked removes the enable link too.
    wants = unit.parent / "default.target.wants"
    wants.mkdir()
    (wants / "objlibd.service").symlink_to(unit)
    result = CliRunner().invoke(cli, ["service", "uninstall", "--systemd"])
    assert result.exit_code == 0, result.output
    assert not unit.exists() and not wants.exists()
    assert "systemctl --user daemon-reload" in result.output


def test_install_runs_commands_where_reachable(setup: dict[str, Path]) -> None:
    ran: list[list[str]] = []

    def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        ran.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    plan = manager.plan_install(
        manager.SYSTEMD, from_dict({"library": {"root": str(setup["root"])}}), setup["config"]
    )
    outcome = apply(plan, run=True, runner=runner)
    assert not outcome.failed and not outcome.to_run
    assert ran == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "objlibd.service"],
        ["systemctl", "--user", "restart", "objlibd.service"],
    ]


def test_mount_bound_install_hooks_the_mount(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, no_commands: list[list[str]]
) -> None:
    monkeypatch.setattr(systemd, "find_mount", lambda path: Mount(Path("/media/me/MY LIB"), "42"))
    result = CliRunner().invoke(cli, ["service", "install", "--systemd", "--on-mount", "--dry-run"])
    assert result.exit_code == 0, result.output
    mount = "media-me-MY\\x20LIB.mount"
    assert f"BindsTo={mount}" in result.output
    assert f"systemctl --user add-wants '{mount}' objlibd.service" in result.output
    assert "mount-bound.conf" in result.output


def test_mount_bound_refuses_the_root_filesystem(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, no_commands: list[list[str]]
) -> None:
    monkeypatch.setattr(systemd, "find_mount", lambda path: Mount(Path("/"), "1"))
    result = CliRunner().invoke(cli, ["service", "install", "--systemd", "--on-mount", "--dry-run"])
    assert result.exit_code == 78
    assert "root file system" in result.output


def test_status_when_not_installed(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15, finding 10: nothing installed was exit 1, "unexpected error"."""
    _unreachable(monkeypatch)
    result = CliRunner().invoke(cli, ["service", "status", "--systemd"])
    assert result.exit_code == errors.NO_DAEMON == 7, result.output
    assert "installed: no, objlibd is not installed as a systemd service" in result.output
    assert "`objlibd service install`" in result.output
    data = CliRunner().invoke(cli, ["service", "status", "--systemd", "--json"])
    assert data.exit_code == 7 and '"installed": false' in data.output


def test_launchd_on_mount_replaces_the_daemon_agent(
    setup: dict[str, Path], no_commands: list[list[str]]
) -> None:
    agents = setup["home"] / "Library" / "LaunchAgents"
    agents.mkdir(parents=True)
    (agents / "com.objlibd.daemon.plist").write_text("<plist/>", encoding="utf-8")
    result = CliRunner().invoke(cli, ["service", "install", "--launchd", "--on-mount", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"# would remove {agents / 'com.objlibd.daemon.plist'}" in result.output
    assert f"# would write {agents / 'com.objlibd.sync-on-mount.plist'}" in result.output
    assert "<key>StartOnMount</key>" in result.output
    assert "launchctl bootout gui/" in result.output
