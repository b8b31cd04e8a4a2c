"""The mount monitor: is the library's volume here, and is it the same mount as before?

Unmount is silent to inotify on Linux and a remount leaves the old watches
dead (docs/platform-notes.md), so the daemon cannot learn about the drive from the
watcher. This thread sleeps in `poll()` on `/proc/self/mountinfo`, which wakes
within a millisecond of any mount or unmount (POLLPRI|POLLERR), and probes at
least every `volume_check_interval` everywhere else (and as a safety net).

"Available" is the core's `probe`: the marker with our library id is readable
at the root. Identity is (available, device, mount id): a remount of the same
stick between two looks is still a change, so the daemon rebuilds the watcher
and reconciles. Transitions are reported from this thread only, one at a time.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from objlib_daemon.library.volume import MOUNTINFO, VolumeState, find_mount, probe
from objlib_daemon.logging import get_logger

log = get_logger("objlibd.volume")

Identity = tuple[bool, int | None, str | None]


class VolumeMonitor:
    """Watches the mount table and the marker; calls `on_change(state)` on each change."""

    def __init__(
        self,
        root: Path,
        library_id: str,
        interval: float,
        on_change: Callable[[VolumeState], None],
    ) -> None:
        self.root = root
        self.library_id = library_id
        self.interval = interval
        self.on_change = on_change
        self.state = VolumeState(False, "not checked yet")
        self.since = time.time()
        self._identity: Identity | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._mountinfo = None
        if sys.platform.startswith("linux"):
            try:
                self._mountinfo = open(MOUNTINFO, "rb")  # noqa: SIM115 - held for the thread's life
            except OSError:
                self._mountinfo = None
        self.mount_events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="volume-monitor", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request_check(self) -> None:
        """Ask the monitor thread to look now (safe from any thread, never blocks)."""
        with contextlib.suppress(OSError):  # pipe full: a check is already pending
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stop.set()
        self.request_check()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._mountinfo is not None:
            self._mountinfo.close()

    # --- the thread ---------------------------------------------------------------------

    def _read_mountinfo(self) -> str | None:
        if self._mountinfo is None:
            return None
        try:
            # Reading from the start re-arms the POLLPRI notification.
            self._mountinfo.seek(0)
            return self._mountinfo.read().decode("utf-8", "replace")
        except OSError:
            return None

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._mountinfo is not None:
            poller.register(self._mountinfo.fileno(), select.POLLPRI | select.POLLERR)
        mountinfo = self._read_mountinfo()
        self._check(mountinfo, "start")
        while not self._stop.is_set():
            try:
                ready = poller.poll(self.interval * 1000)
            except InterruptedError:
                continue
            why = "periodic"
            for fd, _mask in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    why = "requested"
                else:
                    self.mount_events += 1
                    why = "mount table changed"
            if self._stop.is_set():
                break
            mountinfo = self._read_mountinfo()
            try:
                self._check(mountinfo, why)
            except Exception:  # the monitor must outlive any one bad look
                log.exception("volume check failed")

    def _check(self, mountinfo: str | None, why: str) -> None:
        state = probe(self.root, self.library_id)
        mount = find_mount(self.root, mountinfo).id if mountinfo is not None else None
        identity: Identity = (state.available, state.device, mount)
        if identity == self._identity:
            return
        previous, self._identity = self._identity, identity
        was_available = self.state.available
        self.state = state
        if previous is not None and state.available == was_available and not state.available:
            return  # still unavailable, only the mount table moved
        self.since = time.time()
        log.info(
            "volume available" if state.available else "volume unavailable",
            reason=state.reason,
            trigger=why,
            remount=state.available and was_available,
        )
        self.on_change(state)
