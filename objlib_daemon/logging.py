"""structlog setup: JSON lines for services and pipes, a readable console on a TTY.

Under systemd, a `<N>` syslog-priority prefix lets journald keep levels
(docs/platform-notes.md: when `$JOURNAL_STREAM` matches stderr's device:inode).

Modules take their logger from `get_logger`, which imports and configures
structlog only when something is first logged: importing it costs 30 ms
(it pulls in asyncio), a third of what `objlibd status` may take
(docs/benchmarks.md, benchmark 7), and most commands log nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

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


# (level, console): what setup_logging asked for; warnings only until then.
_settings: tuple[int, bool] = (logging.WARNING, False)
_configured = False


def setup_logging(level: str | None, fmt: str = "auto") -> None:
    """Say how to log; `level=None` = warnings only (CLI). structlog is configured
    now if it is imported already, else when something is first logged."""
    global _settings
    numeric = getattr(logging, (level or "warning").upper(), logging.INFO)
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    _settings = (numeric, console)
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    if _configured or "structlog" in sys.modules:
        _configure()


def _configure() -> None:
    global _configured
    import structlog

    numeric, console = _settings
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
    _configured = True


class _Logger:
    """A structlog logger made on first use (see the module's docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            if not _configured:
                _configure()
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str) -> Any:
    return _Logger(name)
