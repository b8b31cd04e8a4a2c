"""Helpers for the daemon tests: a library + state dirs, the daemon as a subprocess.

Everything waits by polling a condition against a deadline (never a fixed
sleep), and "converged" is checked against the store itself: every eligible
file on disk has exactly one document of ours whose `sha256` metadata matches
it, and every other document of ours belongs to a file marked missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objlib_daemon.config import load
from objlib_daemon.daemon.control import request, socket_path

CLI = [sys.executable, "-c", "from objlib_daemon.cli import main; main()"]
EXTENSIONS = {".txt", ".md", ".pdf", ".html", ".docx", ".epub"}
MIN_SIZE = 1024  # library.min_size default: smaller files are not tracked


def wait_until(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


def write(path: Path, text: str, size: int = 1500) -> Path:
    """A file of at least `size` bytes whose content is determined by `text`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (text + "\n") * (size // (len(text) + 1) + 1)
    path.write_text(body[: max(size, len(text))], encoding="utf-8")
    return path


def atomic_write(path: Path, text: str, size: int = 1500) -> None:
    """What editors do: write a temp file next to it, then rename it over the original."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, text, size)
    os.replace(tmp, path)


def bind_mount_works(tmp: Path) -> str | None:
    """None when `mount --bind` works here, else why not (a reason to skip)."""
    if os.geteuid() != 0:
        return "needs root for bind mounts"
    src, dst = tmp / "probe-src", tmp / "probe-dst"
    src.mkdir(exist_ok=True)
    dst.mkdir(exist_ok=True)
    result = subprocess.run(["mount", "--bind", src, dst], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`mount --bind` does not work here: {result.stderr.strip()}"
    subprocess.run(["umount", dst], check=True)
    return None


# A user namespace in which this user is root, with a mount namespace of its
# own: bind mounts and tmpfs without privileges (where the kernel allows
# unprivileged user namespaces), private so nothing leaks to the host's mounts.
# Processes started inside (the daemon) inherit both.
USER_NAMESPACE = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def user_namespace_works(tmp: Path) -> str | None:
    """None when a bind mount works inside USER_NAMESPACE here, else why not."""
    if shutil.which("unshare") is None:
        return "no `unshare` (util-linux) here"
    src, dst = tmp / "probe-ns-src", tmp / "probe-ns-dst"
    src.mkdir(exist_ok=True)
    dst.mkdir(exist_ok=True)
    script = 'mount --bind "$1" "$2" && umount "$2"'
    result = subprocess.run(
        [*USER_NAMESPACE, "sh", "-c", script, "sh", src, dst], capture_output=True, text=True
    )
    if result.returncode != 0:
        return f"user namespaces are refused here: {result.stderr.strip()[-300:]}"
    return None


def mount_bind(src: Path, dst: Path) -> None:
    """Plug the drive in: `src` appears at `dst`."""
    subprocess.run(["mount", "--bind", src, dst], check=True, capture_output=True)


def is_mounted(path: Path) -> bool:
    """A mount point right now (os.path.ismount misses a bind mount from the same disk)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        points = [line.split()[4] for line in fh if len(line.split()) > 4]
    return any(p.replace("\\040", " ") == target for p in points)


def unmount(dst: Path) -> None:
    """Pull the drive out; lazily if something still has a file open on it (as a yank does)."""
    if subprocess.run(["umount", dst], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", dst], check=True, capture_output=True)


def library_files(root: Path) -> dict[str, str]:
    """Eligible files on disk (default globs and size bounds) -> sha256."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = Path(dirpath, name)
            if name.startswith(".") or full.suffix.lower() not in EXTENSIONS:
                continue
            if full.is_symlink() or full.stat().st_size < MIN_SIZE:
                continue
            rel = full.relative_to(root).as_posix()
            out[rel] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


@dataclass
class Dirs:
    """A library folder, config file, state and runtime dirs under `base`, and the
    environment that points objlibd at them (shared with bench/common.py)."""

    base: Path

    def __post_init__(self) -> None:
        self.root = self.base / "library"
        self.state_dir = self.base / "state"
        self.runtime_dir = self.base / "run"
        self.config_path = self.base / "config.toml"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            OBJLIBD_CONFIG=str(self.config_path),
            OBJLIBD_STATE_DIR=str(self.state_dir),
            OBJLIBD_RUNTIME_DIR=str(self.runtime_dir),
            GEMINI_API_KEY="test-key",
        )
        for key in ("GOOGLE_API_KEY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(key, None)
        return env


@dataclass
class Env(Dirs):
    """One library with its config, state and runtime dirs, and a daemon to start."""

    backend: str = "local"
    emulator: Any = None
    extra_config: str = ""
    proc: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    store_resource: str = ""
    _config: Any = None

    # --- environment ---------------------------------------------------------------------

    def apply_env(self, monkeypatch: Any) -> None:
        """The test process resolves the same socket and state paths as the daemon."""
        for key in ("OBJLIBD_CONFIG", "OBJLIBD_STATE_DIR", "OBJLIBD_RUNTIME_DIR"):
            monkeypatch.setenv(key, self.env[key])

    def config_text(self) -> str:
        store = '[store]\nbackend = "local"\nname = ""\n'
        if self.backend == "gemini":
            store = (
                "[store]\n"
                'backend = "gemini"\n'
                f'name = "{self.store_resource}"\n'
                f'base_url = "{self.emulator.url}"\n'
                # The emulator answers at once; don't let the client pace us.
                "requests_per_minute = 60000\n"
            )
        return (
            f'[library]\nroot = "{self.root}"\n\n{store}\n'
            "[daemon]\n"
            'settle_seconds = "0.3s"\n'
            'shutdown_timeout = "20s"\n\n'
            "[sync]\n"
            'retry_base = "1s"\n' + self.extra_config
        )

    def init(self) -> None:
        args = ["init", "--library", str(self.root)]
        if self.backend == "gemini":
            self.store_resource = self.emulator.create_store("daemon-test")
            args += ["--store-backend", "gemini", "--store", self.store_resource]
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        self.cli(*args, check=True)

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"objlibd {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                f"{result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json", check=True)
        return json.loads(result.stdout)

    # --- the daemon ----------------------------------------------------------------------

    def start(self, wait: bool = True, **extra_env: str) -> subprocess.Popen:
        log = self.base / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        env = self.env
        env.update(extra_env)
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([*CLI, "run"], env=env, stdout=fh, stderr=fh)
        if wait:
            wait_until(self.status, timeout=20, what="the daemon's control socket")
        return self.proc

    def config(self) -> Any:
        """The config as written at init (cached: tests break the file on purpose)."""
        if self._config is None:
            self._config = load(self.config_path)
        return self._config

    def status(self) -> dict[str, Any] | None:
        """Live status from the daemon's socket (None while no daemon answers)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        return request(self.config(), {"cmd": "status"}, timeout=10)

    def socket(self) -> Path:
        return socket_path(self.config())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-20000:] for p in self.logs if p.exists())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # --- the store and the database ------------------------------------------------------

    def documents(self) -> list[dict[str, Any]]:
        """Every document in the store as its identity metadata (path, sha256, ...)."""
        if self.backend == "gemini":
            return [
                self.emulator.metadata(d) | {"_name": d["name"]}
                for d in self.emulator.documents(self.store_resource)
            ]
        from objlib_daemon.stores.local import LocalStore

        store = LocalStore(self.state_dir / "local-store")
        try:
            return [dict(d.metadata) | {"_name": d.name} for d in store.list()]
        finally:
            store.close()

    def db(self, sql: str, *args: Any) -> list[tuple]:
        """A read-only query on the state database."""
        conn = sqlite3.connect(f"file:{self.state_dir / 'objlibd.db'}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def unknown(self, paths: Iterable[str]) -> list[str]:
        """Of `paths`, those neither in `files` nor queued, themselves or under a
        folder hint (`folder/`: the scanner expands it when it is due)."""
        rows = self.db("SELECT path FROM files UNION SELECT path FROM pending_changes")
        known = {p for (p,) in rows}
        hints = tuple(p for p in known if p.endswith("/"))
        return [p for p in paths if p not in known and not p.startswith(hints)]

    def file_states(self) -> dict[str, str]:
        return dict(self.db("SELECT path, state FROM files"))

    def problems(self) -> list[str]:
        """Why store and database do not (yet) mirror the library; empty when converged."""
        disk = library_files(self.root)
        by_path: dict[str, list[str]] = {}
        for doc in self.documents():
            by_path.setdefault(str(doc.get("path")), []).append(str(doc.get("sha256")))
        states = self.file_states()
        out = []
        for path, sha in disk.items():
            if by_path.get(path) != [sha]:
                out.append(
                    f"{path}: on disk {sha[:8]}, store {[s[:8] for s in by_path.get(path, [])]}"
                )
            elif states.get(path) != "indexed":  # uploaded, result not yet recorded
                out.append(f"{path}: in the store, but the database says {states.get(path)}")
        for path, shas in by_path.items():
            if path in disk:
                continue
            if states.get(path) != "missing" or len(shas) != 1:
                out.append(f"{path}: {len(shas)} document(s) but the file is {states.get(path)}")
        return out

    def wait_converged(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            problems = self.problems()
            if not problems:
                return
            # A check hashes the library and lists the store: on a big library
            # poll less often, or the test starves the daemon it is waiting for.
            pause = max(0.1, 4 * (time.monotonic() - began))
            if time.monotonic() > deadline:
                running = self.proc is not None and self.proc.poll() is None
                raise AssertionError(
                    f"not converged after {timeout}s ({len(problems)} problems): "
                    + "; ".join(problems[:10])
                    + f"\nstatus: {self.status() if running else '-'}"
                )
            time.sleep(pause)
