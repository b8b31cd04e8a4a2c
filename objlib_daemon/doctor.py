"""`objlibd doctor`: every way a setup can be broken, each as one line with its fix.

Why a separate module: a newcomer's first failure is rarely in the sync logic;
it is a missing config, an unplugged drive, a key the service cannot see, an
old database or a kernel limit. Each check here reads only (the database is
opened read-only, nothing is created) so doctor is safe to run beside a live
daemon, and each says what to do rather than what went wrong inside.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from objlib_daemon.config import Config, ConfigError, load
from objlib_daemon.errors import ConfigurationError, Mismatch, ObjlibError
from objlib_daemon.library.volume import MARKER, MarkerError, read_marker
from objlib_daemon.service import launchd, systemd
from objlib_daemon.service import manager as svc
from objlib_daemon.service.steps import Runner, run_command
from objlib_daemon.state.db import SCHEMA_VERSION, Database, StateError
from objlib_daemon.state.models import Base

# The oldest SQLite objlibd supports: 3.35 brought RETURNING and ALTER TABLE
# DROP COLUMN, which queries and schema migrations may use (Debian 12 ships
# 3.40). FTS5, which the local store's search needs, is checked separately.
MIN_SQLITE = (3, 35, 0)
# Watches left for other programs (editors, file managers, IDEs share the
# per-user inotify limit): warn once the library needs more than this share.
INOTIFY_SHARE = 0.8
INOTIFY_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_user_watches")
KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


@dataclass(frozen=True)
class Check:
    """One result: `fix` is empty when `ok`."""

    check: str
    ok: bool
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.ok:
            return f"[ok]   {self.check}: {self.message}"
        return f"[FAIL] {self.check}: {self.message} -- fix: {self.fix}"


def env_file() -> Path:
    """The unit's optional EnvironmentFile (%h/.config/objlibd/env)."""
    return Path.home() / ".config" / "objlibd" / "env"


def run_checks(
    config_path: Path,
    *,
    online: bool = False,
    runner: Runner = run_command,
    volumes_dir: Path = Path("/Volumes"),
) -> list[Check]:
    """All checks, in the order a newcomer would fix them."""
    results: list[Check] = []
    config = check_config(config_path, results)
    if config is not None:
        meta = check_database(config, results)
        check_library(config, meta, results, volumes_dir=volumes_dir)
        check_credentials(config, meta, results)
        if online:
            check_store(config, meta, results)
        check_inotify(config, meta, results)
    check_sqlite(results)
    check_service(config, config_path, results, runner)
    check_env_file(results)
    return results


# --- config and database ---------------------------------------------------------


def check_config(path: Path, out: list[Check]) -> Config | None:
    if not path.exists():
        out.append(
            Check(
                "config",
                False,
                f"no config file at {path}",
                "run `objlibd init --library PATH` (it writes one), or point --config / "
                "$OBJLIBD_CONFIG at yours",
            )
        )
        return None
    try:
        config = load(path)
    except ConfigError as exc:
        out.append(
            Check(
                "config",
                False,
                str(exc),
                "correct that setting; every key is described in docs/configuration.md "
                "and config.example.toml",
            )
        )
        return None
    out.append(Check("config", True, f"{path} parses and validates"))
    return config


