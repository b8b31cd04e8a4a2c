"""Security (issue 6, docs/design.md invariant 8): secrets, private files, the socket, no TCP.

- The API key never appears in logs, errors, status or the database: a daemon
  session with a distinctive key, faults, errors and a rejected key (400
  API_KEY_INVALID), then every byte it and the CLI wrote is searched.
- The state dir is 0700, the database and the control socket 0600.
- A control request from another uid is refused (the client runs as `nobody`).
- The daemon listens on no TCP port (/proc/net/tcp* against its sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CLI, Env, wait_until, write
from emulator import Fault, GeminiEmulator

# Distinctive, and not shaped like a Google key: only exact scrubbing hides it.
KEY = "objlibd-SECRET-7d1c5e93b0a24f68-do-not-log"
PARTS = (KEY, KEY[8:30], KEY[-20:])  # a truncated key in a message is a leak too
NOBODY = 65534


class KeyEnv(Env):
    """Env whose commands and daemon use KEY."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env["GEMINI_API_KEY"] = KEY
        return env

    def config_text(self) -> str:
        text = super().config_text()
        text = text.replace(
            "requests_per_minute = 60000\n",
            'requests_per_minute = 60000\nretry_initial = "0.1s"\nretry_attempts = 2\n'
            'operation_timeout = "1s"\nbreaker_cooldown = "1s"\n',
        )
        return text + '\n[logging]\nlevel = "debug"\n'


@pytest.fixture
def key_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    emulator = GeminiEmulator(api_key=KEY).start()
    env = KeyEnv(tmp_path / "lib", backend="gemini", emulator=emulator)
    env.apply_env(monkeypatch)
    try:
        yield env
    finally:
        env.close()
        emulator.stop()


def leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [p for p in PARTS if p.encode() in data]


def test_the_api_key_never_appears_anywhere(key_env: KeyEnv, tmp_path: Path) -> None:
    env, emu = key_env, key_env.emulator
    outputs: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = env.cli(*args)
        outputs.extend([result.stdout, result.stderr])
        return result

    for i in range(6):
        write(env.root / "s" / f"Doc {i}.txt", f"document {i}")
    env.init()
    env.start()
    env.wait_converged()

    # Faults of every kind, and changes to push through them.
    emu.add_fault(Fault(phase="start", status=503, times=3))
    emu.add_fault(Fault(kind="retry_info", retry_delay=0.2, times=3))
    emu.add_fault(Fault(method="GET", kind="reset", times=2))
    emu.add_fault(Fault(kind="finalize_then_503", times=1))
    emu.add_fault(Fault(phase="start", kind="never_done", times=1))
    emu.add_fault(Fault(method="DELETE", status=500, times=2))
    for i in range(6):
        write(env.root / "s" / f"Doc {i}.txt", f"document {i}, edited under faults")
    write(env.root / "s" / "Broken.txt", "refused by the store")
    emu.add_fault(
        Fault(
            phase="start",
            match_display_name="Broken.txt",
            status=400,
            times=None,
            message="Unsupported file type.",
        )
    )
    wait_until(
        lambda: env.db("SELECT state FROM files WHERE path = 's/Broken.txt'") == [("failed",)],
        timeout=30,
        what="the refused file recorded",
    )
    emu.clear_faults()

    # The key is rejected (400 API_KEY_INVALID): the daemon pauses and says so.
    emu.api_key = "a-different-key-0000"
    write(env.root / "s" / "After rotation.txt", "uploaded once the key is fixed")
    status = wait_until(
        lambda: (s := env.status())["daemon"]["state"] == "paused" and s,
        timeout=30,
        what="the daemon paused on the rejected key",
    )
    assert "credentials" in json.dumps(status["daemon"]["last_errors"])
    outputs.append(json.dumps(status))
    outputs.append(cli("status").stdout)
    cli("status", "--json")
    cli("verify", "--json")  # fails: the store rejects the key
    cli("doctor", "--online")
    cli("auth", "status")
    cli("queue", "--json")
    emu.api_key = KEY
    assert cli("resume").returncode == 0
    wait_until(
        lambda: (
            env.db("SELECT state FROM files WHERE path = 's/After rotation.txt'") == [("indexed",)]
        ),
        timeout=30,
        what="the upload after the key was fixed",
    )
    outputs.append(json.dumps(env.status()))
    os.kill(env.proc.pid, signal.SIGUSR1)  # every thread's stack into the log
    wait_until(lambda: "most recent call last" in env.log(), what="the stack dump")
    assert env.stop() == 0
    # Without the daemon: the one-shot commands, with a wrong key too.
    cli("sync", "--json")
    cli("status")
    env_wrong = dict(env.env, GEMINI_API_KEY=KEY + "-wrong")
    for args in (["sync"], ["verify"], ["store", "list"]):
        result = subprocess.run([*CLI, *args], env=env_wrong, capture_output=True, text=True)
        outputs.extend([result.stdout, result.stderr])
        assert result.returncode != 0

    # Now search everything that was written.
    found: dict[str, list[str]] = {}
    for n, text in enumerate(outputs):
        if leaks(text):
            found[f"command output {n}"] = leaks(text)
    for base in (env.base, env.state_dir, env.runtime_dir):
        for path in base.rglob("*") if base.exists() else ():
            if path.is_file() and path != env.config_path:
                hits = leaks(path.read_bytes())
                if hits:
                    found[str(path)] = hits
    assert not found, found
    # The daemon's logs were written and hold the session (not an empty check).
    log = env.log()
    assert "credentials rejected" in log or "rejected" in log
    assert "store.retry" in log  # retries were logged (and stacks dumped, waited for above)
    assert (env.state_dir / "objlibd.db").stat().st_size > 0


