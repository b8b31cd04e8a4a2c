"""Doctor: the config file parses, and the state database it names is current and matches it.

Why first: every other check needs the config, and the database records which
library and store this setup belongs to. The database is read with plain
sqlite3 in read-only mode, so an old, foreign or damaged file is reported
without being created, migrated or locked.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from objlib_daemon.config import EXAMPLE, Config, ConfigError, load
from objlib_daemon.doctor.report import Check
from objlib_daemon.errors import ConfigurationError, Mismatch
from objlib_daemon.state.db import REBUILD, SCHEMA_VERSION, Database, StateError
from objlib_daemon.state.models import Base


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
                f"and {EXAMPLE}",
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


def _damage(path: Path) -> str | None:
    """What `PRAGMA quick_check` finds wrong (None: nothing). Opening a database reads
    only its first pages: garbage further in shows only when a command reaches it,
    so the doctor reads every page (O(size), without the index cross-checks)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return None if rows == ["ok"] else "; ".join(rows)


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
    damage = _damage(path)
    if damage:
        out.append(Check(name, False, f"{path} is damaged: {damage}", REBUILD))
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
