"""Where the Gemini API key comes from: environment first, then the system keyring.

Order (platform-notes.md, "Credentials"): GEMINI_API_KEY, GOOGLE_API_KEY,
then keyring service "objlibd" / user "api_key". The key is always passed to
the SDK explicitly, because the SDK on its own prefers GOOGLE_API_KEY.

The keyring is asked in a daemon thread with a timeout: headless Linux has no
backend (NoKeyringError) and a locked desktop keyring can prompt and hang. A
daemon thread (not a ThreadPoolExecutor, whose workers are joined at exit)
means a hung backend cannot keep the process from exiting either.

Nothing here ever returns, logs or formats the key itself, nor any part of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import keyring
import keyring.errors

from objlib_daemon.errors import ConfigurationError
from objlib_daemon.logging import get_logger

log = get_logger(__name__)

SERVICE = "objlibd"
USERNAME = "api_key"
ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")  # in order of preference
DEFAULT_KEYRING_TIMEOUT = 3.0

SOURCE_KEYRING = "keyring"

HOW_TO_SET = (
    "set one with `objlibd auth set` (stored in the system keyring), or export "
    "GEMINI_API_KEY=... in the environment the daemon runs in (services and "
    "headless machines have no keyring)"
)

T = TypeVar("T")


class KeyringUnavailable(Exception):
    """The keyring could not be asked: no backend, locked, timed out or broken."""


def _env_source(var: str) -> str:
    return f"env:{var}"


def _env_keys(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """[(variable, key)] for the set, non-blank variables, in preference order."""
    found = []
    for var in ENV_VARS:
        value = (environ.get(var) or "").strip()
        if value:
            found.append((var, value))
    return found


def _env_conflict(found: list[tuple[str, str]]) -> str | None:
    if len(found) == 2 and found[0][1] != found[1][1]:
        return (
            f"both {found[0][0]} and {found[1][0]} are set to different keys; "
            f"using {found[0][0]} (unset one of them to silence this)"
        )
    return None


def _keyring_call(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run a keyring operation in a daemon thread; KeyringUnavailable on any trouble."""
    result: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # reported to the caller below
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"objlibd-keyring-{what}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        raise KeyringUnavailable(
            f"the system keyring did not answer within {timeout:g}s (is it locked?)"
        )
    if "error" in result:
        exc = result["error"]
        if isinstance(exc, keyring.errors.NoKeyringError):
            raise KeyringUnavailable("no system keyring is available on this machine")
        if isinstance(exc, keyring.errors.KeyringLocked):
            raise KeyringUnavailable("the system keyring is locked")
        # Only the type: a backend's message could echo what it was handed.
        raise KeyringUnavailable(f"the system keyring failed ({type(exc).__name__})")
    return result["value"]


def _get_from_keyring(timeout: float) -> str | None:
    def get() -> str | None:
        return keyring.get_password(SERVICE, USERNAME)

    value = _keyring_call(get, timeout, "get")
    value = (value or "").strip()
    return value or None


def resolve_api_key(
    *,
    keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT,
    environ: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> tuple[str, str]:
    """(key, source), source being "env:GEMINI_API_KEY", "env:GOOGLE_API_KEY" or "keyring".

    A conflict between the two variables is logged and, when `warnings` is
    given, appended to it (for CLI output). Raises ConfigurationError (exit 78)
    with instructions when no key is found.
    """
    environ = os.environ if environ is None else environ
    found = _env_keys(environ)
    conflict = _env_conflict(found)
    if conflict:
        log.warning("credentials.env_conflict", using=found[0][0], ignored=found[1][0])
        if warnings is not None:
            warnings.append(conflict)
    if found:
        var, key = found[0]
        log.info("credentials.resolved", source=_env_source(var))
        return key, _env_source(var)
    try:
        key = _get_from_keyring(keyring_timeout)
    except KeyringUnavailable as exc:
        raise ConfigurationError(f"no Gemini API key found ({exc}): {HOW_TO_SET}") from None
    if key is None:
        raise ConfigurationError(
            f"no Gemini API key found (not in the environment, none stored in the "
            f"keyring): {HOW_TO_SET}"
        )
    log.info("credentials.resolved", source=SOURCE_KEYRING)
    return key, SOURCE_KEYRING


@dataclass(frozen=True)
class KeyStatus:
    """What `objlibd auth status` shows: where a key would come from, never the key."""

    configured: bool
    source: str | None
    description: str
    keyring: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "configured": self.configured,
            "source": self.source,
            "description": self.description,
            "keyring": self.keyring,
            "warnings": list(self.warnings),
        }


def describe_source(
    *,
    keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT,
    environ: Mapping[str, str] | None = None,
) -> KeyStatus:
    """Where the key comes from, and the keyring's state, for `auth status`."""
    environ = os.environ if environ is None else environ
    found = _env_keys(environ)
    warnings = [w for w in [_env_conflict(found)] if w]
    try:
        stored = _get_from_keyring(keyring_timeout) is not None
        keyring_state = "key stored" if stored else "available, no key stored"
    except KeyringUnavailable as exc:
        stored = False
        keyring_state = f"unavailable: {exc}"
    if found:
        var = found[0][0]
        if stored:
            warnings.append(f"a key is also stored in the keyring; {var} takes precedence")
        return KeyStatus(
            True, _env_source(var), f"the {var} environment variable", keyring_state, warnings
        )
    if stored:
        return KeyStatus(
            True,
            SOURCE_KEYRING,
            f"the system keyring (service {SERVICE!r})",
            keyring_state,
            warnings,
        )
    return KeyStatus(False, None, f"no API key: {HOW_TO_SET}", keyring_state, warnings)


def set_key(key: str, *, keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT) -> None:
    """Store the key in the system keyring (ConfigurationError when there is none)."""
    key = (key or "").strip()
    if not key:
        raise ConfigurationError("the API key is empty; nothing was stored")
    if any(ch.isspace() for ch in key):
        raise ConfigurationError("the API key contains whitespace; nothing was stored")

    def put() -> None:
        keyring.set_password(SERVICE, USERNAME, key)

    try:
        _keyring_call(put, keyring_timeout, "set")
    except KeyringUnavailable as exc:
        raise ConfigurationError(
            f"could not store the key ({exc}); export GEMINI_API_KEY=... in the "
            "daemon's environment instead"
        ) from None
    log.info("credentials.stored", source=SOURCE_KEYRING)


def clear_key(*, keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT) -> bool:
    """Remove the stored key; False when none was stored."""

    def delete() -> bool:
        try:
            keyring.delete_password(SERVICE, USERNAME)
        except keyring.errors.PasswordDeleteError:
            return False
        return True

    try:
        removed = _keyring_call(delete, keyring_timeout, "delete")
    except KeyringUnavailable as exc:
        raise ConfigurationError(f"could not reach the keyring ({exc})") from None
    if removed:
        log.info("credentials.cleared", source=SOURCE_KEYRING)
    return removed
