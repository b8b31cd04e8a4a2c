"""What `objlibd reconcile` does when no daemon answers: the one pass, inline, under the lock.

The daemon's reconcile only enqueues and lets its drain apply; with no daemon
nothing would drain, so here it is the same pass `objlibd sync` runs
(sync/passes.py), reported in the daemon's reconcile shape.
"""

from __future__ import annotations

import time
from typing import Any

from objlib_daemon.config import Config
from objlib_daemon.state import queue
from objlib_daemon.state.lock import library_lock
from objlib_daemon.workspace import open_workspace


def reconcile_inline(
    config: Config, *, force: bool = False, allow_mass_missing: bool = False
) -> dict[str, Any]:
    """Run the pass once; raises what the engine raises (volume, safety, lock)."""
    with library_lock(config.state_dir, "reconcile"):
        ws = open_workspace(config)
        try:
            started = time.time()
            result = ws.engine.run_pass(force=force, allow_mass_missing=allow_mass_missing)
            with ws.db.session() as s:
                pending = queue.depth(s)
        finally:
            ws.close()
    plan = result.plan
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
        "drain": {"counts": {k: v for k, v in result.counts.items() if v}},
        "queue": {"pending": pending},
    }
