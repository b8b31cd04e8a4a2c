"""A library on disk, its config and state dir, and the `objlibd` CLI run in-process.

The same `Harness` drives both backends: `local` (the embedded store) and
`gemini` (the real google-genai SDK talking to tests/emulator.py), so every
behavioural truth is checked on both.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from objlib_daemon.cli import cli
from objlib_daemon.stores.base import RemoteDocument

API_KEY = "test-key-0123456789-secret"
# The real library's 1,749 relative paths (shared/ sits beside the checkout).
LIBRARY_PATHS = Path(__file__).resolve().parents[2] / "shared" / "data" / "library-paths.txt"


@functools.cache
def real_paths() -> list[str]:
    """The real paths, or a skip (of the calling test) when shared/ is not beside the checkout."""
    if not LIBRARY_PATHS.exists():
        import pytest

        pytest.skip(f"{LIBRARY_PATHS} is absent (shared/ is not beside this checkout)")
    return [p for p in LIBRARY_PATHS.read_text(encoding="utf-8").splitlines() if p.strip()]


def filler(rel: str, size: int = 2048, salt: str = "") -> bytes:
    """Deterministic text content of `size` bytes, distinct per path and salt."""
    line = f"{rel} {salt} the virtue of reason and the nature of concepts.\n".encode()
    return (line * (size // len(line) + 1))[:size]


@dataclass
class Harness:
    tmp: Path
    backend: str
    emulator: Any = None
    store_resource: str | None = None

    def __post_init__(self) -> None:
        self.root = self.tmp / "Objectivism Library"
        self.root.mkdir()
        self.state_dir = self.tmp / "state"
        self.config_path = self.tmp / "config.toml"
        self.env = {
            "OBJLIBD_CONFIG": str(self.config_path),
            "OBJLIBD_STATE_DIR": str(self.state_dir),
            "OBJLIBD_RUNTIME_DIR": str(self.tmp / "run"),
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_API_KEY": None,
        }

    # --- setup ---------------------------------------------------------------------

    def init(self, extra_config: str = "") -> Result:
        store_args: list[str] = []
        store_section = ""
        if self.backend == "gemini":
            self.store_resource = self.emulator.create_store("objlibd-test")
            store_args = ["--store-backend", "gemini", "--store", self.store_resource]
            store_section = (
                '[store]\nbackend = "gemini"\n'
                f'name = "{self.store_resource}"\nbase_url = "{self.emulator.url}"\n'
                "operation_timeout = 5\nretry_attempts = 3\nretry_initial = 0.05\n"
                "requests_per_minute = 60000\n"
            )
        self.config_path.write_text(
            f'[library]\nroot = "{self.root}"\n\n{store_section}\n'
            '[sync]\nretry_base = "1s"\n\n' + extra_config,
            encoding="utf-8",
        )
        return self.run("init", "--library", str(self.root), *store_args)

    def write(self, rel: str, content: bytes | None = None, *, size: int = 2048) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else filler(rel, size))
        return path

    def apply_env(self, monkeypatch: Any) -> None:
        """This process sees the library's config, state dir and key as the CLI does
        (for a Workspace opened in the test itself)."""
        for key, value in self.env.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)

    # --- running -------------------------------------------------------------------

    def run(self, *args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, list(args), env=self.env, input=input, catch_exceptions=False)

    def sync(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.run("sync", "--json", *args)
        assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
        return json.loads(result.stdout)

    # --- looking -------------------------------------------------------------------

    def docs(self) -> list[RemoteDocument]:
        """Every document in the store, as the store reports it."""
        if self.backend == "gemini":
            return [
                RemoteDocument(
                    name=d["name"],
                    display_name=d.get("displayName", ""),
                    metadata=self.emulator.metadata(d),
                    state=d.get("state", ""),
                )
                for d in self.emulator.documents(self.store_resource)
            ]
        from objlib_daemon.stores.local import LocalStore

        store = LocalStore(self.state_dir / "local-store")
        try:
            return list(store.list())
        finally:
            store.close()

    def docs_by_path(self) -> dict[str, list[RemoteDocument]]:
        out: dict[str, list[RemoteDocument]] = defaultdict(list)
        for doc in self.docs():
            out[str(doc.metadata.get("path"))].append(doc)
        return dict(out)

    def content(self, document: str) -> bytes:
        if self.backend == "gemini":
            return self.emulator.content(document)
        return (self.state_dir / "local-store" / "blobs" / document.rsplit("/", 1)[-1]).read_bytes()

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.state_dir / 'objlibd.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        return conn

    def row(self, rel: str) -> sqlite3.Row | None:
        with self.db() as conn:
            return conn.execute("SELECT * FROM files WHERE path = ?", (rel,)).fetchone()

    def rows(self) -> dict[str, sqlite3.Row]:
        with self.db() as conn:
            return {r["path"]: r for r in conn.execute("SELECT * FROM files")}

    def converged(self) -> None:
        """Every eligible file has exactly one document of ours, matching its content."""
        import hashlib

        on_disk = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if p.stat().st_size >= 1024:
                    rel = p.relative_to(self.root).as_posix()
                    on_disk[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        by_path = self.docs_by_path()
        assert set(by_path) == set(on_disk), set(by_path) ^ set(on_disk)
        for rel, sha in on_disk.items():
            assert len(by_path[rel]) == 1, (rel, by_path[rel])
            assert by_path[rel][0].metadata["sha256"] == sha, rel
