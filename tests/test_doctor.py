"""`objlibd doctor`: each broken setup names its problem and fix, and fails; a good one passes.

Real files throughout: a config written to disk, a library initialised with
`objlibd init` on the local backend, the real SQLite database then broken the
way users break it. The keyring is the `fail` backend (a headless machine),
HOME is private, so no real key or service file is ever read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from click.testing import CliRunner, Result
from keyring.backends import fail

from objlib_daemon import doctor
from objlib_daemon.cli import cli
from objlib_daemon.config import load
from objlib_daemon.doctor import machine
from objlib_daemon.library.volume import write_marker
from objlib_daemon.service import manager
from objlib_daemon.state.db import SCHEMA_VERSION
from objlib_daemon.workspace import init_library

SECRET = "AIzaTESTsecret-never-printed-0123456789"


@pytest.fixture(autouse=True)
def headless_keyring() -> Iterator[None]:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(before)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = tmp_path / "home"
    home.mkdir()
    paths = {
        "home": home,
        "config": tmp_path / "config.toml",
        "state": tmp_path / "state",
        "root": tmp_path / "lib",
    }
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("OBJLIBD_CONFIG", str(paths["config"]))
    monkeypatch.setenv("OBJLIBD_STATE_DIR", str(paths["state"]))
    monkeypatch.delenv("OBJLIBD_RUNTIME_DIR", raising=False)
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    # The service check may probe the user's service manager: make it unreachable.
    monkeypatch.setattr(
        manager, "reachable", lambda manager, runner=None: (False, "not reachable here")
    )
    paths["root"].mkdir()
    (paths["root"] / "Courses").mkdir()
    (paths["root"] / "Courses" / "a.txt").write_text("a lecture transcript\n" * 100)
    return paths


@pytest.fixture
def good(env: dict[str, Path]) -> dict[str, Path]:
    """A library initialised on the local backend: the good setup."""
    result = CliRunner().invoke(cli, ["init", "--library", str(env["root"])])
    assert result.exit_code == 0, result.output
    return env


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["doctor", *args])


def failed(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("[FAIL]")]


def assert_fails_with(result: Result, check: str, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [x for x in failed(result) if x.startswith(f"[FAIL] {check}:")]
    assert lines, result.output
    assert text in lines[0], result.output
    assert " -- fix: " in lines[0]  # one line: the problem and its fix


def test_good_setup_passes(good: dict[str, Path]) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    assert not failed(result)
    assert "checks passed" in result.output
    for check in ("config", "database", "library", "sqlite", "service"):
        assert f"[ok]   {check}:" in result.output


def test_good_setup_online_after_a_sync(good: dict[str, Path]) -> None:
    synced = CliRunner().invoke(cli, ["sync"])
    assert synced.exit_code == 0, synced.output
    result = run("--online", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    store = next(c for c in data["checks"] if c["check"] == "store")
    assert store["ok"] and "reachable" in store["message"] and "1 document" in store["message"]
    assert set(store) == {"check", "ok", "message", "fix"}


def test_no_config(env: dict[str, Path]) -> None:
    result = run()
    assert_fails_with(result, "config", f"no config file at {env['config']}")
    assert "objlibd init" in failed(result)[0]


def test_bad_key_in_config(good: dict[str, Path]) -> None:
    with good["config"].open("a", encoding="utf-8") as fh:
        fh.write("bogus_key = 1\n")  # lands in [store], the last section
    result = run()
    assert_fails_with(result, "config", "unknown key(s) bogus_key")
    assert "docs/configuration.md" in failed(result)[0]


def test_library_root_absent(good: dict[str, Path]) -> None:
    good["root"].rename(good["root"].with_name("elsewhere"))
    result = run()
    assert_fails_with(result, "library", "does not exist (volume not mounted?)")
    assert "mount the drive" in failed(result)[0]


def test_marker_of_another_library(good: dict[str, Path]) -> None:
    write_marker(good["root"], "0" * 32)
    result = run()
    assert_fails_with(result, "library", f"names another library ({'0' * 32})")
    assert "--adopt" in failed(result)[0]


def test_marker_missing(good: dict[str, Path]) -> None:
    (good["root"] / ".objlibd").unlink()
    assert_fails_with(run(), "library", "no marker .objlibd at")


def test_stale_schema(good: dict[str, Path]) -> None:
    db = good["state"] / "objlibd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    result = run()
    expected = f"has schema 0, this objlibd expects {SCHEMA_VERSION} (stale)"
    assert_fails_with(result, "database", expected)
    assert "objlibd sync" in failed(result)[0]


def test_database_missing_a_table(good: dict[str, Path]) -> None:
    with sqlite3.connect(good["state"] / "objlibd.db") as conn:
        conn.execute("DROP TABLE pending_changes")
    assert_fails_with(run(), "database", "lacks table(s) pending_changes")


def test_no_database(env: dict[str, Path]) -> None:
    env["config"].write_text(f'[library]\nroot = "{env["root"]}"\n', encoding="utf-8")
    assert_fails_with(run(), "database", "no state database at")


def test_config_names_another_store(good: dict[str, Path]) -> None:
    good["config"].write_text(
        f'[library]\nroot = "{good["root"]}"\n[store]\nbackend = "local"\nname = "other"\n',
        encoding="utf-8",
    )
    assert_fails_with(
        run(), "database", "config names store local:other, the database records local:local"
    )


def _gemini_setup(env: dict[str, Path]) -> None:
    """A library recorded against a Gemini store, without calling the network."""
    env["config"].write_text(
        f'[library]\nroot = "{env["root"]}"\n'
        '[store]\nbackend = "gemini"\nname = "fileSearchStores/abc123"\n',
        encoding="utf-8",
    )
    init_library(
        load(env["config"]),
        env["root"],
        backend="gemini",
        store_name="fileSearchStores/abc123",
        store_display_name="My Library",
    )


def test_no_api_key(env: dict[str, Path]) -> None:
    _gemini_setup(env)
    result = run()
    assert_fails_with(result, "api key", "no Gemini API key")
    assert "objlibd auth set" in failed(result)[0]
    assert len(failed(result)) == 1, result.output  # nothing else is wrong


def test_api_key_source_shown_never_the_key(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _gemini_setup(env)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    for args in ((), ("--json",)):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert "GEMINI_API_KEY" in result.output
        assert SECRET not in result.output and SECRET[:12] not in result.output


def test_api_key_in_the_service_env_file(env: dict[str, Path]) -> None:
    _gemini_setup(env)
    env_file = env["home"] / ".config" / "objlibd" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"GEMINI_API_KEY={SECRET}\n", encoding="utf-8")
    env_file.chmod(0o644)
    result = run()
    assert SECRET not in result.output
    assert f"[ok]   api key: from the service's env file {env_file}" in result.output
    assert_fails_with(result, "env file", "readable by others")
    assert f"chmod 600 {env_file}" in failed(result)[0]
    env_file.chmod(0o600)
    assert run().exit_code == 0


def test_renamed_macos_volume(env: dict[str, Path]) -> None:
    volumes = env["root"].parent / "Volumes"
    root = volumes / "STICK" / "Library"
    root.mkdir(parents=True)
    env["config"].write_text(f'[library]\nroot = "{root}"\n', encoding="utf-8")
    init_library(load(env["config"]), root, backend="local", store_name="")
    (volumes / "STICK").rename(volumes / "STICK 1")
    results = doctor.run_checks(env["config"], volumes_dir=volumes)
    library = next(r for r in results if r.check == "library")
    assert not library.ok
    assert str(volumes / "STICK 1" / "Library") in library.message
    assert "renamed the volume" in library.message


def test_inotify_limit_too_low(
    good: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        (good["root"] / f"folder{i}").mkdir()
    limit = tmp_path / "max_user_watches"
    limit.write_text("8\n")
    monkeypatch.setattr(machine, "INOTIFY_LIMIT_FILE", limit)
    result = run()
    assert_fails_with(result, "inotify", "the library has 8 folders")
    assert "fs.inotify.max_user_watches=524288" in failed(result)[0]


def test_installed_service_with_a_vanished_interpreter(good: dict[str, Path]) -> None:
    unit = good["home"] / ".config" / "systemd" / "user" / "objlibd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(
        '[Service]\nExecStart="/nonexistent/venv/bin/python" "-m" "objlib_daemon" "run"\n',
        encoding="utf-8",
    )
    if manager.default_manager() != manager.SYSTEMD:
        pytest.skip("the systemd unit is only looked at on Linux")
    result = run()
    assert_fails_with(result, "service", "/nonexistent/venv/bin/python, which no longer exists")
    assert "objlibd service install" in failed(result)[0]


def test_json_lists_every_check(good: dict[str, Path]) -> None:
    (good["root"] / ".objlibd").unlink()
    result = run("--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False
    bad = [c for c in data["checks"] if not c["ok"]]
    assert [c["check"] for c in bad] == ["library"]
    assert bad[0]["fix"]
    assert all(set(c) == {"check", "ok", "message", "fix"} for c in data["checks"])
    assert os.environ.get("GEMINI_API_KEY") is None


def test_running_daemon_is_reported(good: dict[str, Path]) -> None:
    """The service check asks a live daemon over its control socket."""
    control = pytest.importorskip("objlib_daemon.daemon.control")
    config = load(good["config"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "objlib_daemon", "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 30
        while control.request(config, {"cmd": "ping"}) is None:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not come up"
            time.sleep(0.2)
        result = run()
        assert result.exit_code == 0, result.output
        assert f"a daemon answers on the control socket (pid {proc.pid}" in result.output
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