def _inspect(path: Path) -> tuple[set[str], int | None]:
    """(tables, schema_version) read with plain sqlite3 in read-only mode."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row and str(row[0]).isdigit() else 0
        return tables, version
    finally:
        conn.close()


def check_database(config: Config, out: list[Check]) -> dict[str, str]:
    """The database opens read-only, its schema is current, it matches the config."""
    path = config.database_path
    name = "database"
    if not path.exists():
        out.append(
            Check(
                name,
                False,
                f"no state database at {path}",
                "run `objlibd init --library ROOT`, or set $OBJLIBD_STATE_DIR / [paths] "
                "state_dir to where the database is",
            )
        )
        return {}
    try:
        tables, version = _inspect(path)
    except sqlite3.Error as exc:
        out.append(
            Check(
                name,
                False,
                f"{path} is not a readable SQLite database ({exc})",
                "move it aside and run `objlibd init --library ROOT` to start a fresh one",
            )
        )
        return {}
    if version is None:
        out.append(
            Check(
                name,
                False,
                f"{path} is not an objlibd database (no meta table)",
                "point $OBJLIBD_STATE_DIR / [paths] state_dir at objlibd's own state dir",
            )
        )
        return {}
    if version < SCHEMA_VERSION:
        out.append(
            Check(
                name,
                False,
                f"{path} has schema {version}, this objlibd expects {SCHEMA_VERSION} (stale)",
                "run `objlibd sync` once, or restart the daemon: writing commands migrate it",
            )
        )
        return {}
    if version > SCHEMA_VERSION:
        out.append(
            Check(
                name,
                False,
                f"{path} has schema {version}, newer than this objlibd ({SCHEMA_VERSION})",
                "upgrade objlibd (the service runs whichever objlibd it was installed with)",
            )
        )
        return {}
    missing = sorted(set(Base.metadata.tables) - tables)
    if missing:
        out.append(
            Check(
                name,
                False,
                f"{path} has schema {version} but lacks table(s) {', '.join(missing)}",
                "it was damaged: move it aside (keep it for a bug report) and run "
                "`objlibd init --library ROOT`",
            )
        )
        return {}
    try:
        db = Database(path, readonly=True)
    except StateError as exc:
        out.append(Check(name, False, str(exc), "move it aside and run `objlibd init`"))
        return {}
    try:
        meta = db.all_meta()
    finally:
        db.close()
    return _check_matches(config, meta, path, version, out)


def _check_matches(
    config: Config, meta: dict[str, str], path: Path, version: int, out: list[Check]
) -> dict[str, str]:
    from objlib_daemon.workspace import check_matches

    try:
        check_matches(config, meta)
    except (ConfigError, ConfigurationError) as exc:
        out.append(Check("database", False, str(exc), "run `objlibd init --library ROOT`"))
        return meta
    except Mismatch as exc:
        out.append(
            Check(
                "database",
                False,
                str(exc),
                "make [library] root and [store] in the config name what the database "
                "records, or give the other library its own state dir",
            )
        )
        return meta
    out.append(
        Check(
            "database",
            True,
            f"{path} (schema {version}) records library {meta.get('library_id')} at "
            f"{meta.get('root')}, store {meta.get('store_backend')}:{meta.get('store_name')}",
        )
    )
    return meta


# --- the library on its volume -----------------------------------------------------


def check_library(
    config: Config, meta: dict[str, str], out: list[Check], *, volumes_dir: Path
) -> None:
    """Root present, marker present and naming the recorded library."""
    raw = meta.get("root") or config.library.root
    if not raw:
        out.append(
            Check(
                "library",
                False,
                "no library root configured",
                "set [library] root in the config, or run `objlibd init --library PATH`",
            )
        )
        return
    root = Path(raw)
    recorded = meta.get("library_id")
    if not root.exists():
        renamed = _renamed_volume(root, recorded, volumes_dir)
        if renamed is not None:
            out.append(
                Check(
                    "library",
                    False,
                    f"library root {root} does not exist, but the library is at {renamed} "
                    "(macOS renamed the volume because another one has the same name)",
                    "eject the other volume and re-mount this one, or rename the volume "
                    "back in Finder",
                )
            )
            return
        out.append(
            Check(
                "library",
                False,
                f"library root {root} does not exist (volume not mounted?)",
                "plug in / mount the drive; if the library moved, run `objlibd init "
                "--library NEWPATH --adopt` and update [library] root",
            )
        )
        return
    if not root.is_dir():
        out.append(
            Check("library", False, f"library root {root} is not a folder", "fix [library] root")
        )
        return
    try:
        marker = read_marker(root)
    except MarkerError as exc:
        out.append(
            Check(
                "library",
                False,
                str(exc),
                f"restore {root / MARKER} from a backup, or remove it and run "
                f"`objlibd init --library {root} --adopt`",
            )
        )
        return
    if marker is None:
        out.append(
            Check(
                "library",
                False,
                f"no marker {MARKER} at {root} (not the library's volume, or never initialised)",
                f"mount the drive that holds the library, or run `objlibd init --library {root}`",
            )
        )
        return
    found = str(marker["library_id"])
    if recorded and found != recorded:
        out.append(
            Check(
                "library",
                False,
                f"marker at {root} names another library ({found}); the database records "
                f"{recorded}",
                f"mount the drive holding library {recorded}, or take this one over with "
                f"`objlibd init --library {root} --adopt`",
            )
        )
        return
    point = systemd.mount_point(root)
    where = "on the system volume" if point == Path("/") else f"on the volume mounted at {point}"
    out.append(Check("library", True, f"{root} present {where}, marker names library {found}"))


def _renamed_volume(root: Path, library_id: str | None, volumes_dir: Path) -> Path | None:
    """macOS mounts a second volume called NAME as `NAME 1`: find our marker there."""
    try:
        rel = root.relative_to(volumes_dir)
    except ValueError:
        return None
    if not rel.parts or not library_id or not volumes_dir.is_dir():
        return None
    name, rest = rel.parts[0], rel.parts[1:]
    for candidate in sorted(volumes_dir.glob(f"{name} *")):
        moved = candidate.joinpath(*rest)
        try:
            marker = read_marker(moved)
        except MarkerError:
            continue
        if marker and marker.get("library_id") == library_id:
            return moved
    return None


# --- credentials and the store -----------------------------------------------------


def _env_file_vars(path: Path) -> list[str]:
    """Which key variables the service's env file sets (names only, never values)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    names = []
    for line in lines:
        name, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and name.strip() in KEY_VARS and value.strip():
            names.append(name.strip())
    return names


