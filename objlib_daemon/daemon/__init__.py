"""The resident daemon: producers that only enqueue paths, and the passes that act on them.

Events are hints, state is truth (docs/design.md): the watcher and the reconciler
put paths into the durable queue, the drain worker hands them to the one
applier, and the volume monitor decides whether any of that may run at all.
One object holds what the running daemon knows, and only the runner writes it.

    watcher.py    watchdog observer + handler that never raises
    debounce.py   the in-memory second: events -> file and folder hints, one UPSERT
    volume.py     mount monitor (mountinfo poll on Linux, periodic probe everywhere)
    worker.py     a pass on its own thread, run when kicked or due; no kick is lost
    scheduler.py  APScheduler for the periodic sweeps and the reconcile's timer
    control.py    UNIX-socket JSON lines: status, reconcile, pause, resume
    state.py      what the running daemon knows (status) and when passes may run
    runner.py     the Daemon: wires the above to one Workspace; the state's one writer
    supervisor.py keeps the file watcher alive and reports its watch shortfall
    jobs.py       the pass bodies: drain, reconcile, orphan sweep, prune, audit
    answers.py    what the control socket answers (live status, commands)
    reload.py     SIGHUP: what a new config changes in the running daemon
    lifecycle.py  `objlibd run`: lock, logging, signals, sd_notify, reload
    oneshot.py    what `objlibd reconcile` does when no daemon runs
"""
