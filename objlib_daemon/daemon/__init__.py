"""The resident daemon: producers that only enqueue paths, and the jobs that act on them.

Events are hints, state is truth (design.md): the watcher and the reconciler
put paths into the durable queue, the scheduler's drain hands them to the one
applier, and the volume monitor decides whether any of that may run at all.

    watcher.py    watchdog observer + handler that never raises
    debounce.py   the in-memory second: events -> one batched UPSERT
    volume.py     mount monitor (mountinfo poll on Linux, periodic probe everywhere)
    scheduler.py  APScheduler jobs that can be kicked without losing a kick
    control.py    UNIX-socket JSON lines: status, reconcile, pause, resume
    runner.py     the Daemon: wires the above to one Workspace; when passes may run
    supervisor.py keeps the watcher alive and follows the volume (main + monitor threads)
    jobs.py       the pass bodies: drain, reconcile, orphan sweep, prune, audit
    answers.py    what the control socket answers (live status, commands)
    reload.py     SIGHUP: apply a new config to the running daemon
    lifecycle.py  `objlibd run`: lock, logging, signals, sd_notify, reload
    oneshot.py    what `objlibd reconcile` does when no daemon runs
"""
