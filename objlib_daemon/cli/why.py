"""`objlibd why PATH`: what objlibd knows and did about one file (sync/why.py)."""

from __future__ import annotations

from typing import Any

import click

from objlib_daemon.cli.common import State, emit, json_option
from objlib_daemon.sync.why import explain
from objlib_daemon.workspace import open_workspace


@click.command()
@click.argument("path")
@json_option
@click.pass_obj
def why(state: State, path: str, as_json: bool) -> None:
    """Why PATH is or is not tracked: eligibility, state, documents, queue, history."""
    ws = open_workspace(state.config(), readonly=True, with_store=False)
    try:
        try:
            data = explain(ws.db, ws.library.root, ws.config.library, path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
    finally:
        ws.close()
    emit(data, as_json, _text(data))


def _text(data: dict[str, Any]) -> str:
    lines = [f"{data['path']}: {data['verdict']}"]
    disk = data["on_disk"]
    lines.append(
        f"  on disk:   {disk['size']} bytes, modified {disk['modified']}"
        if disk
        else "  on disk:   not present"
    )
    row = data["file"]
    if row:
        lines.append(f"  state:     {row['state']}, document {row['document'] or '(none)'}")
        if row["last_error"]:
            lines.append(f"  error:     {row['last_error']}")
    queued = data["queue"]
    if queued:
        lines.append(
            f"  queue:     {queued['reason']}, {queued['state']}, attempts {queued['attempts']}, "
            f"next {queued['next_attempt_at'] or 'now'}"
        )
    for orphan in data["orphans"]:
        lines.append(f"  orphan:    {orphan['document']} ({orphan['reason']}), to delete")
    if data["history"]:
        lines.append("  history:")
        for entry in data["history"]:
            detail = f" {entry['detail']}" if entry["detail"] else ""
            lines.append(f"    {entry['at']}  {entry['action']:9}{detail}")
    return "\n".join(lines)


COMMANDS = [why]
