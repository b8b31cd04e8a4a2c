"""What the control socket answers: the live status payload and the commands.

`status` is a superset of the database's view (sync/status.py) plus a
`daemon` section only the running process knows. `reconcile {wait}` blocks
until a reconcile pass that started after the request has finished *and* a
drain that started after that pass has finished, so the caller sees the
changes applied, not merely queued.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from objlib_daemon.state import queue
from objlib_daemon.state.models import PendingChange, QueueState
from objlib_daemon.sync.status import SHOWN, database_status

if TYPE_CHECKING:
    from objlib_daemon.daemon.runner import Daemon


def handle(d: Daemon, message: dict[str, Any]) -> dict[str, Any]:
    cmd = message["cmd"]
    if cmd == "status":
        # `status -v` asks for every failed and waiting row.
        shown = None if message.get("every") else SHOWN
        return {"ok": True, **live_status(d, shown=shown)}
    if cmd == "pause":
        d.pause()
        return {"ok": True, "state": d.state.mode}
    if cmd == "resume":
        d.resume()
        return {"ok": True, "state": d.state.mode}
    if cmd == "reconcile":
        return reconcile_request(
            d,
            bool(message.get("force")),
            bool(message.get("wait")),
            allow_mass_missing=bool(message.get("allow_mass_missing")),
        )
    if cmd == "ping":
        return {"ok": True, "pid": os.getpid()}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def reconcile_request(
    d: Daemon, force: bool, wait: bool, *, allow_mass_missing: bool = False
) -> dict[str, Any]:
    if d.state.paused:
        return {
            "ok": False,
            "state": d.state.mode,
            "error": f"the daemon is paused ({d.state.paused}): `objlibd resume` first",
        }
    ticket = d.kick_reconcile("requested", force=force, allow_mass_missing=allow_mass_missing)
    if not wait:
        return {"ok": True, "queued": True, "force": force}
    d.reconcile_job.wait(ticket)
    result = dict(d.state.pass_record)
    answer: dict[str, Any] = {"ok": result.get("outcome") == "ok", "reconcile": result}
    if result.get("outcome") != "ok":
        answer["error"] = result.get("error") or str(result.get("outcome"))
        return answer
    # The pass enqueued what it found; wait for a drain that started after it.
    drain_ticket = d.kick_drain()
    d.drain_job.wait(drain_ticket)
    answer["drain"] = dict(d.state.last_drain or {})
    answer["state"] = d.state.mode
    if d.ro_db is not None:
        with d.ro_db.session() as s:
            answer["queue"] = {"pending": queue.depth(s), "next_due": queue.next_due(s)}
    return answer


def live_status(d: Daemon, *, shown: int | None = SHOWN) -> dict[str, Any]:
    assert d.ro_db is not None and d.ws is not None
    data = database_status(d.ro_db, shown=shown)
    with d.ro_db.session() as s:
        inflight = list(
            s.scalars(
                select(PendingChange.path)
                .where(PendingChange.state == QueueState.INFLIGHT)
                .limit(50)
            )
        )
    breaker = d.ws.store.health()["breaker"] if d.ws.store is not None else None
    state = d.state
    data["daemon"] = {
        "state": state.mode,
        "pid": os.getpid(),
        "started_at": state.started_at,
        "activity": state.activity(),
        "paused": state.paused,
        "volume": {
            "available": state.volume.available,
            "reason": state.volume.reason,
            "since": d.monitor.since if d.monitor else None,
            "mount_events": d.monitor.mount_events if d.monitor else 0,
        },
        "inflight": inflight,
        "breaker": breaker,
        "last_reconcile": state.last_reconcile,
        "next_reconcile": d.next_reconcile(),
        "last_drain": state.last_drain,
        "last_audit": state.last_audit,
        "totals": dict(state.totals),
        "watcher": {
            "running": bool(d.watcher and d.watcher.running),
            "alive": bool(d.watcher and d.watcher.is_alive()),
            "events": d.watcher.events if d.watcher else 0,
            "handler_errors": d.watcher.errors if d.watcher else 0,
            "overflows": d.overflow.count,
            "watch_limit": state.watch_report,
            "pending_events": d.debouncer.pending() if d.debouncer else 0,
        },
        "last_errors": state.errors.entries(),
        "socket": str(d.control.path) if d.control else None,
    }
    return data
