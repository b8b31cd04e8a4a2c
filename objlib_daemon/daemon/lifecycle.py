"""`objlibd run`: the process around the Daemon — lock, logging, signals, sd_notify, reload.

Signal handlers only set flags (docs/platform-notes.md); the main thread does the
work in its supervision loop:
- SIGTERM / SIGINT: stop — the drain finishes the file in flight, the
  debouncer writes its last second to the queue, exit 0 within
  `shutdown_timeout` (work still running then is left to the next start,
  which requeues it: nothing is lost). A second signal exits at once.
- SIGHUP: reload the config file; it is validated first and a bad one is
  refused with the running configuration kept.
- SIGUSR1: dump every thread's stack to stderr (a stuck daemon, diagnosed);
  the main loop does it, like everything a signal asks for.
One daemon per library: the library lock is taken before anything else, so a
second instance exits 1 naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType

import structlog

from objlib_daemon.config import Config, ConfigError, load
from objlib_daemon.daemon import answers, sdnotify
from objlib_daemon.daemon.runner import Daemon
from objlib_daemon.errors import ObjlibError
from objlib_daemon.logging import get_logger, setup_logging
from objlib_daemon.state.lock import library_lock

log = get_logger("objlibd.lifecycle")

# Signals wake the main loop at once; the tick only paces supervision (a dead
# watcher is rebuilt within it). It follows the volume check interval so an
# idle daemon wakes no more often than that check (issue 7: no faster wakeups).


class Signals:
    """Flags set by signal handlers; the main loop sleeps in `wait()`.

    A handler only assigns a flag and writes a byte to a pipe, both safe when
    one handler interrupts another (or itself). `threading.Event.set()` is
    not: it takes a lock, and a signal arriving inside it in the main thread
    deadlocks (a SIGUSR1 storm in the hostile suite froze the daemon so).
    """

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.dump = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)
        if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to the log
            signal.signal(signal.SIGUSR1, self._on_dump)
        return self

    def wait(self, timeout: float) -> None:
        """Sleep until a signal (or `timeout`); the flags say which."""
        with contextlib.suppress(InterruptedError):
            select.select([self._read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # pipe full: a wake-up is pending
            os.write(self._write, b"x")

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop:
            # Second request: leave now; the next start requeues anything in flight.
            os.write(2, b"objlibd: second stop signal, exiting immediately\n")
            os._exit(128 + signum)
        self.stop = True
        self._wake()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True
        self._wake()

    def _on_dump(self, _signum: int, _frame: FrameType | None) -> None:
        self.dump = True
        self._wake()


def dump_stacks() -> None:
    """Every thread's stack to stderr, from the main loop (holding the GIL).

    Not `faulthandler.register(all_threads=True)`: that reads the other
    threads' frames without the GIL, and a busy daemon died of SIGSEGV about
    one dump in six. Nor from the signal handler itself: a second SIGUSR1
    during a dump re-entered `threading.enumerate()` and deadlocked on its
    lock, freezing every thread that then started or ended a thread.
    """
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread {names.get(ident, '?')} (0x{ident:x}), most recent call last:\n")
        parts.extend(traceback.format_stack(frame))
    sys.stderr.write("".join(parts))
    sys.stderr.flush()


def configure_logging(config: Config) -> None:
    """structlog per the config, and stdlib loggers (watchdog, APScheduler) in the same form."""
    setup_logging(config.logging.level, config.logging.format)
    fmt = config.logging.format
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    pre_chain = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=pre_chain,
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
    # watchdog reports some races as RuntimeWarnings: keep them in the log's format.
    logging.captureWarnings(True)


def run_daemon(config_path: Path, config: Config) -> int:
    """Run until stopped; returns the exit code (0 on a requested stop)."""
    configure_logging(config)
    lock = library_lock(config.state_dir, "daemon").acquire()  # AlreadyRunning: exit 1
    try:
        return _serve(config_path, config)
    finally:
        lock.release()


def _serve(config_path: Path, config: Config) -> int:
    signals = Signals().install()
    daemon = Daemon(config, answers.handle)
    try:
        daemon.start()
    except BaseException:
        daemon.stop(timeout=5.0)
        raise
    period = sdnotify.watchdog_period()
    tick = config.daemon.volume_check_interval
    tick = min(tick, period / 2) if period else tick
    last_ping = float("-inf")
    last_status = ""
    while not signals.stop:
        signals.wait(tick)
        if signals.stop:
            break
        if signals.reload:
            signals.reload = False
            reload_config(daemon, config_path)
        if signals.dump:
            signals.dump = False
            dump_stacks()
        daemon.supervise()
        now = time.monotonic()
        if period and now - last_ping >= period and daemon.healthy():
            sdnotify.notify("WATCHDOG=1")  # only while healthy: systemd restarts us otherwise
            last_ping = now
        line = daemon.state.status_line()
        if line != last_status:
            sdnotify.notify(f"STATUS={line}")
            last_status = line
    clean = daemon.stop(daemon.config.daemon.shutdown_timeout)
    if not clean:
        # Threads still in a store call would keep the interpreter alive past
        # the deadline; the database is consistent at every commit, so leave.
        sys.stderr.flush()
        os._exit(0)
    return 0


def reload_config(daemon: Daemon, config_path: Path) -> bool:
    """SIGHUP: load, validate, apply — or refuse and keep the running config."""
    log.info("reloading configuration", path=str(config_path))
    try:
        new = load(config_path)
        detail = daemon.reload(new)
    except (ConfigError, ObjlibError) as exc:
        log.error("configuration reload refused; keeping the running one", error=str(exc))
        daemon.state.errors.record("reload", f"reload refused: {exc}")
        return False
    configure_logging(new)
    log.info("configuration reloaded", detail=detail)
    return True
