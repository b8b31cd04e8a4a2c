"""API key resolution: environment order, keyring via keyring's own API, timeouts.

No real keyring backend can run headless, so the tests install small
KeyringBackend subclasses with `keyring.set_keyring`, plus keyring's own
`fail.Keyring`, which is exactly what a headless machine gets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.core
import keyring.errors
import pytest

from objlib_daemon import credentials, errors
from objlib_daemon.credentials import (
    clear_key,
    describe_source,
    resolve_api_key,
    set_key,
)
from objlib_daemon.errors import ConfigurationError

GEMINI = "AIzaGEMINI-0000000000000000000000000001"
GOOGLE = "AIzaGOOGLE-0000000000000000000000000002"
STORED = "AIzaSTORED-0000000000000000000000000003"


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.items.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not set")


class HangingKeyring(MemoryKeyring):
    """A locked keyring waiting for a password prompt nobody answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self.release.wait(30)
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.release.wait(30)


class LockedKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")


class LeakyKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError(f"backend exploded while holding {STORED}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in credentials.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no real ~/.config/objlibd/env is read


@pytest.fixture
def use_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    # Snapshot the process-wide backend so it is restored after the test.
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    installed: list[keyring.backend.KeyringBackend] = []

    def install(backend: keyring.backend.KeyringBackend) -> keyring.backend.KeyringBackend:
        keyring.set_keyring(backend)
        installed.append(backend)
        return backend

    yield install
    for backend in installed:
        if isinstance(backend, HangingKeyring):
            backend.release.set()


def test_gemini_env_wins(monkeypatch, use_keyring):
    use_keyring(MemoryKeyring()).set_password("objlibd", "api_key", STORED)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI)
    assert resolve_api_key() == (GEMINI, "env:GEMINI_API_KEY")


def test_google_env_is_second(monkeypatch, use_keyring):
    use_keyring(MemoryKeyring()).set_password("objlibd", "api_key", STORED)
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE)
    assert resolve_api_key() == (GOOGLE, "env:GOOGLE_API_KEY")


def test_blank_env_counts_as_unset(monkeypatch, use_keyring):
    use_keyring(MemoryKeyring()).set_password("objlibd", "api_key", f"  {STORED}\n")
    monkeypatch.setenv("GEMINI_API_KEY", "   ")
    assert resolve_api_key() == (STORED, "keyring")


def test_both_set_and_different_warns_and_prefers_gemini():
    warnings: list[str] = []
    env = {"GEMINI_API_KEY": GEMINI, "GOOGLE_API_KEY": GOOGLE}
    assert resolve_api_key(environ=env, warnings=warnings) == (GEMINI, "env:GEMINI_API_KEY")
    assert len(warnings) == 1
    assert "GEMINI_API_KEY" in warnings[0] and "GOOGLE_API_KEY" in warnings[0]
    assert GEMINI not in warnings[0] and GOOGLE not in warnings[0]


def test_both_set_and_equal_is_quiet():
    warnings: list[str] = []
    env = {"GEMINI_API_KEY": GEMINI, "GOOGLE_API_KEY": GEMINI}
    resolve_api_key(environ=env, warnings=warnings)
    assert warnings == []


def test_no_keyring_backend_is_exit_78_with_instructions(use_keyring):
    use_keyring(keyring.backends.fail.Keyring())  # what a headless machine has
    with pytest.raises(ConfigurationError) as info:
        resolve_api_key(environ={})
    assert info.value.exit_code == errors.CONFIG == 78
    text = str(info.value)
    assert "objlibd auth set" in text and "GEMINI_API_KEY" in text
    assert "no system keyring" in text


def test_nothing_stored_is_exit_78(use_keyring):
    use_keyring(MemoryKeyring())
    with pytest.raises(ConfigurationError, match="none stored in the keyring"):
        resolve_api_key(environ={})


def test_hanging_keyring_times_out(use_keyring):
    use_keyring(HangingKeyring())
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="did not answer within 0.2s") as info:
        resolve_api_key(environ={}, keyring_timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert "export GEMINI_API_KEY" in str(info.value)


def test_locked_keyring(use_keyring):
    use_keyring(LockedKeyring())
    with pytest.raises(ConfigurationError, match="locked"):
        resolve_api_key(environ={})


def test_keyring_errors_do_not_echo_their_message(use_keyring):
    use_keyring(LeakyKeyring())
    with pytest.raises(ConfigurationError) as info:
        resolve_api_key(environ={})
    assert STORED not in str(info.value) and "RuntimeError" in str(info.value)


def test_set_and_clear(use_keyring):
    backend = use_keyring(MemoryKeyring())
    set_key(f" {STORED}\n")
    assert backend.items == {("objlibd", "api_key"): STORED}
    assert resolve_api_key(environ={}) == (STORED, "keyring")
    assert clear_key() is True
    assert clear_key() is False
    assert backend.items == {}


def test_set_rejects_blank_and_whitespace(use_keyring):
    backend = use_keyring(MemoryKeyring())
    for bad in ("", "   ", "two words"):
        with pytest.raises(ConfigurationError):
            set_key(bad)
    assert backend.items == {}


def test_set_without_keyring_writes_the_env_file_the_service_reads(use_keyring):
    use_keyring(keyring.backends.fail.Keyring())
    where = set_key(STORED)
    path = credentials.env_file()
    assert str(path) in where and STORED not in where
    assert path.read_text(encoding="utf-8") == f"GEMINI_API_KEY={STORED}\n"
    assert resolve_api_key(environ={}) == (STORED, "env_file")
    assert describe_source(environ={}).source == "env_file"


def test_set_on_a_hanging_keyring_times_out(use_keyring):
    use_keyring(HangingKeyring())
    with pytest.raises(ConfigurationError, match="did not answer"):
        set_key(STORED, keyring_timeout=0.2)


def test_describe_source_never_shows_the_key(use_keyring):
    use_keyring(MemoryKeyring()).set_password("objlibd", "api_key", STORED)
    status = describe_source(environ={"GEMINI_API_KEY": GEMINI, "GOOGLE_API_KEY": GOOGLE})
    assert status.configured and status.source == "env:GEMINI_API_KEY"
    assert status.keyring == "key stored"
    assert len(status.warnings) == 2  # env conflict, and the keyring key is shadowed
    text = repr(status.as_dict())
    for key in (GEMINI, GOOGLE, STORED):
        assert key not in text and key[-4:] not in text


def test_describe_source_keyring_and_missing(use_keyring):
    use_keyring(MemoryKeyring()).set_password("objlibd", "api_key", STORED)
    status = describe_source(environ={})
    assert status.source == "keyring" and "keyring" in status.description
    use_keyring(keyring.backends.fail.Keyring())
    status = describe_source(environ={})
    assert not status.configured and status.source is None
    assert "objlibd auth set" in status.description
    assert status.keyring.startswith("unavailable")
