"""One large read-only query run by a helper process while this one works.

A reconcile needs every `files` row and a walk of the library, and each keeps
a core busy: for 100,000 rows, fetching them here takes 0.15 s and
unmarshalling what a helper fetched takes 0.03 s (docs/benchmarks.md,
benchmark 1). The helper is a fresh interpreter without site-packages
(`-I -S`: it starts in ~15 ms and imports only sqlite3 and marshal); it
opens the database read-only and writes the rows to a pipe. If it cannot
start or fails, `rows()` says so and the caller reads them itself.
"""

from __future__ import annotations

import marshal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

_HELPER = (
    "import marshal, sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], uri=True)\n"
    "db.execute('PRAGMA busy_timeout=5000')\n"
    "rows = db.execute(sys.argv[2], marshal.loads(bytes.fromhex(sys.argv[3]))).fetchall()\n"
    "sys.stdout.buffer.write(marshal.dumps(rows))\n"
)


class BackgroundQuery:
    """Starts the query at once; `rows()` waits for it."""

    def __init__(self, db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
        uri = f"file:{quote(str(db_path.resolve()))}?mode=ro"
        args = [sys.executable, "-I", "-S", "-c", _HELPER, uri, sql, marshal.dumps(params).hex()]
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except OSError:
            self._proc = None

    def rows(self) -> list[tuple[Any, ...]] | None:
        """The rows, or None when the helper could not deliver them."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        with proc.stdout:
            data = proc.stdout.read()
        if proc.wait() != 0:
            return None
        try:
            rows = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            return None
        return rows if isinstance(rows, list) else None

    def close(self) -> None:
        """Stop the helper if its rows are not wanted after all (the walk failed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
