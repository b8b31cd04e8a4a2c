"""The control channel: a UNIX socket speaking JSON lines, and its client `request`.

Why a socket and not the database: status must show what only the running
process knows (activity, files in flight, breaker), and `reconcile --wait`
must block until the daemon's own pass ends. Requests: `{"cmd": "status"}`,
`{"cmd": "reconcile", "force": bool, "wait": bool}`, `{"cmd": "pause"}`,
`{"cmd": "resume"}`; one JSON object per line each way.

Privacy (docs/platform-notes.md): the socket lives in the runtime dir (0700) and is
0600 itself; the peer's uid is checked with SO_PEERCRED (Linux) or
LOCAL_PEERCRED (macOS) where the OS reports it. The path must fit
`sockaddr_un` (104 bytes on macOS, 108 on Linux); a longer runtime dir falls
back to a private per-user folder under the temp dir. Only the holder of the
library lock starts a server, so an existing socket file is stale and removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.errors import NO_DAEMON, ObjlibError
from objlib_daemon.logging import get_logger
from objlib_daemon.private import private_dir

log = get_logger("objlibd.control")

SOCKET_NAME = "objlibd.sock"
# sockaddr_un.sun_path: 104 bytes on macOS/BSD, 108 on Linux, NUL included.
MAX_SOCKET_PATH = 103
# A request line is a small JSON object; anything longer is not ours.
MAX_LINE = 64 * 1024
DEFAULT_TIMEOUT = 10.0
# An idle connection is dropped after this long, so a stuck client cannot
# pin a server thread forever.
IDLE_TIMEOUT = 300.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(ObjlibError):
    """The daemon's socket exists but the daemon could not be talked to."""


class NotRunning(ObjlibError):
    """No daemon answers on the control socket."""

    exit_code = NO_DAEMON


def socket_path(config: Config) -> Path:
    """Where the daemon of this config listens (the same answer for server and client)."""
    preferred = config.runtime_dir / SOCKET_NAME
    if len(os.fsencode(preferred)) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(config.runtime_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"objlibd-{os.geteuid()}" / f"{digest}.sock"


def peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's uid where the OS tells (None: unknown)."""
    try:
        if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return struct.unpack("3i", raw)[1]
        if sys.platform == "darwin":  # LOCAL_PEERCRED = 1 at SOL_LOCAL = 0: struct xucred
            raw = conn.getsockopt(0, 1, 76)
            return struct.unpack_from("I", raw, 4)[0]
    except OSError:
        return None
    return None


class ControlServer:
    """Accepts connections on one thread, serves each on its own (they may block on waits)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inode: int | None = None

    def start(self) -> None:
        private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # stale: we hold the library lock, nobody else serves
            else:
                raise ControlError(f"{self.path} exists and is not a socket: remove it")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind() creates the file with the umask's mode; make it 0600 from the
        # first instant (only threads of ours exist yet, so the umask swap is safe).
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._inode = os.lstat(self.path).st_ino
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()
        log.info("control socket listening", path=str(self.path))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            # Wake the blocked accept(): shutdown works on Linux; a connection
            # to ourselves works everywhere.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as poke:
                poke.settimeout(0.5)
                poke.connect(os.fspath(self.path))
            if self._thread is not None:
                self._thread.join(timeout=5)
            sock.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            if self._stopping.is_set():
                conn.close()
                return
            threading.Thread(
                target=self._serve, args=(conn,), name="control-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            uid = peer_uid(conn)
            if uid is not None and uid != os.geteuid():
                log.warning("control request refused", peer_uid=uid)
                self._send(conn, {"ok": False, "error": f"refused: uid {uid} is not the owner"})
                _linger(conn)
                return
            conn.settimeout(IDLE_TIMEOUT)
            buffer = b""
            while not self._stopping.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                if len(buffer) > MAX_LINE and b"\n" not in buffer:
                    self._send(conn, {"ok": False, "error": "request too long"})
                    return
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() and not self._send(conn, self._answer(line)):
                        return

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
            if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
                raise ValueError("expected an object with a string `cmd`")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        try:
            return self.handler(message)
        except ObjlibError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control handler failed", cmd=message.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    @staticmethod
    def _send(conn: socket.socket, answer: dict[str, Any]) -> bool:
        try:
            conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
        except OSError:
            return False
        return True


def _linger(conn: socket.socket) -> None:
    """Close after the peer has read the answer: closing with its request still
    unread resets the connection, and the peer may then see the reset instead
    of the answer. Its request is read and dropped (a second at most)."""
    deadline = time.monotonic() + 1.0
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(65536):
                break


def request(
    config: Config, message: dict[str, Any], timeout: float | None = DEFAULT_TIMEOUT
) -> dict[str, Any] | None:
    """Send one request to the running daemon; None when no daemon listens.

    `timeout=None` waits as long as the daemon takes (`reconcile --wait`).
    Raises ControlError when a daemon is there but does not answer in time.
    """
    path = socket_path(config)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(timeout, DEFAULT_TIMEOUT) if timeout else DEFAULT_TIMEOUT)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None  # no socket, or a stale one: no daemon
        except PermissionError as exc:
            raise ControlError(f"cannot talk to the daemon at {path}: {exc.strerror}") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to the daemon at {path}: {exc}") from None
        sock.settimeout(timeout)
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            buffer = b""
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError("the daemon closed the connection without answering")
                buffer += chunk
        except TimeoutError:
            raise ControlError(
                f"the daemon did not answer within {timeout:g}s (is it stuck? see its log)"
            ) from None
        except OSError as exc:
            raise ControlError(f"lost the connection to the daemon: {exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(buffer.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError("the daemon sent an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon sent an unexpected answer")
    return answer
