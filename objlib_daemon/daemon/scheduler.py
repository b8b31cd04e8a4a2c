"""APScheduler 3.x for the periodic sweeps; the drain and the reconcile run on workers.

Settings from docs/platform-notes.md: a BackgroundScheduler in UTC, jobs with
`coalesce=True`, `max_instances=1` and `misfire_grace_time=None` (the default
1 s grace silently skips runs after a suspend). No job store: durable work
lives in our own queue, the scheduler only decides *when* to look at it.

A job here is a sweep (orphans, prune, audit), a one-off helper, or the
reconcile's timer, which only kicks the reconcile worker (worker.py): passes
that must never lose a "run now" are not APScheduler jobs.
"""

from __future__ import annotations

from datetime import UTC

from apscheduler.schedulers.background import BackgroundScheduler

JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

# The drain's safety net: its real schedule is kicks and the queue's next due
# time; this only bounds how long a scheduling bug could leave work waiting.
DRAIN_INTERVAL = 300.0
# Prune is a daily look: against a 7-day `prune_after` a day's slack is noise.
PRUNE_INTERVAL = 86400.0
# With fewer inotify watches than folders, changes in unwatched folders are
# found only by the reconcile: run it at least this often then.
LIMITED_RECONCILE_INTERVAL = 900.0
# An interval of 0 in the config means "never on a timer" (kicks still run
# the pass): ten years stands in for never.
NEVER = 10 * 365 * 86400.0
# Sweeps and one-off helpers (watch check, engine swap); each holds a thread
# only while it runs, and a few bound what a stuck store call can pin.
MAX_WORKERS = 4


def periodic(seconds: float) -> float:
    return seconds if seconds > 0 else NEVER


def make_scheduler() -> BackgroundScheduler:
    return BackgroundScheduler(
        timezone=UTC,
        job_defaults=dict(JOB_DEFAULTS),
        executors={"default": {"type": "threadpool", "max_workers": MAX_WORKERS}},
    )


def next_run(scheduler: BackgroundScheduler, job_id: str) -> float | None:
    """When the job runs next (None: no such job, or paused)."""
    job = scheduler.get_job(job_id)
    return job.next_run_time.timestamp() if job is not None and job.next_run_time else None
