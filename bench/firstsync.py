"""First sync on the local store (issue 11: ≥ 1,000 files/s), repeatable.

The tree is written once under WORKDIR and reused; each run starts from a
fresh state dir (`objlibd init`) and times `objlibd sync --json` as a
process, so runs before and after a change measure the same library. The
full benchmark 1 build (bench/prepare.py) takes minutes at 100k files; this
is the quick loop for a 10k-20k library.

    python bench/firstsync.py WORKDIR FILES [RUNS]
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from common import Lib, make_tree


def first_sync(workdir: Path, files: int) -> tuple[float, float, dict]:
    """One first sync of the cached `files`-file tree from a fresh state:
    (seconds, CPU seconds of the sync process, summary)."""
    lib = Lib(workdir / f"firstsync-{files}")
    marker = lib.base / "tree.json"
    if not marker.exists():
        make_tree(lib.root, files, max(1, files // 250))
        marker.write_text(json.dumps({"files": files}))
    for stale in (lib.state_dir, lib.runtime_dir):
        shutil.rmtree(stale, ignore_errors=True)
    lib.init()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    summary = lib.sync_json()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if summary.get("new") != files:
        raise RuntimeError(f"first sync did not upload every file: {summary}")
    return seconds, cpu, summary


if __name__ == "__main__":
    work, count = Path(sys.argv[1]), int(sys.argv[2])
    for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1):
        secs, cpu, _summary = first_sync(work, count)
        print(
            f"{count} files: {secs:.1f} s ({cpu:.1f} s CPU), {count / secs:.0f} files/s", flush=True
        )
