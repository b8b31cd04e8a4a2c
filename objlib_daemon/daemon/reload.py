"""SIGHUP: what a new, already validated config changes in the running daemon.

`plan` compares the running config with the new one and returns what the
runner must do; it changes nothing itself. Intervals and the settle time
apply at once. Everything the engine reads (library rules, sync and store
tuning) takes a new Engine, swapped between drain passes; new library rules
(include/exclude, sizes, metadata rules, enrichment) also take a new Library
and a reconcile that finds what became eligible. The store, the library root
and the paths cannot change under a running daemon: such a config is
refused whole and the running one kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from objlib_daemon.config import Config, ConfigError
from objlib_daemon.workspace import check_matches


@dataclass(frozen=True)
class Reload:
    """What changed, for the runner to apply."""

    config: Config
    intervals: dict[str, float]  # periodic job id -> its new interval (seconds), changed only
    auto_prune: bool | None  # None: unchanged
    engine_changed: bool  # a new Engine between passes
    library_changed: bool  # and a new Library, then a reconcile


def plan(old: Config, new: Config, meta: dict[str, str]) -> Reload:
    """What applying `new` means; raises ConfigError for what needs a restart."""
    check_matches(new, meta)  # Mismatch: another library or store
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
    d_old, d_new = old.daemon, new.daemon
    intervals = {
        job_id: seconds
        for job_id, seconds, before in (
            ("reconcile", d_new.reconcile_interval, d_old.reconcile_interval),
            ("orphans", d_new.orphan_sweep_interval, d_old.orphan_sweep_interval),
            ("audit", d_new.audit_interval, d_old.audit_interval),
        )
        if seconds != before
    }
    return Reload(
        config=new,
        intervals=intervals,
        auto_prune=d_new.auto_prune if d_new.auto_prune != d_old.auto_prune else None,
        engine_changed=new != old,
        library_changed=library_rules_changed(old, new),
    )


def library_rules_changed(old: Config, new: Config) -> bool:
    """Whether `new` needs a new Library (what is eligible, and how it is described)."""
    return (
        new.library != old.library
        or new.metadata_rules != old.metadata_rules
        or new.sync.skip_enrichment != old.sync.skip_enrichment
        or new.enrichment != old.enrichment
    )
