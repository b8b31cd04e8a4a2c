"""sd_notify without a package: one datagram to `$NOTIFY_SOCKET` (docs/platform-notes.md).

systemd's `Type=notify` waits for `READY=1`; `WatchdogSec=` expects
`WATCHDOG=1` at least every `$WATCHDOG_USEC`. A leading '@' in the socket
path names an abstract socket. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from objlib_daemon.logging import get_logger

log = get_logger("objlibd.sdnotify")


def enabled() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(*fields: str) -> bool:
    """Send `KEY=value` lines in one datagram; False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block: a receiver that stops reading fills its queue
            # (net.unix.max_dgram_qlen, 10 by default) and a blocking send would
            # then hang whichever thread reported its state; drop the message.
            sock.setblocking(False)
            sock.connect(address)
            sock.send(payload)
    except OSError as exc:
        log.debug("sd_notify failed", error=str(exc))
        return False
    return True


def watchdog_period() -> float | None:
    """How often to send WATCHDOG=1, or None when systemd does not watch us.

    Half of `WatchdogSec`, as sd_watchdog_enabled(3) recommends, so one late
    tick of the supervisor loop never trips the watchdog.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        if pid and int(pid) != os.getpid():
            return None
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
