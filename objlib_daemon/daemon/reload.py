"""SIGHUP: apply a new, already validated config to the running daemon.

Intervals, settle time, retry and logging settings apply at once. Library
rules (include/exclude, sizes, metadata rules, enrichment) need a new Engine:
it is swapped between drain passes, then a reconcile finds what became
eligible. The store, the library root and the paths cannot change under a
running daemon: such a config is refused whole and the running one kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from objlib_daemon.config import Config, ConfigError
from objlib_daemon.daemon.scheduler import LIMITED_RECONCILE_INTERVAL, PRUNE_INTERVAL, periodic
from objlib_daemon.logging import get_logger
from objlib_daemon.sync.passes import Engine
from objlib_daemon.workspace import check_matches, library_from

if TYPE_CHECKING:
    from objlib_daemon.daemon.runner import Daemon

log = get_logger("objlibd.reload")


def apply_config(d: Daemon, new: Config) -> str:
    """Apply a validated config; what needs a restart is refused (old config kept)."""
    old = d.config
    assert d.ws is not None
    check_matches(new, d.ws.meta)  # Mismatch: another library or store
    restart_only = []
    if new.store != old.store:
        restart_only.append("[store]")
    if new.paths != old.paths or new.state_dir != old.state_dir:
        restart_only.append("[paths]")
    if new.library.root != old.library.root:
        restart_only.append("library.root")
    if restart_only:
        raise ConfigError(
            f"{', '.join(restart_only)} changed: restart objlibd to apply that; "
            "the running configuration is unchanged"
        )
    library_changed = (
        new.library != old.library
        or new.metadata_rules != old.metadata_rules
        or new.sync.skip_enrichment != old.sync.skip_enrichment
        or new.enrichment != old.enrichment
    )
    d.config = new
    d.engine.config = new
    d_old, d_new = old.daemon, new.daemon
    if d.debouncer is not None:
        d.debouncer.settle_seconds = d_new.settle_seconds
    if d.monitor is not None:
        d.monitor.interval = d_new.volume_check_interval
    if d_new.reconcile_interval != d_old.reconcile_interval and d.reconcile_job:
        interval = periodic(d_new.reconcile_interval)
        if d.watch_limited:
            interval = min(interval, LIMITED_RECONCILE_INTERVAL)
        d.reconcile_job.reschedule(interval)
    for job_id, seconds in (
        ("orphans", d_new.orphan_sweep_interval),
        ("audit", d_new.audit_interval),
    ):
        d.scheduler.reschedule_job(job_id, trigger="interval", seconds=periodic(seconds))
    if d_new.auto_prune and not d.scheduler.get_job("prune"):
        d.scheduler.add_job(d.jobs.prune, "interval", seconds=PRUNE_INTERVAL, id="prune")
    elif not d_new.auto_prune and d.scheduler.get_job("prune"):
        d.scheduler.remove_job("prune")
    if library_changed:
        # A new Library means a new Engine; swap it between drain passes.
        d.scheduler.add_job(swap_library, args=[d], id="swap-library", replace_existing=True)
    return "reloaded" + (
        " (library rules change after the current pass)" if library_changed else ""
    )


def swap_library(d: Daemon) -> None:
    assert d.ws is not None
    with d.writer:
        ws = d.ws
        library = library_from(d.config, ws.meta, ws.db)
        if ws.library.enricher is not None:
            ws.library.enricher.close()
        ws.library = library
        ws.engine = Engine(ws.db, ws.store, library, d.config)
        if d.watcher is not None:
            d.watcher.set_eligibility(library.eligibility)
        if d.debouncer is not None:
            d.debouncer.eligibility = library.eligibility
    log.info("library rules reloaded; reconciling")
    d.kick_reconcile("config reload")