def check_credentials(config: Config, meta: dict[str, str], out: list[Check]) -> None:
    """Where the Gemini key comes from (gemini backend only); never the key."""
    backend = meta.get("store_backend") or config.store.backend
    if backend != "gemini":
        return
    from objlib_daemon import credentials

    info = credentials.describe_source()
    warnings = "".join(f"; warning: {w}" for w in info.warnings)
    in_file = _env_file_vars(env_file())
    if info.configured:
        note = ""
        if info.source and info.source.startswith("env:") and not in_file:
            note = (
                f" (only this shell's environment: a service sees it only from "
                f"{env_file()} or the keyring)"
            )
        out.append(Check("api key", True, f"from {info.description}{note}{warnings}"))
        return
    if in_file:
        out.append(
            Check(
                "api key",
                True,
                f"not in this shell, but {env_file()} sets {in_file[0]} for the service "
                f"(keyring: {info.keyring}){warnings}",
            )
        )
        return
    out.append(
        Check(
            "api key",
            False,
            f"no Gemini API key: neither {' nor '.join(KEY_VARS)} is set, keyring "
            f"{info.keyring}{warnings}",
            f"`objlibd auth set` (keyring), or GEMINI_API_KEY=... in {env_file()} "
            "(chmod 600) for the service and in your shell for the CLI",
        )
    )


def check_store(config: Config, meta: dict[str, str], out: list[Check]) -> None:
    """--online: the recorded store answers and is the one recorded."""
    from objlib_daemon.stores import open_store
    from objlib_daemon.stores.base import AuthError, StoreError, StoreNotFound, TransientError

    backend = meta.get("store_backend")
    recorded = meta.get("store_name", "")
    if not backend:
        out.append(Check("store", False, "no store recorded", "run `objlibd init --library ROOT`"))
        return
    if backend == "local" and not (config.state_dir / "local-store").exists():
        out.append(Check("store", True, "local store not created yet (the first sync creates it)"))
        return
    fix = ""
    try:
        store = open_store(config.store, backend=backend, name=recorded, state_dir=config.state_dir)
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


# --- the machine -------------------------------------------------------------------


def _count_dirs(root: Path) -> int:
    count = 1
    for _dirpath, dirnames, _files in os.walk(root):
        count += len(dirnames)
    return count


def check_inotify(config: Config, meta: dict[str, str], out: list[Check]) -> None:
    """Linux: one inotify watch per folder; past the limit the watcher goes blind."""
    if not INOTIFY_LIMIT_FILE.exists():
        return
    raw = meta.get("root") or config.library.root
    if not raw or not Path(raw).is_dir():
        return
    try:
        limit = int(INOTIFY_LIMIT_FILE.read_text().strip())
    except (OSError, ValueError):
        return
    dirs = _count_dirs(Path(raw))
    if dirs <= limit * INOTIFY_SHARE:
        out.append(Check("inotify", True, f"{dirs} folder(s) to watch, limit {limit} per user"))
        return
    suggested = max(524288, 1 << (2 * dirs - 1).bit_length())
    out.append(
        Check(
            "inotify",
            False,
            f"the library has {dirs} folders but fs.inotify.max_user_watches is {limit} "
            "(shared with every other program): live watching would fail",
            f"echo fs.inotify.max_user_watches={suggested} | sudo tee "
            "/etc/sysctl.d/60-objlibd.conf && sudo sysctl --system",
        )
    )


def check_sqlite(out: list[Check]) -> None:
    version = sqlite3.sqlite_version
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        out.append(
            Check(
                "sqlite",
                False,
                f"SQLite {version} is older than {'.'.join(map(str, MIN_SQLITE))}",
                "use a Python built against a newer SQLite (python.org, Homebrew, pyenv)",
            )
        )
        return
    try:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        conn.close()
    except sqlite3.Error:
        out.append(
            Check(
                "sqlite",
                False,
                f"SQLite {version} lacks FTS5, which the local store's search needs",
                "use a Python whose sqlite3 has FTS5 (python.org, Homebrew, pyenv builds do)",
            )
        )
        return
    out.append(Check("sqlite", True, f"SQLite {version} with FTS5"))


# --- the service -------------------------------------------------------------------


def _daemon_answer(config: Config | None) -> dict[str, Any] | None:
    """The running daemon's status over its control socket, when that module exists."""
    if config is None:
        return None
    try:
        from objlib_daemon.daemon import control  # written alongside; optional here
    except ImportError:
        return None
    request: Callable[..., Any] | None = getattr(control, "request", None)
    if request is None:
        return None
    try:
        answer = request(config, {"cmd": "status"})
    except Exception:  # a daemon that answers badly is reported as not answering
        return None
    return answer if isinstance(answer, dict) else None


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


def check_env_file(out: list[Check]) -> None:
    """The service's env file may hold the API key: it must be private."""
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


def summary(results: list[Check]) -> str:
    problems = sum(not r.ok for r in results)
    if not problems:
        return f"all {len(results)} checks passed"
    return f"{problems} problem(s) found"
