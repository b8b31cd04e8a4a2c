"""`objlibd auth` and `objlibd store` commands, run through click's CliRunner."""

from __future__ import annotations

import json

import keyring
import keyring.backends.fail
import keyring.core
import pytest
import structlog
from click.testing import CliRunner
from emulator import GeminiEmulator
from test_credentials import MemoryKeyring

from objlib_daemon import credentials, errors
from objlib_daemon.cli.auth import auth
from objlib_daemon.cli.store import StoreExists, store
from objlib_daemon.config import Config, StoreConfig

KEY = "AIzaCLI-test-key-000000000000000000000"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    for var in credentials.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the env file `auth set` may write
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    # Logs are captured (not printed into the command output) and checked for keys.
    with structlog.testing.capture_logs() as logs:
        yield
    assert not [entry for entry in logs if "AIza" in repr(entry)]


@pytest.fixture
def memory() -> MemoryKeyring:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    return backend


def test_auth_set_from_stdin_status_and_clear(memory):
    runner = CliRunner()
    result = runner.invoke(auth, ["set", "--stdin"], input=f"{KEY}\n")
    assert result.exit_code == 0, result.output
    assert memory.items == {("objlibd", "api_key"): KEY}
    assert KEY not in result.output

    result = runner.invoke(auth, ["status", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["configured"] and data["source"] == "keyring"
    assert KEY not in result.output and KEY[-4:] not in result.output

    result = runner.invoke(auth, ["clear"])
    assert result.exit_code == 0 and "removed" in result.output
    result = runner.invoke(auth, ["status"])
    assert result.exit_code == errors.CONFIG
    assert "objlibd auth set" in result.output


def test_auth_set_notes_an_environment_key_wins(memory, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaENV-other-000000000000000000000000")
    result = CliRunner().invoke(auth, ["set"], input=f"{KEY}\n")  # stdin is not a TTY
    assert result.exit_code == 0
    assert "GEMINI_API_KEY" in result.output and "precedence" in result.output


def test_auth_set_empty_is_a_usage_error(memory):
    result = CliRunner().invoke(auth, ["set", "--stdin"], input="\n")
    assert result.exit_code == 2 and memory.items == {}


def test_auth_set_without_keyring_writes_the_env_file():
    keyring.set_keyring(keyring.backends.fail.Keyring())
    result = CliRunner().invoke(auth, ["set", "--stdin"], input=f"{KEY}\n")
    assert result.exit_code == 0, result.output
    assert str(credentials.env_file()) in result.output and KEY not in result.output


@pytest.fixture
def server():
    emu = GeminiEmulator(api_key=KEY).start()
    try:
        yield emu
    finally:
        emu.stop()


def _obj(emu: GeminiEmulator) -> dict:
    config = Config(store=StoreConfig(backend="gemini", base_url=emu.url))
    return {"load_config": lambda: config}


def test_store_create_and_list(server, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    runner = CliRunner()
    result = runner.invoke(store, ["create", "My Library"], obj=_obj(server))
    assert result.exit_code == 0, result.output
    name = result.stdout.strip()
    assert name.startswith("fileSearchStores/")
    assert [s["displayName"] for s in server.stores()] == ["My Library"]

    result = runner.invoke(store, ["create", "My Library"], obj=_obj(server))
    assert isinstance(result.exception, StoreExists)
    assert len(server.stores()) == 1

    result = runner.invoke(store, ["list", "--json"], obj=_obj(server))
    assert result.exit_code == 0
    assert json.loads(result.output) == [
        {"name": name, "display_name": "My Library", "documents": 0}
    ]
    result = runner.invoke(store, ["list"], obj=_obj(server))
    assert name in result.output and "My Library" in result.output


def test_store_list_with_a_wrong_key_is_a_config_error(server, monkeypatch):
    wrong = "AIzaWRONG-000000000000000000000000000"
    monkeypatch.setenv("GEMINI_API_KEY", wrong)
    result = CliRunner().invoke(store, ["list"], obj=_obj(server))
    assert isinstance(result.exception, errors.ConfigurationError)
    assert wrong not in str(result.exception)
    assert "objlibd auth set" in str(result.exception)
