"""`objlibd sync`: the one pass (sync/passes.py), rendered: a progress bar and a summary."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from objlib_daemon.cli.common import State, duration, emit, interruptible, summary_line
from objlib_daemon.cli.progress import for_terminal
from objlib_daemon.enrichment.cost import estimate
from objlib_daemon.enrichment.pending import enrichment_line, enrichment_status
from objlib_daemon.errors import INTERRUPTED, SOME_FAILED
from objlib_daemon.state import queue
from objlib_daemon.state.lock import library_lock
from objlib_daemon.sync.outcome import Outcome, tally
from objlib_daemon.units import parse_duration
from objlib_daemon.workspace import open_workspace

SUMMARY_KEYS = [
    "new",
    "modified",
    "moved",
    "missing",
    "restored",
    "adopted",
    "unchanged",
    "hashed",
    "uploaded",
    "deleted",
    "pruned",
    "orphans_cleaned",
    "failed",
    "retrying",
    "not_tried",
    "skipped",
    "untracked",
]
# How long a file must have been missing before --prune-missing deletes its document.
DEFAULT_PRUNE_AGE = "7d"


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="No mtime shortcut: hash everything, re-upload where hash or enrichment differ.",
)
@click.option(
    "--allow-mass-missing",
    is_flag=True,
    help="Let this pass mark more files missing than the guard allows "
    "(max_missing_count / max_missing_fraction): they were really deleted.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan and what it would cost; change nothing, call nothing.",
)
@click.option(
    "--count-tokens",
    is_flag=True,
    help="With --dry-run: count enrichment tokens with the model's (free) countTokens "
    "instead of the offline estimate of 4 characters per token.",
)
@click.option("--prune-missing", is_flag=True, help="Delete documents of long-missing files.")
@click.option(
    "--older-than",
    callback=duration,
    default=None,
    help=f"With --prune-missing: how long a file must have been missing "
    f"(default {DEFAULT_PRUNE_AGE}).",
)
@click.option(
    "--skip-enrichment",
    is_flag=True,
    default=None,
    help="Upload raw bytes with identity metadata only: no path rules, no AI metadata.",
)
@click.option("--cleanup-orphans", is_flag=True, help="Retry every recorded orphan now.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Try files the store refused again now, even unchanged (its limit was raised, "
    "the cause is gone); otherwise they are retried after [sync] retry_failed_after.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one summary object.")
@click.option("-v", "--verbose", count=True, help="List each file acted on.")
@click.pass_obj
def sync(
    state: State,
    force: bool,
    allow_mass_missing: bool,
    dry_run: bool,
    prune_missing: bool,
    older_than: float | None,
    count_tokens: bool,
    skip_enrichment: bool | None,
    cleanup_orphans: bool,
    retry_failed: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Bring the store up to date with the library, once."""
    state.verbose += verbose
    if older_than is not None and not prune_missing:
        raise click.UsageError("--older-than applies only with --prune-missing")
    prune_older = None
    if prune_missing:
        prune_older = older_than if older_than is not None else parse_duration(DEFAULT_PRUNE_AGE)
    config = state.config()
    if dry_run:
        _dry_run(
            state, force, allow_mass_missing, as_json, skip_enrichment, prune_older, count_tokens
        )
        return
    stop = threading.Event()
    with library_lock(config.state_dir, "sync"), interruptible(stop):
        ws = open_workspace(config, skip_enrichment=skip_enrichment or None)
        try:
            summary = _run(
                ws,
                state,
                force=force,
                allow_mass_missing=allow_mass_missing,
                prune_older=prune_older,
                cleanup_all=cleanup_orphans,
                retry_failed=retry_failed,
                as_json=as_json,
                stop=stop,
            )
        finally:
            ws.close()
    emit(summary, as_json, _text(summary, state.verbose))
    if stop.is_set():
        sys.exit(INTERRUPTED)
    # Every time while any file is not in the store, not only on the pass that
    # failed it: a later sync with nothing to do must not report success.
    if summary["outcome"] != "ok":
        sys.exit(SOME_FAILED)


def _run(
    ws: Any,
    state: State,
    *,
    force: bool,
    allow_mass_missing: bool,
    prune_older: float | None,
    cleanup_all: bool,
    retry_failed: bool,
    as_json: bool,
    stop: threading.Event,
) -> dict[str, Any]:
    results: list[Any] = []
    notes: list[str] = []  # said without -v: no text layer, unreadable file
    with for_terminal(as_json, state.quiet) as bar:
        bar.phase("scanning and hashing" if force else "scanning")

        def planned(plan: Any) -> None:
            with ws.db.session() as s:
                bar.phase("syncing", total=queue.depth(s) + len(plan.vanished))

        def progress(result: Any) -> None:
            bar.advance()
            if result.note:
                notes.append(f"{result.path}: {result.note}")
            if state.verbose and result.action.acted:
                results.append(result)

        done = ws.engine.run_pass(
            force=force,
            allow_mass_missing=allow_mass_missing,
            cleanup_all=cleanup_all,
            retry_failed=retry_failed,
            prune_older=prune_older,
            on_plan=planned,
            on_result=progress,
            stop=stop,
        )
    plan, counts = done.plan, tally(done.counts)
    counts["unchanged"] += plan.unchanged
    if force:  # the scan hashed every present file; the applier re-read only the changed
        counts["hashed"] = plan.hashed
    counts["orphans_cleaned"] += done.cleaned
    if prune_older is not None:
        counts["pruned"] = len(done.pruned)
    with ws.db.session() as s:  # halted by the breaker (or a stop): never reached
        counts["not_tried"] = queue.untried(s)
    counts["untracked"] = plan.untracked
    summary: dict[str, Any] = {k: counts.get(k, 0) for k in SUMMARY_KEYS}
    summary["problems"] = plan.problems + notes
    left = done.outstanding
    summary["outstanding"] = {
        "failed": left.failed,
        "waiting": left.waiting,
        "examples": left.examples,
    }
    incomplete = (
        summary["failed"]
        or summary["retrying"]
        or summary["not_tried"]
        or left.failed
        or left.waiting
    )
    summary["outcome"] = (
        "interrupted" if stop.is_set() else "incomplete" if incomplete else "ok"
    )
    summary["files"] = [_file(r.path, r.action, r.error, r.moved_from) for r in results]
    summary["files"] += [_file(p, Outcome.PRUNED) for p in done.pruned]
    summary["enrichment"] = enrichment_status(ws.db)
    ws.db.record_sync_result({k: v for k, v in summary.items() if k != "files"})
    return summary


