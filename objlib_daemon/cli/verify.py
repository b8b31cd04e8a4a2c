"""`objlibd verify [--repair]`: audit the store against the database (sync/verify.py).

Without --repair it only reads (no lock, read-only database), so it can run
next to a daemon. With --repair it takes the library lock like `sync`, fixes
our drift, then drains the queue so re-queued files are uploaded before it
returns: one command leaves the library converged, not merely scheduled.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from objlib_daemon.cli.common import State, emit, summary_line
from objlib_daemon.cli.progress import for_terminal
from objlib_daemon.errors import SOME_FAILED, VolumeUnavailable
from objlib_daemon.state.lock import library_lock
from objlib_daemon.sync.outcome import tally
from objlib_daemon.sync.verify import KINDS, RepairResult, Report, audit, repair
from objlib_daemon.workspace import Workspace, open_workspace

LABELS = {
    "unrecorded": "unrecorded",
    "absent": "absent",
    "failed": "failed",
    "duplicate": "duplicate",
    "pending": "pending",
    "pending_deletion": "pending deletion",
    "foreign": "foreign",
}
DRAIN_KEYS = ["uploaded", "deleted", "failed", "retrying"]


@click.command()
@click.option(
    "--repair", "do_repair", is_flag=True, help="Fix our drift (never foreign documents)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one report object.")
@click.pass_obj
def verify(state: State, do_repair: bool, as_json: bool) -> None:
    """Compare every document in the store with the database.

    Reports documents of ours the database does not know, recorded documents
    missing from the store, documents the store failed to index, paths with
    more than one document, and other libraries' documents (never touched).
    Exit 0 when clean (or fully repaired), 6 when drift remains.
    """
    config = state.config()
    if not do_repair:
        ws = open_workspace(config, readonly=True)
        try:
            with for_terminal(as_json, state.quiet) as bar:
                bar.phase("verifying (listing the store)")
                report = audit(ws.db, ws.store, ws.library)
        finally:
            ws.close()
        emit(_data(report), as_json, _text(report))
        if not report.clean:
            sys.exit(SOME_FAILED)
        return
    with library_lock(config.state_dir, "verify --repair"):
        ws = open_workspace(config)
        try:
            with for_terminal(as_json, state.quiet) as bar:
                bar.phase("verifying (listing the store)")
                report = audit(ws.db, ws.store, ws.library)
            result = repair(ws.db, ws.store, ws.library, report, applier=ws.engine.applier)
            drained, note = _drain(ws) if result.requeued or result.adopted else (None, None)
        finally:
            ws.close()
    emit(_data(report, result, drained, note), as_json, _text(report, result, drained, note))
    unfinished = drained is not None and (drained["failed"] or drained["retrying"])
    if not result.complete or unfinished or note:
        sys.exit(SOME_FAILED)


def _drain(ws: Workspace) -> tuple[dict[str, int] | None, str | None]:
    """Upload what the repair queued (and re-check adopted files) now."""
    try:
        ws.engine.require_volume()
    except VolumeUnavailable as exc:
        return None, f"{exc}; the repaired files are queued for the next sync"
    counts = tally(ws.engine.drain())
    return {k: counts.get(k, 0) for k in DRAIN_KEYS}, None


def _data(
    report: Report,
    result: RepairResult | None = None,
    drained: dict[str, int] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    data = report.as_dict()
    data["repair"] = None
    if result is not None:
        data["repair"] = result.as_dict() | {"drain": drained, "note": note}
    return data


def _text(
    report: Report,
    result: RepairResult | None = None,
    drained: dict[str, int] | None = None,
    note: str | None = None,
) -> str:
    lines = [
        f"store: {report.documents} documents ({report.ours} ours, "
        f"{len(report.of('foreign'))} foreign); database: {report.recorded} recorded"
    ]
    for f in report.findings:
        what = f"  {LABELS[f.kind]:17} {f.path or '(no path)'}"
        lines.append(f"{what}\n  {'':17} {f.document or '-'}: {f.detail}")
    counts = report.counts()
    lines.append(
        ("clean" if report.clean else "drift found")
        + ": "
        + ", ".join(f"{LABELS[k]} {counts[k]}" for k in KINDS)
    )
    if result is None:
        if not report.clean:
            lines.append("run `objlibd verify --repair` to fix it (foreign documents stay)")
        return "\n".join(lines)
    lines.append(
        f"repaired: adopted {len(result.adopted)}, deleted {len(result.deleted)}, "
        f"re-queued {len(result.requeued)}"
    )
    for document in result.not_deleted:
        lines.append(f"  not deleted yet (kept as an orphan, retried by sync): {document}")
    for item in result.skipped:
        lines.append(f"  skipped (the database changed during the audit): {item}")
    if drained is not None:
        lines.append("sync of repaired files: " + summary_line(drained, DRAIN_KEYS))
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)


COMMANDS = [verify]
