"""What `objlibd reconcile` does when no daemon answers: the same pass, inline, under the lock.

The daemon's reconcile only enqueues and lets its drain apply; with no daemon
nothing would drain, so here it is reconcile + drain, present paths first and
vanished ones after (a rename is then one move, not a missing mark followed by
a move), like `objlibd sync` without its sweeps.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.state import queue
from objlib_daemon.state.lock import library_lock
from objlib_daemon.workspace import open_workspace


def reconcile_inline(config: Config, *, force: bool = False) -> dict[str, Any]:
    """Reconcile and drain once; raises what the engine raises (volume, safety, lock)."""
    with library_lock(config.state_dir, "reconcile"):
        ws = open_workspace(config)
        try:
            engine = ws.engine
            engine.require_volume()
            started = time.time()
            plan = engine.reconcile(force=force, vanished=False)
            counts: Counter[str] = engine.drain()
            engine.enqueue_vanished(plan)
            counts += engine.drain()
            with ws.db.session() as s:
                pending = queue.depth(s)
        finally:
            ws.close()
    return {
        "ok": True,
        "inline": True,
        "reconcile": {
            "outcome": "ok",
            "force": force,
            "started_at": started,
            "finished_at": time.time(),
            "candidates": len(plan.candidates),
            "vanished": len(plan.vanished),
            "unchanged": plan.unchanged,
            "hashed": plan.hashed,
            "problems": plan.problems[:20],
        },
        "drain": {"counts": {k: v for k, v in counts.items() if v}},
        "queue": {"pending": pending},
    }