def _dry_run(
    state: State,
    force: bool,
    allow_mass_missing: bool,
    as_json: bool,
    skip_enrichment: bool | None,
    prune_older: float | None,
    count_tokens: bool,
) -> None:
    ws = open_workspace(
        state.config(), readonly=True, with_store=False, skip_enrichment=skip_enrichment or None
    )
    try:
        with for_terminal(as_json, state.quiet) as bar:
            bar.phase("looking (dry run)")
            counts, items, plan = ws.engine.dry_run(
                force=force, allow_mass_missing=allow_mass_missing, prune_older=prune_older
            )
            uploads = [i.path for i in items if i.action in (Outcome.NEW, Outcome.MODIFIED)]
            assert ws.library.enricher is not None
            cost = estimate(
                ws.library.enricher,
                ws.config.enrichment,
                ws.library.root,
                uploads,
                count=count_tokens,
            )
    finally:
        ws.close()
    # The same shape as a sync's summary (one JSON contract), plus `dry_run`.
    data: dict[str, Any] = {k: counts.get(k, 0) for k in SUMMARY_KEYS}
    data["dry_run"] = True
    data["outcome"] = "dry run"
    data["problems"] = plan.problems
    data["files"] = [_file(i.path, i.action, i.error, i.moved_from) for i in items]
    data["cost"] = cost.as_dict()
    keys = ["new", "modified", "moved", "missing", "restored", "unchanged", "hashed", "failed"]
    if prune_older is not None:
        keys.append("pruned")
    lines = ["dry run (nothing changed): " + summary_line(counts, [*keys, "untracked"])]
    lines += [
        f"  enrichment: {cost.files_to_enrich} file(s), {cost.enrichment_input_tokens} input + "
        f"~{cost.enrichment_output_tokens} output tokens, ~${cost.enrichment_cost:.4f}",
        f"  indexing:   {cost.files_to_index} file(s), ~{cost.indexing_tokens} tokens, "
        f"~${cost.indexing_cost:.4f}"
        + (f" ({cost.not_estimated} without text, not estimated)" if cost.not_estimated else ""),
        f"  tokens by:  {cost.counted_by}",
    ]
    lines += _details(data, state.verbose)
    emit(data, as_json, "\n".join(lines))


def _file(
    path: str, action: Outcome, error: str | None = None, moved_from: str | None = None
) -> dict[str, Any]:
    """One acted-on file in `--json` (`moved_from`: the old path of a move)."""
    return {"path": path, "action": action, "error": error, "moved_from": moved_from}


def _details(summary: dict[str, Any], verbose: int) -> list[str]:
    """The lines under a summary: notes, the untracked hint, and with -v each file
    (a move as `old → new`, a prune by its path)."""
    lines = [f"  note: {problem}" for problem in summary["problems"]]
    left = summary.get("outstanding") or {}
    if left.get("failed") or left.get("waiting"):
        lines.append(
            f"  not in the store yet: {left['failed']} failed, {left['waiting']} waiting "
            "for a retry or indexing"
        )
        lines += [f"    {example}" for example in left["examples"]]
        if left["failed"]:
            lines.append(
                "  failed files are tried again after [sync] retry_failed_after, on a "
                "settings change, or now with `objlibd sync --retry-failed`"
            )
    if summary["untracked"]:
        lines.append(
            f"  {summary['untracked']} file(s) not tracked (hidden, excluded, too small or "
            "another format): `objlibd why PATH` says why"
        )
    if verbose:
        for f in summary["files"]:
            path = f"{f['moved_from']} → {f['path']}" if f["moved_from"] else f["path"]
            lines.append(f"  {f['action']:10} {path}" + (f"  ({f['error']})" if f["error"] else ""))
    return lines


def _text(summary: dict[str, Any], verbose: int) -> str:
    lines = ["sync " + summary["outcome"] + ": " + summary_line(summary, SUMMARY_KEYS)]
    waiting = summary["enrichment"]
    if waiting["waiting"]:
        lines.append(f"  enrichment: {enrichment_line(waiting)}")
    return "\n".join(lines + _details(summary, verbose))


COMMANDS = [sync]
