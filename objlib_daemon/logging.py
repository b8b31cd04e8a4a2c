"""structlog setup: JSON lines for services and pipes, a readable console on a TTY.

Under systemd, a `<N>` syslog-priority prefix lets journald keep levels
(platform-notes.md: when `$JOURNAL_STREAM` matches stderr's device:inode).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _under_journald() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _journald_prefix(_logger: object, method: str, event: str) -> str:
    return f"<{_PRIORITY.get(method, 6)}>{event}"


def setup_logging(level: str | None, fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging once; `level=None` = warnings only (CLI)."""
    numeric = getattr(logging, (level or "warning").upper(), logging.INFO)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(structlog.processors.JSONRenderer())
        if _under_journald():
            processors.append(_journald_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
