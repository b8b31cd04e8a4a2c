"""`objlibd doctor`: every way a setup can be broken, each as one line with its fix.

Why a separate package: a newcomer's first failure is rarely in the sync logic;
it is a missing config, an unplugged drive, a key the service cannot see, an
old database or a kernel limit. Each check here reads only (the database is
opened read-only, nothing is created) so doctor is safe to run beside a live
daemon, and each says what to do rather than what went wrong inside.

    report.py    Check (one result with its fix) and the closing summary
    database.py  the config parses; the state database is current and matches it
    library.py   the library root, its volume and its marker
    access.py    the API key's source, the service's env file, the store (--online)
    machine.py   SQLite with FTS5, the inotify watch limit
    service.py   the installed service and the running daemon
"""

from __future__ import annotations

from pathlib import Path

from objlib_daemon.doctor.access import check_credentials, check_env_file, check_store
from objlib_daemon.doctor.database import check_config, check_database
from objlib_daemon.doctor.library import check_library
from objlib_daemon.doctor.machine import check_inotify, check_sqlite
from objlib_daemon.doctor.report import Check
from objlib_daemon.doctor.service import check_service
from objlib_daemon.service.steps import Runner, run_command


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
