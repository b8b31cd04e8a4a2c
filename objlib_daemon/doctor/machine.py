"""Doctor: what this machine must provide, namely SQLite with FTS5 and enough inotify watches.

Why separate: these are not objlibd settings; their fixes are a different
Python build or a sysctl, and they hold for every library on the machine.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from objlib_daemon.config import Config
from objlib_daemon.doctor.report import Check
from objlib_daemon.library.scan import count_folders

# The oldest SQLite objlibd supports: 3.35 brought RETURNING and ALTER TABLE
# DROP COLUMN, which queries and schema migrations may use (Debian 12 ships
# 3.40). FTS5, which the local store's search needs, is checked separately.
MIN_SQLITE = (3, 35, 0)
# Watches left for other programs (editors, file managers, IDEs share the
# per-user inotify limit): warn once the library needs more than this share.
INOTIFY_SHARE = 0.8
INOTIFY_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_user_watches")


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
    dirs = count_folders(Path(raw))
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
