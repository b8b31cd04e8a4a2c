"""`objlibd run`, `reconcile`, `pause`, `resume`, `queue`: the daemon and talking to it."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from objlib_daemon.cli.common import State, emit, json_option
from objlib_daemon.cli.progress import for_terminal
from objlib_daemon.daemon.control import NotRunning, request
from objlib_daemon.errors import SAFETY_ABORT, VOLUME_UNAVAILABLE
from objlib_daemon.state import queue as queue_ops
from objlib_daemon.state.db import Database


@click.command()
@click.pass_obj
def run(state: State) -> None:
    """Run the daemon in the foreground (what systemd/launchd start).

    Watches the library, keeps the store in sync, survives the drive coming
    and going. Stop with SIGTERM or Ctrl-C; SIGHUP reloads the config.
    """
    from objlib_daemon.daemon.lifecycle import run_daemon

    sys.exit(run_daemon(state.config_path, state.config()))


def _reconcile_text(answer: dict[str, Any]) -> str:
    rec = answer.get("reconcile") or {}
    if not rec and answer.get("error"):  # refused before any pass (paused): just why
        return f"error: {answer['error']}"
    if answer.get("queued"):
        return "reconcile requested" + (" (force)" if answer.get("force") else "")
    lines = [
        f"reconcile {rec.get('outcome', '?')}"
        + (" (inline: no daemon running)" if answer.get("inline") else "")
        + (
            f": {rec.get('candidates', 0)} to look at, {rec.get('vanished', 0)} vanished, "
            f"{rec.get('unchanged', 0)} unchanged"
            if rec.get("outcome") == "ok"
            else ""
        )
    ]
    if answer.get("error"):
        lines.append(f"error: {answer['error']}")
    counts = (answer.get("drain") or {}).get("counts") or {}
    if counts:
        lines.append("applied: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    pending = (answer.get("queue") or {}).get("pending")
    if pending:
        lines.append(f"still queued: {pending} (retrying or settling; see `objlibd queue`)")
    for problem in rec.get("problems") or []:
        lines.append(f"  note: {problem}")
    return "\n".join(lines)


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="Hash everything (no mtime shortcut); re-upload where content or enrichment differ.",
)
@click.option(
    "--allow-mass-missing",
    is_flag=True,
    help="Let this pass mark more files missing than the guard allows "
    "(max_missing_count / max_missing_fraction): they were really deleted.",
)
@click.option("--wait", is_flag=True, help="Return after the pass and its changes are applied.")
@json_option
@click.pass_obj
def reconcile(
    state: State, force: bool, allow_mass_missing: bool, wait: bool, as_json: bool
) -> None:
    """Rescan the library now (asks the running daemon; runs inline when none runs)."""
    config = state.config()
    message = {
        "cmd": "reconcile",
        "force": force,
        "allow_mass_missing": allow_mass_missing,
        "wait": wait,
    }
    # A waited-for pass can take minutes (it waits for the whole queue): show time passing.
    with for_terminal(as_json or not wait, state.quiet) as bar:
        bar.phase("reconciling" + (" (force)" if force else ""))
        answer = request(config, message, timeout=None if wait else 30)
        if answer is None:
            from objlib_daemon.daemon.oneshot import reconcile_inline

            answer = reconcile_inline(config, force=force, allow_mass_missing=allow_mass_missing)
    emit(answer, as_json, _reconcile_text(answer))
    if not answer.get("ok"):
        outcome = (answer.get("reconcile") or {}).get("outcome")
        sys.exit(
            VOLUME_UNAVAILABLE
            if outcome == "volume unavailable"
            else SAFETY_ABORT
            if outcome == "aborted"
            else 1
        )


def _ask(state: State, cmd: str) -> dict[str, Any]:
    answer = request(state.config(), {"cmd": cmd})
    if answer is None:
        raise NotRunning("no objlibd daemon is running for this library (start it: `objlibd run`)")
    return answer


@click.command()
@json_option
@click.pass_obj
def pause(state: State, as_json: bool) -> None:
    """Stop applying changes (after the file in flight); events are still queued."""
    answer = _ask(state, "pause")
    emit(answer, as_json, f"daemon {answer.get('state', '?')}")


@click.command()
@json_option
@click.pass_obj
def resume(state: State, as_json: bool) -> None:
    """Apply queued changes again."""
    answer = _ask(state, "resume")
    emit(answer, as_json, f"daemon {answer.get('state', '?')}")


@click.command("queue")
@json_option
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1))
@click.pass_obj
def queue_cmd(state: State, as_json: bool, limit: int) -> None:
    """Pending changes: path, reason, age, attempts, next attempt, last error."""
    db = Database(state.config().database_path, readonly=True)
    try:
        with db.session() as s:
            rows = queue_ops.entries(s)
    finally:
        db.close()
    now = time.time()
    items = [
        {
            "path": r.path,
            "reason": r.reason,
            "state": r.state,
            "first_seen": r.first_seen,
            "age": round(now - r.first_seen, 1),
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at or None,
            "last_error": r.last_error,
        }
        for r in rows
    ]
    data = {"pending": len(items), "changes": items[:limit]}
    lines = [f"{len(items)} pending change(s)"]
    for item in items[:limit]:
        due = item["next_attempt_at"]
        nxt = "now" if not due or due <= now else f"in {due - now:.0f}s"
        line = (
            f"  {item['path']}  [{item['reason']}, {item['state']}, age {_age(item['age'])}, "
            f"attempts {item['attempts']}, next {nxt}]"
        )
        if item["last_error"]:
            label = "waiting" if not item["attempts"] else "last error"
            line += f"\n      {label}: {item['last_error']}"
        lines.append(line)
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (--limit)")
    emit(data, as_json, "\n".join(lines))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


COMMANDS = [run, reconcile, pause, resume, queue_cmd]
