"""APScheduler 3.x jobs that can be kicked ("run now") without a kick ever being lost.

Settings from platform-notes.md: a BackgroundScheduler in UTC, jobs with
`coalesce=True`, `max_instances=1` and `misfire_grace_time=None` (the default
1 s grace silently skips runs after a suspend). No job store: durable work
lives in our own queue, the scheduler only decides *when* to look at it.

`modify_job(next_run_time=now)` is dropped while the job runs (max_instances),
so a `KickedJob` also keeps a dirty flag that a running pass re-checks before
it returns, and an EXECUTED listener re-kicks a job whose kick arrived in the
instant between that check and APScheduler counting the run as finished.
Each kick gets a ticket; `wait(ticket)` returns once a pass that *started
after* the kick has ended, which is what `reconcile --wait` needs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import SchedulerNotRunningError
from apscheduler.triggers.interval import IntervalTrigger

from objlib_daemon.logging import get_logger

log = get_logger("objlibd.scheduler")

JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

# Drain's safety-net interval: its real schedule is the queue's next due
# time; this only bounds how long a scheduling bug could leave work waiting.
DRAIN_INTERVAL = 300.0
# Prune is a daily look: against a 7-day `prune_after` a day's slack is noise.
PRUNE_INTERVAL = 86400.0
# With fewer inotify watches than folders, changes in unwatched folders are
# found only by the reconcile: run it at least this often then.
LIMITED_RECONCILE_INTERVAL = 900.0
# Orphans left by the last run are retried this long after start, once the
# first reconcile and drain had the store to themselves.
FIRST_SWEEP_DELAY = 60.0
# An interval of 0 in the config means "never on a timer" (kicks still run
# the job): ten years stands in for never.
NEVER = 10 * 365 * 86400.0


def periodic(seconds: float) -> float:
    return seconds if seconds > 0 else NEVER


# Jobs: drain, reconcile, orphan sweep, prune, audit, plus one-off helpers;
# a handful of threads is enough and bounds what a stuck store call can pin.
MAX_WORKERS = 8


def make_scheduler() -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults=dict(JOB_DEFAULTS),
        executors={"default": {"type": "threadpool", "max_workers": MAX_WORKERS}},
    )
    return scheduler


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def timestamp(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


# A pass body gets the options merged from every kick it covers and returns
# when it wants to run again (None: only on a kick or at its interval).
Body = Callable[[dict[str, Any]], float | None]


class KickedJob:
    """One interval job whose passes can also be requested at any time."""

    def __init__(
        self,
        scheduler: BackgroundScheduler,
        job_id: str,
        body: Body,
        *,
        interval: float,
        first_run: float | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.job_id = job_id
        self.body = body
        self._cond = threading.Condition()
        self._sched_lock = threading.Lock()
        self._running = False
        self._dirty = False
        self._options: dict[str, Any] = {}
        self._requested = 0  # tickets handed out
        self._done = 0  # every ticket <= this is covered by a finished pass
        self._closed = False
        self.passes = 0
        self.last_started: float | None = None
        self.last_finished: float | None = None
        extra: dict[str, Any] = {}
        if first_run is not None:  # else the trigger's first fire: one interval from now
            extra["next_run_time"] = utc(first_run)
        scheduler.add_job(
            self._run,
            IntervalTrigger(seconds=interval, timezone=UTC),
            id=job_id,
            name=job_id,
            **extra,
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    # --- asking for a pass ----------------------------------------------------------------

    def kick(self, at: float | None = None, **options: Any) -> int:
        """Request a pass (now, or at `at`); returns a ticket for `wait`."""
        now = time.time()
        immediate = at is None or at <= now
        with self._cond:
            self._requested += 1
            ticket = self._requested
            for name, value in options.items():
                self._merge(name, value)
            if immediate:
                self._dirty = True
            schedule = not self._running or not immediate
        if schedule:
            self._schedule(now if immediate else at)
        return ticket

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until a pass that started after `ticket` was issued has finished."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= ticket or self._closed, timeout)

    def reschedule(self, interval: float) -> None:
        """Change the interval (config reload, watch limit) keeping pending kicks."""
        try:
            job = self.scheduler.get_job(self.job_id)
            current = job.next_run_time if job is not None else None
            self.scheduler.reschedule_job(
                self.job_id, trigger=IntervalTrigger(seconds=interval, timezone=UTC)
            )
            if current is not None:
                self._schedule(timestamp(current) or time.time())
        except (JobLookupError, SchedulerNotRunningError):
            pass

    def close(self) -> None:
        """Release every waiter (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._running

    def next_run(self) -> float | None:
        try:
            job = self.scheduler.get_job(self.job_id)
        except Exception:
            return None
        return timestamp(job.next_run_time) if job is not None else None

    # --- internals --------------------------------------------------------------------------

    def _merge(self, name: str, value: Any) -> None:
        old = self._options.get(name)
        if isinstance(value, bool):
            self._options[name] = bool(old) or value
        elif isinstance(value, set):
            self._options[name] = (old or set()) | value
        elif value is not None:
            self._options[name] = value

    def _schedule(self, at: float) -> None:
        """Move the next run earlier (never later) to `at`."""
        target = utc(at)
        with self._sched_lock:
            try:
                job = self.scheduler.get_job(self.job_id)
                if job is None:
                    return
                if job.next_run_time is None or target < job.next_run_time:
                    self.scheduler.modify_job(self.job_id, next_run_time=target)
            except (JobLookupError, SchedulerNotRunningError):
                pass

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    self._running = False
                    return
                self._running = True
                self._dirty = False
                covering = self._requested
                options, self._options = self._options, {}
            self.last_started = time.time()
            again: float | None = None
            try:
                again = self.body(options)
            except Exception:  # a job must never die with its exception unseen
                log.exception("job failed", job=self.job_id)
            self.passes += 1
            self.last_finished = time.time()
            with self._cond:
                self._done = max(self._done, covering)
                self._cond.notify_all()
                if not self._closed and (
                    self._dirty or (again is not None and again <= time.time())
                ):
                    continue
                self._running = False
            if again is not None:
                self._schedule(again)
            return

    def _on_event(self, event: JobExecutionEvent) -> None:
        # Runs after APScheduler counted the run finished: a kick that fell in
        # between our last dirty check and that moment was skipped as "max
        # instances reached"; its dirty flag is still set, so run again now.
        # No lock of ours is taken here (this may run on the scheduler thread
        # while it holds its job store lock).
        if event.job_id != self.job_id or self._closed:
            return
        if self._dirty and not self._running:
            with contextlib.suppress(JobLookupError, SchedulerNotRunningError):
                self.scheduler.modify_job(self.job_id, next_run_time=utc(time.time()))


class MaxInstancesFilter:
    """Drops APScheduler's "skipped: maximum number of running instances" warning.

    For kicked jobs it is expected and handled (dirty flag + listener), and
    would otherwise print a warning for every event burst during a drain.
    """

    def __init__(self, job_ids: set[str]) -> None:
        self.job_ids = job_ids

    def filter(self, record: Any) -> bool:
        message = record.getMessage()
        if "maximum number of running instances" not in message:
            return True
        return not any(f'"{job_id}' in message for job_id in self.job_ids)
