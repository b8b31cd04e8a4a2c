"""Doctor: where the Gemini key comes from, whether the service can see it, and the store.

Why together: the shell and the service see different environments; the key
in one is not the key in the other. These checks name the source (never the
key), check the service's env file is private, and with --online ask the
recorded store whether it answers as itself.
"""

from __future__ import annotations

import stat

from objlib_daemon.config import Config
from objlib_daemon.doctor.report import Check
from objlib_daemon.errors import ObjlibError


def check_credentials(config: Config, meta: dict[str, str], out: list[Check]) -> None:
    """Where the Gemini key comes from (gemini backend only); never the key."""
    backend = meta.get("store_backend") or config.store.backend
    if backend != "gemini":
        return
    # Imported here: keyring is slow to import and only this check needs it.
    from objlib_daemon import credentials

    info = credentials.describe_source()
    warnings = "".join(f"; warning: {w}" for w in info.warnings)
    if info.configured:
        note = ""
        if info.source and info.source.startswith("env:") and not credentials.env_file_vars():
            note = (
                f" (only this shell's environment: a service sees it only from "
                f"{credentials.env_file()} or the keyring)"
            )
        out.append(Check("api key", True, f"from {info.description}{note}{warnings}"))
        return
    out.append(
        Check(
            "api key",
            False,
            f"no Gemini API key: neither {' nor '.join(credentials.ENV_VARS)} is set, keyring "
            f"{info.keyring}{warnings}",
            f"`objlibd auth set` (keyring, or {credentials.env_file()} where there is "
            "none), or GEMINI_API_KEY=... in that file (chmod 600) for the service",
        )
    )


def check_store(config: Config, meta: dict[str, str], out: list[Check]) -> None:
    """--online: the recorded store answers and is the one recorded."""
    from objlib_daemon.connect import open_store
    from objlib_daemon.stores import local_directory
    from objlib_daemon.stores.base import AuthError, StoreError, StoreNotFound, TransientError

    backend = meta.get("store_backend")
    recorded = meta.get("store_name", "")
    if not backend:
        out.append(Check("store", False, "no store recorded", "run `objlibd init --library ROOT`"))
        return
    if backend == "local" and not local_directory(config.state_dir).exists():
        out.append(Check("store", True, "local store not created yet (the first sync creates it)"))
        return
    fix = ""
    try:
        store = open_store(config, backend=backend, name=recorded)
        try:
            info = store.ensure()
        finally:
            store.close()
    except StoreNotFound as exc:
        message, fix = str(exc), "check [store] name; `objlibd store list` shows what the key sees"
    except AuthError as exc:
        message, fix = f"the store refused the API key: {exc}", "`objlibd auth set` a valid key"
    except TransientError as exc:
        message, fix = f"store unreachable: {exc}", "check the network and try again"
    except (StoreError, ObjlibError, ValueError, OSError) as exc:
        message, fix = f"store check failed: {exc}", "see the message; `objlibd doctor` again"
    else:
        wanted = {recorded, recorded.removeprefix("localStores/")}
        if info.name not in wanted and info.name.removeprefix("localStores/") not in wanted:
            out.append(
                Check(
                    "store",
                    False,
                    f"the store answered as {info.name}, the database records {recorded}",
                    "use the recorded store, or a separate state dir for the other store",
                )
            )
            return
        count = "" if info.documents is None else f", {info.documents} document(s)"
        out.append(
            Check("store", True, f"{backend}:{info.name} ({info.display_name}) reachable{count}")
        )
        return
    out.append(Check("store", False, message, fix))


def check_env_file(out: list[Check]) -> None:
    """The service's env file may hold the API key: it must be private."""
    from objlib_daemon.credentials import env_file

    path = env_file()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        out.append(
            Check(
                "env file",
                False,
                f"{path} is readable by others (mode {mode:o}) and may hold the API key",
                f"chmod 600 {path}",
            )
        )
    else:
        out.append(Check("env file", True, f"{path} is private (mode {mode:o})"))
