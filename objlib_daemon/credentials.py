"""Where the Gemini API key comes from: environment first, then the system keyring.

Order (docs/platform-notes.md, "Credentials"): GEMINI_API_KEY, GOOGLE_API_KEY,
then keyring service "objlibd" / user "api_key", then the service's env file
(~/.config/objlibd/env, mode 0600, the systemd unit's EnvironmentFile). The
key is always passed to the SDK explicitly, because the SDK on its own prefers
GOOGLE_API_KEY.

The env file is where `auth set` puts the key on a machine with no keyring
backend (headless Linux): the service reads it as its environment, and the
CLI reads it last, so a key set once works for both.

The keyring is asked in a daemon thread with a timeout: headless Linux has no
backend (NoKeyringError) and a locked desktop keyring can prompt and hang. A
daemon thread (not a ThreadPoolExecutor, whose workers are joined at exit)
means a hung backend cannot keep the process from exiting either.

Nothing here ever returns, logs or formats the key itself, nor any part of it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
SOURCE_ENV_FILE = "env_file"
# The variable `auth set` writes into the env file (the first one read).
FILE_VAR = ENV_VARS[0]

HOW_TO_SET = (
    "set one with `objlibd auth set` (stored in the system keyring, or in the "
    "service's env file where there is none), or export GEMINI_API_KEY=... in "
    "the environment the daemon runs in"
)

T = TypeVar("T")


class KeyringUnavailable(Exception):
    """The keyring could not be asked: no backend, locked, timed out or broken."""


class NoKeyring(KeyringUnavailable):
    """This machine has no keyring backend at all (not merely a locked one).

    Only then does `auth set` fall back to the env file: a locked or hung
    desktop keyring is the user's to unlock, not a reason to write a file.
    """


def env_file() -> Path:
    """The service's optional EnvironmentFile (systemd: %h/.config/objlibd/env)."""
    return Path.home() / ".config" / "objlibd" / "env"


def _env_file_assignments(path: Path) -> list[tuple[str, str, str]]:
    """[(line, name, value)] of the file's lines; name "" for others (comments, blanks).

    The EnvironmentFile syntax: `NAME=value`, optionally `export `-prefixed
    or quoted.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    parsed = []
    for line in lines:
        name, sep, value = line.strip().removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        parsed.append((line, name.strip() if sep else "", value))
    return parsed


def env_file_vars(path: Path | None = None) -> list[str]:
    """Which key variables the env file sets (names only, never values)."""
    found = {name for _, name, value in _env_file_assignments(path or env_file()) if value}
    return [var for var in ENV_VARS if var in found]


def _env_file_key(path: Path) -> str | None:
    values = {name: value for _, name, value in _env_file_assignments(path) if value}
    return next((values[var] for var in ENV_VARS if var in values), None)


def _write_env_file_key(path: Path, key: str | None) -> bool:
    """Set (or with None, remove) FILE_VAR in the env file, keeping its other lines.

    Written to a 0600 temporary file and renamed over, so the key is never in a
    file others can read, not even for a moment. True when the file changed.
    """
    entries = _env_file_assignments(path)
    kept = [line for line, name, _ in entries if name != FILE_VAR]
    if key is None and len(kept) == len(entries):
        return False
    lines = kept + ([f"{FILE_VAR}={key}"] if key is not None else [])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old .tmp keeps its mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            fd = -1
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


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
            raise NoKeyring("no system keyring is available on this machine")
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
        keyring_state = "none stored in the keyring"
    except KeyringUnavailable as exc:
        key, keyring_state = None, str(exc)
    source = SOURCE_KEYRING
    if key is None:
        key, source = _env_file_key(env_file()), SOURCE_ENV_FILE
    if key is None:
        raise ConfigurationError(
            f"no Gemini API key found (not in the environment; {keyring_state}; "
            f"none in {env_file()}): {HOW_TO_SET}"
        )
    log.info("credentials.resolved", source=source)
    return key, source


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
    path = env_file()
    in_file = bool(env_file_vars(path))
    if found:
        var = found[0][0]
        if stored or in_file:
            warnings.append(_shadowed(var, "the keyring" if stored else str(path)))
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
    if in_file:
        return KeyStatus(
            True,
            SOURCE_ENV_FILE,
            f"the service's env file {path}",
            keyring_state,
            warnings,
        )
    return KeyStatus(False, None, f"no API key: {HOW_TO_SET}", keyring_state, warnings)


def _shadowed(var: str, where: str) -> str:
    """Why a stored key is not the one used, and how to let it be (finding 14:
    with a wrong variable set, `auth set` alone could never help)."""
    return (
        f"{var} is set in this environment and takes precedence over the key in {where}; "
        "to use "
        f"the stored key run `unset {var}` (and remove it from your shell profile)"
    )


def set_key(key: str, *, keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT) -> str:
    """Store the key in the system keyring, or in the env file where there is no
    keyring backend; returns where it went (for the user, never the key)."""
    key = (key or "").strip()
    if not key:
        raise ConfigurationError("the API key is empty; nothing was stored")
    if any(ch.isspace() or ch in "\"'\\" for ch in key):
        raise ConfigurationError("the API key contains whitespace or quotes; nothing was stored")

    def put() -> None:
        keyring.set_password(SERVICE, USERNAME, key)

    try:
        _keyring_call(put, keyring_timeout, "set")
    except NoKeyring:
        path = env_file()
        try:
            _write_env_file_key(path, key)
        except OSError as exc:
            raise ConfigurationError(
                f"no system keyring, and {path} could not be written "
                f"({type(exc).__name__}); export GEMINI_API_KEY=... in the daemon's "
                "environment instead"
            ) from None
        log.info("credentials.stored", source=SOURCE_ENV_FILE)
        return (
            f"{path} (mode 0600; no system keyring on this machine): the systemd "
            "service reads it as its environment, and objlibd commands read it last"
        )
    except KeyringUnavailable as exc:
        raise ConfigurationError(
            f"could not store the key ({exc}); export GEMINI_API_KEY=... in the "
            "daemon's environment instead"
        ) from None
    log.info("credentials.stored", source=SOURCE_KEYRING)
    return f"the system keyring (service {SERVICE!r})"


def clear_key(*, keyring_timeout: float = DEFAULT_KEYRING_TIMEOUT) -> bool:
    """Remove the stored key (from the env file where there is no keyring, as
    `set_key` put it there); False when none was stored."""

    def delete() -> bool:
        try:
            keyring.delete_password(SERVICE, USERNAME)
        except keyring.errors.PasswordDeleteError:
            return False
        return True

    source = SOURCE_KEYRING
    try:
        removed = _keyring_call(delete, keyring_timeout, "delete")
    except NoKeyring:
        removed, source = _write_env_file_key(env_file(), None), SOURCE_ENV_FILE
    except KeyringUnavailable as exc:
        raise ConfigurationError(f"could not reach the keyring ({exc})") from None
    if removed:
        log.info("credentials.cleared", source=source)
    return removed
