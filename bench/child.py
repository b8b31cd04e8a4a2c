"""One measured pass in a fresh interpreter, so its peak RSS is its own.

    python bench/child.py reconcile         # Engine.reconcile(), nothing changed
    python bench/child.py reconcile-force   # Engine.reconcile(force=True): hashes everything
    python bench/child.py read-files N      # the applier's read_file over every file, N threads
    python bench/child.py scan              # scan() alone and the row load alone (breakdown)

The library comes from OBJLIBD_CONFIG / OBJLIBD_STATE_DIR as for the CLI.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

t_start = time.perf_counter()

# Only when run: the hash pool's spawned workers import `__main__` again, and in
# `objlibd` that imports only the CLI, not all this.
if __name__ == "__main__":
    from objlib_daemon.config import load, resolve_config_path
    from objlib_daemon.library import files as files_mod
    from objlib_daemon.sync import applier as applier_mod
    from objlib_daemon.sync import reconcile as engine_mod
    from objlib_daemon.workspace import open_workspace

t_imported = time.perf_counter()
HASHED = {"hash_file": 0, "read_file": 0}


def _count(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        HASHED[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def count_hashes() -> None:
    """Count every hash the engine or applier could do in this process, wherever it
    is looked up (the hash pool's workers are other processes)."""
    for mod in (engine_mod, applier_mod, files_mod):
        for name in HASHED:
            if hasattr(mod, name):
                setattr(mod, name, _count(name, getattr(files_mod, name)))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> dict[str, Any]:
    what = sys.argv[1]
    count_hashes()
    if os.environ.get("BENCH_PARALLEL_MIN"):  # the quick mode exercises the hash pool
        files_mod.PARALLEL_MIN = int(os.environ["BENCH_PARALLEL_MIN"])
    config = load(resolve_config_path(None))
    out: dict[str, Any] = {"import_s": t_imported - t_start}
    if what == "reconcile":
        t0 = time.perf_counter()
        ws = open_workspace(config, with_store=False)
        out["open_s"] = time.perf_counter() - t0
        out["rss_before_mb"] = current_rss_mb()
        t0 = time.perf_counter()
        plan = ws.engine.reconcile()
        out["seconds"] = time.perf_counter() - t0
        out["candidates"] = len(plan.candidates)
        out["vanished"] = len(plan.vanished)
        out["unchanged"] = plan.unchanged
        ws.close()
    elif what == "reconcile-force":
        ws = open_workspace(config, with_store=False)
        t0 = time.perf_counter()
        plan = ws.engine.reconcile(force=True)
        out["seconds"] = time.perf_counter() - t0
        out["counts"] = {"hashed": plan.hashed, "unchanged": plan.unchanged}
        out["candidates"] = len(plan.candidates) + len(plan.vanished)
        ws.close()
    elif what == "read-files":
        threads = int(sys.argv[2])
        ws = open_workspace(config, readonly=True, with_store=False)
        root = ws.library.root
        paths = [
            Path(d, n) for d, _dirs, names in os.walk(root) for n in names if not n.startswith(".")
        ]
        ws.close()
        read = applier_mod.read_file
        t0 = time.perf_counter()
        if threads == 1:
            total = sum(read(p).size for p in paths)
        else:
            with ThreadPoolExecutor(threads) as pool:
                total = sum(s.size for s in pool.map(read, paths, chunksize=64))
        out["seconds"] = time.perf_counter() - t0
        out["files"] = len(paths)
        out["bytes"] = total
    elif what == "scan":
        from objlib_daemon.library.scan import scan
        from objlib_daemon.state.background import BackgroundQuery

        ws = open_workspace(config, with_store=False)
        t0 = time.perf_counter()
        result = scan(ws.library.root, ws.library.eligibility)
        out["scan_s"] = time.perf_counter() - t0
        out["entries"] = len(result.entries)
        t0 = time.perf_counter()
        with ws.db.session() as s:
            rows = engine_mod._plan_rows(s)
        out["rows_s"] = time.perf_counter() - t0
        out["rows"] = len(rows)
        t0 = time.perf_counter()
        BackgroundQuery(ws.db.path, engine_mod._PLAN_ROWS).rows()
        out["helper_rows_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ws.engine.reconciler.scan_plan()
        out["scan_plan_s"] = time.perf_counter() - t0
        ws.close()
    else:
        raise SystemExit(f"unknown measurement {what!r}")
    out["hashed"] = sum(HASHED.values())
    out["peak_rss_mb"] = rss_mb()
    out["total_s"] = time.perf_counter() - t_start
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
