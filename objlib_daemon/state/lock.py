"""One applier per library: an OS file lock held for the process lifetime.

`fcntl.flock` (not `lockf`, not a table row: the old sync's INSERT OR REPLACE
"lock" excluded nobody) is released by the kernel when the process dies, so a
`kill -9` never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from objlib_daemon.errors import BUSY, ObjlibError
from objlib_daemon.private import private_dir


class AlreadyRunning(ObjlibError):
    exit_code = BUSY

    def __init__(self, pid: str, what: str) -> None:
        super().__init__(
            f"another objlibd ({what}, pid {pid or 'unknown'}) is working on this library; "
            "use `objlibd status` / `objlibd reconcile --wait` to talk to it, or stop it first"
        )
        self.pid = pid


class InstanceLock:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            raise AlreadyRunning(holder[0] if holder else "", " ".join(holder[1:]) or "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.what}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(state_dir: Path) -> dict[str, object] | None:
    """Who holds the library lock, `{"pid", "what"}`, or None.

    Read from the lock file and checked with a signal-0 probe rather than by
    trying the lock: a probe that held it even briefly could make a starting
    sync or daemon fail as "busy". So `status` can say a one-shot sync is
    running instead of only "daemon: not running".
    """
    try:
        words = (state_dir / "objlibd.lock").read_text(errors="replace").split()
        pid = int(words[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):  # no file, no pid, or no such process
        return None
    return {"pid": pid, "what": " ".join(words[1:]) or "?"}


def library_lock(state_dir: Path, what: str) -> InstanceLock:
    return InstanceLock(state_dir / "objlibd.lock", what)
