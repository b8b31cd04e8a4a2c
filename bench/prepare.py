"""Build (or reuse) a synced library: tree on disk + state after a real first sync.

A 100,000-file first sync on the local store takes minutes, so the built
library is kept under the work dir with a stamp and reused while the stamp
matches (same generator, sizes, objlibd version). The first sync's time is
recorded in the stamp and reported with the results.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common import TREE_VERSION, Lib, make_tree


def stamp_for(files: int, dirs: int) -> dict[str, Any]:
    return {
        "tree_version": TREE_VERSION,
        "files": files,
        "dirs": dirs,
        "objlibd": metadata.version("objlibd"),
    }


def synced_library(workdir: Path, files: int, dirs: int, *, reuse: bool = True) -> tuple[Lib, dict]:
    """A library of `files` files over `dirs` folders, fully synced to the local store.

    Returns the library and the build info (first-sync seconds, summary).
    """
    base = workdir / f"synced-{files}"
    stamp_path = base / "built.json"
    want = stamp_for(files, dirs)
    if reuse and stamp_path.exists():
        built = json.loads(stamp_path.read_text())
        if {k: built.get(k) for k in want} == want:
            built["reused"] = True
            return Lib(base), built
    if base.exists():
        shutil.rmtree(base)
    lib = Lib(base)
    write_s = make_tree(lib.root, files, dirs)
    lib.init()
    print(f"  building: first sync of {files} files (local store)...", flush=True)
    t0 = time.perf_counter()
    summary = lib.sync_json()
    sync_s = time.perf_counter() - t0
    if summary.get("new") != files:
        raise RuntimeError(f"first sync did not upload every file: {summary}")
    built = want | {
        "write_seconds": round(write_s, 3),
        "first_sync_seconds": round(sync_s, 3),
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": {k: v for k, v in summary.items() if k not in ("files", "problems")},
    }
    stamp_path.write_text(json.dumps(built, indent=1))
    built["reused"] = False
    return lib, built


if __name__ == "__main__":  # python bench/prepare.py WORKDIR FILES DIRS
    lib, info = synced_library(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(info, indent=1))
