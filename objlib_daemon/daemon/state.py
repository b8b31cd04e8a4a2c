"""What the running daemon knows, in one object that only the runner writes.

Why one owner: `status`, the sd_notify line and the rules for what may run
all read the same facts, and a reader of runner.py should see every change
to them. The jobs, the supervisor and reload receive plain values and return
what changed; the runner applies it here. Two parts are written from other
threads by design and keep their own lock: the error log (each applier
thread reports its failed file as it happens) and the running drain's count.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from objlib_daemon.library.volume import VolumeState

RUNNING, PAUSED, UNAVAILABLE = "running", "paused", "volume unavailable"
# Errors kept for `status`: enough to see a pattern, small enough to read.
LAST_ERRORS = 20


class ErrorLog:
    """The last errors, newest last; safe to write from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)

    def record(self, where: str, message: str) -> None:
        with self._lock:
            self._entries.append({"at": time.time(), "where": where, "error": message[:500]})

    def clear(self, *wheres: str) -> None:
        """A clean run of a job retires its earlier errors: `status` showed them
        long after their cause was gone (issue 15, finding 4)."""
        with self._lock:
            kept = [e for e in self._entries if e["where"] not in wheres]
            self._entries.clear()
            self._entries.extend(kept)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)


class Progress:
    """The running drain's count per action; every applier thread adds to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, action: str) -> dict[str, int]:
        """Count one result; returns the counts so far."""
        with self._lock:
            self._counts[action] += 1
            return dict(self._counts)

    def done(self) -> int:
        with self._lock:
            return sum(self._counts.values())


@dataclass
class DaemonState:
    """The facts `status` shows and the rules for what may run, derived from them."""

    started_at: float = field(default_factory=time.time)
    stopping: bool = False
    paused: str | None = None  # why, when paused
    volume: VolumeState = field(default_factory=lambda: VolumeState(False, "not checked yet"))
    reconciling: bool = False
    draining: Progress | None = None  # the running drain's count
    # A reconcile skipped while paused runs on resume.
    reconcile_skipped: bool = False
    # Prune trusts a missing clock only after a reconcile on the present volume.
    reconciled_since_mount: bool = False
    # The last reconcile that ran; `pass_record` is the last one asked for,
    # skipped or not (what `reconcile --wait` reports).
    last_reconcile: dict[str, Any] | None = None
    pass_record: dict[str, Any] = field(default_factory=dict)
    last_drain: dict[str, Any] | None = None
    last_audit: dict[str, Any] | None = None
    totals: Counter[str] = field(default_factory=Counter)
    watch_report: dict[str, Any] | None = None
    watch_limited: bool = False  # fewer inotify watches than folders
    errors: ErrorLog = field(default_factory=ErrorLog)

    @property
    def mode(self) -> str:
        if self.paused:
            return PAUSED
        if not self.volume.available:
            return UNAVAILABLE
        return RUNNING

    def may_read_library(self) -> bool:
        return not self.stopping and not self.paused and self.volume.available

    def may_use_store(self) -> bool:
        return not self.stopping and not self.paused

    def activity(self) -> str:
        if self.stopping:
            return "stopping"
        doing = []
        if self.reconciling:
            doing.append("reconciling")
        progress = self.draining
        if progress is not None:
            doing.append(f"applying changes ({progress.done()} done this pass)")
        if doing:
            return ", ".join(doing)
        if self.paused:
            return f"paused ({self.paused})"
        if not self.volume.available:
            return "waiting for the volume"
        return "idle"

    def status_line(self) -> str:
        return f"{self.mode}; {self.activity()}"