# --- private files ----------------------------------------------------------------------


def test_state_dir_database_and_socket_are_private(tmp_path: Path, monkeypatch) -> None:
    env = Env(tmp_path / "lib")
    env.apply_env(monkeypatch)
    env.state_dir.mkdir(parents=True)
    env.state_dir.chmod(0o755)  # made by someone else, too open
    env.runtime_dir.mkdir(parents=True)
    env.runtime_dir.chmod(0o755)
    try:
        write(env.root / "a.txt", "a")
        env.init()
        env.start()
        env.wait_converged()

        def mode(p: Path) -> int:
            return stat.S_IMODE(p.stat().st_mode)

        assert mode(env.state_dir) == 0o700
        for name in ("objlibd.db", "objlibd.db-wal", "objlibd.db-shm", "objlibd.lock"):
            assert mode(env.state_dir / name) & 0o077 == 0, name
        assert mode(env.socket()) == 0o600
        assert mode(env.socket().parent) == 0o700
        assert env.stop() == 0
    finally:
        env.close()


def test_state_dir_is_created_private(tmp_path: Path, monkeypatch) -> None:
    env = Env(tmp_path / "lib")
    env.apply_env(monkeypatch)
    old = os.umask(0o022)
    try:
        env.init()
    finally:
        os.umask(old)
    assert stat.S_IMODE(env.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((env.state_dir / "objlibd.db").stat().st_mode) == 0o600


# --- the control socket from another uid -------------------------------------------------

PROBE = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
    sock.sendall(b'{"cmd": "pause"}\\n')
    print(sock.recv(65536).decode().strip())
except OSError as exc:
    print(json.dumps({"os_error": exc.strerror}))
"""


def _as_nobody_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run the client as another user"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    return None


def test_a_request_from_another_uid_is_refused(tmp_path: Path, monkeypatch) -> None:
    reason = _as_nobody_reason()
    if reason:
        pytest.skip(reason)
    env = Env(tmp_path / "lib")
    # Where `nobody` could reach it if its modes allowed (pytest's tmp is 0700).
    outer = Path(tempfile.mkdtemp(prefix="objlibd-run-"))
    env.runtime_dir = outer / "run"
    env.apply_env(monkeypatch)
    try:
        env.init()
        env.start()

        def as_nobody() -> dict[str, Any]:
            result = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
                + [sys.executable, "-c", PROBE, str(env.socket())],
                capture_output=True,
                text=True,
                cwd="/",
                timeout=30,
            )
            return json.loads(result.stdout.strip().splitlines()[-1])

        # As installed: the private folder and socket keep it out entirely.
        assert as_nobody() == {"os_error": "Permission denied"}
        # With the folder and socket opened up by mistake: the peer check refuses.
        for p in (outer, env.runtime_dir):
            p.chmod(0o711)
        env.socket().chmod(0o666)
        answer = as_nobody()
        assert answer["ok"] is False and f"uid {NOBODY}" in answer["error"], answer
        assert env.status()["daemon"]["paused"] is None  # the pause was not obeyed
        assert "control request refused" in env.log()
        assert env.stop() == 0
    finally:
        env.close()
        shutil.rmtree(outer, ignore_errors=True)


# --- no TCP listener ---------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _listening(inodes: set[str]) -> list[str]:
    out = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            state, inode = fields[3], fields[9]
            # TCP 0A = LISTEN; any bound UDP socket of ours would be a listener too.
            if inode in inodes and (state == "0A" or table.startswith("udp")):
                out.append(f"{table} {fields[1]} state {state}")
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_the_daemon_listens_on_no_tcp_port(key_env: KeyEnv) -> None:
    env = key_env
    write(env.root / "a.txt", "a")
    env.init()
    env.start()
    env.wait_converged()  # it has talked to the store: outgoing connections exist
    inodes = _socket_inodes(env.proc.pid)
    assert inodes, "the daemon has at least its control socket"
    assert _listening(inodes) == []
    assert env.stop() == 0
