"""Benchmarks 1 and 2: the warm reconcile (nothing changed) and forced hashing.

1. `Engine.reconcile()` over a synced library with nothing changed, in a fresh
   interpreter (so its peak RSS is its own), against
   `find ROOT -type f -printf '%s %T@ %p\\n'`. The reconcile includes loading
   the `files` rows. Also shown: `objlibd sync` end to end (process start,
   imports, store open, reconcile, empty drain).
2. `Engine.reconcile(force=True)` (what `objlibd sync --force` and
   `objlibd reconcile --force` run first: every file hashed, only differences
   queued), `objlibd sync --force` end to end, and the applier's `read_file` path against
   `find ROOT -type f -print0 | xargs -0 sha256sum`; one large file through
   `hash_file` and `read_file` against a single-core `hashlib.file_digest`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from pathlib import Path

from common import Lib, Metric, Results, check, child, median, run_shell
from prepare import synced_library


def _find_stat(root: Path) -> float:
    return run_shell(f"find {shlex.quote(str(root))} -type f -printf '%s %T@ %p\\n'")


def _sha256sum(root: Path, parallel: int = 1) -> float:
    p = f"-P{parallel} -n2000 " if parallel > 1 else ""
    return run_shell(f"find {shlex.quote(str(root))} -type f -print0 | xargs -0 {p}sha256sum")


def bench_warm_reconcile(res: Results, lib: Lib, files: int, runs: int) -> None:
    name = "1 warm reconcile"
    env = lib.env
    _find_stat(lib.root)
    child("reconcile", env=env)  # warm the page cache and the DB file
    finds: list[float] = []
    recs: list[dict] = []
    for _ in range(runs):
        finds.append(_find_stat(lib.root))
        recs.append(child("reconcile", env=env))
    f = median(finds)
    r = median([x["seconds"] for x in recs])
    rss = max(x["peak_rss_mb"] for x in recs)
    hashed = max(x["hashed"] for x in recs)
    cand = max(x["candidates"] + x["vanished"] for x in recs)
    res.add(Metric(name, "find -printf (baseline)", f, "s"))
    res.add(
        Metric(
            name,
            f"Engine.reconcile(), {files:,} files, nothing changed",
            r,
            "s",
            baseline=f,
            baseline_name="find -printf",
            ratio=r / f,
            target="<= 2.5x find",
            met=check(res.quick, r / f <= 2.5),
        )
    )
    res.add(
        Metric(
            name,
            "peak RSS of the reconciling process",
            rss,
            "MB",
            target="<= 150 MB",
            met=check(res.quick, rss <= 150),
            note=f"{median([x['rss_before_mb'] for x in recs]):.0f} MB before the reconcile "
            "(interpreter, imports, open DB)",
        )
    )
    res.add(
        Metric(
            name,
            "files hashed / queued",
            hashed,
            "",
            target="0 hashed, 0 queued",
            met=hashed == 0 and cand == 0,
            correctness=True,
        )
    )
    breakdown = child("scan", env=env)
    res.add(
        Metric(
            name,
            "breakdown, one run: scan() alone",
            breakdown["scan_s"],
            "s",
            note=f"row load alone {breakdown['rows_s']:.3f} s here, "
            f"{breakdown['helper_rows_s']:.3f} s by the helper process (which the reconcile "
            f"overlaps with the walk); scan_plan {breakdown['scan_plan_s']:.3f} s",
        )
    )
    syncs: list[float] = []
    summaries = []
    for _ in range(max(1, runs // 2 + 1)):
        t0 = time.perf_counter()
        summaries.append(lib.sync_json())
        syncs.append(time.perf_counter() - t0)
    s = median(syncs)
    res.add(
        Metric(
            name,
            "`objlibd sync` end to end, nothing changed",
            s,
            "s",
            baseline=f,
            baseline_name="find -printf",
            ratio=s / f,
            target="0 hashed, 0 uploaded",
            met=all(x["hashed"] == 0 and x["uploaded"] == 0 for x in summaries),
            correctness=True,
            note="includes interpreter start and imports "
            f"({median([x['import_s'] for x in recs]):.2f} s of imports); "
            f"hashed {max(x['hashed'] for x in summaries)}, "
            f"uploaded {max(x['uploaded'] for x in summaries)}",
        )
    )


def bench_forced_hashing(res: Results, lib: Lib, files: int, runs: int) -> None:
    name = "2 forced hashing"
    env = lib.env
    if res.quick:  # small trees are hashed serially; make them go through the pool too
        env = env | {"BENCH_PARALLEL_MIN": "1"}
    _sha256sum(lib.root)
    child("reconcile-force", env=env)
    base: list[float] = []
    base2: list[float] = []
    forced: list[dict] = []
    for _ in range(runs):
        base.append(_sha256sum(lib.root))
        base2.append(_sha256sum(lib.root, parallel=2))
        forced.append(child("reconcile-force", env=env))
    b = median(base)
    d = median([x["seconds"] for x in forced])
    hashed = min(x["counts"].get("hashed", 0) for x in forced)
    res.add(Metric(name, "find | xargs sha256sum (baseline)", b, "s"))
    res.add(
        Metric(
            name,
            "find | xargs -P2 sha256sum (both cores, for reference)",
            median(base2),
            "s",
            baseline=b,
            baseline_name="sha256sum",
            ratio=median(base2) / b,
        )
    )
    res.add(
        Metric(
            name,
            f"Engine.reconcile(force=True), {files:,} files all hashed",
            d,
            "s",
            baseline=b,
            baseline_name="sha256sum",
            ratio=d / b,
            target="<= 1.0x",
            met=check(res.quick, d / b <= 1.0),
            note=f"hashed {hashed}; peak RSS {max(x['peak_rss_mb'] for x in forced):.0f} MB",
        )
    )
    counts = [x["counts"] for x in forced]
    res.add(
        Metric(
            name,
            "forced reconcile: every file hashed, none found changed, none queued",
            hashed,
            "files",
            target=f"{files} hashed, {files} unchanged, 0 queued",
            met=all(c == {"hashed": files, "unchanged": files} for c in counts)
            and all(x["candidates"] == 0 for x in forced),
            correctness=True,
            note="" if len({str(c) for c in counts}) == 1 else f"counts {counts}",
        )
    )
    t0 = time.perf_counter()
    summary = lib.sync_json("--force")
    s = time.perf_counter() - t0
    res.add(
        Metric(
            name,
            "`objlibd sync --force` end to end, nothing changed",
            s,
            "s",
            baseline=b,
            baseline_name="sha256sum",
            ratio=s / b,
            target=f"{files} hashed, 0 uploaded",
            met=summary["hashed"] == files and summary["uploaded"] == 0,
            correctness=True,
            note="includes interpreter start, imports, the store's open and the empty drain",
        )
    )
    for threads in (1, 2):
        reads = [child("read-files", str(threads), env=env)["seconds"] for _ in range(runs)]
        r = median(reads)
        res.add(
            Metric(
                name,
                f"applier read_file over every file, {threads} thread(s)",
                r,
                "s",
                baseline=b,
                baseline_name="sha256sum",
                ratio=r / b,
                note="the drain's per-file read+hash (drain concurrency = threads)",
            )
        )


def bench_big_file(res: Results, workdir: Path, size: int, read_size: int, runs: int) -> None:
    """hash_file on `size` bytes and read_file on `read_size` bytes vs hashlib.file_digest."""
    from objlib_daemon.library.files import hash_file, read_file

    name = "2 forced hashing"
    big = workdir / f"big-{size}.bin"
    if not big.exists() or big.stat().st_size != size:
        chunk = os.urandom(1 << 20)
        with open(big, "wb") as fh:
            for _ in range(size >> 20):
                fh.write(chunk)
    small = workdir / f"big-{read_size}.bin"
    if not small.exists() or small.stat().st_size != read_size:
        with open(big, "rb") as src, open(small, "wb") as dst:
            dst.write(src.read(read_size))

    def digest(p: Path) -> float:
        t0 = time.perf_counter()
        with open(p, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
        return time.perf_counter() - t0

    def timed(fn, p: Path) -> float:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        fn(p)
        return time.perf_counter() - t0

    digest(big)  # warm the page cache
    base, ours, base_r, ours_r = [], [], [], []
    for _ in range(runs):
        base.append(digest(big))
        ours.append(timed(hash_file, big))
        base_r.append(digest(small))
        ours_r.append(timed(read_file, small))
    b, o = median(base), median(ours)
    mib = size / (1 << 20)
    res.add(
        Metric(
            name,
            f"{mib:.0f} MiB: hashlib.file_digest single core (baseline)",
            mib / b,
            "MiB/s",
        )
    )
    res.add(
        Metric(
            name,
            f"{mib:.0f} MiB: engine hash_file",
            mib / o,
            "MiB/s",
            baseline=mib / b,
            baseline_name="file_digest MiB/s",
            ratio=b / o,
            target=">= 0.8x",
            met=check(res.quick, b / o >= 0.8),
        )
    )
    br, orr = median(base_r), median(ours_r)
    mib_r = read_size / (1 << 20)
    res.add(
        Metric(
            name,
            f"{mib_r:.0f} MiB (the store's size limit): applier read_file",
            mib_r / orr,
            "MiB/s",
            baseline=mib_r / br,
            baseline_name="file_digest MiB/s",
            ratio=br / orr,
            note="reads the bytes once, hashes and uploads those same bytes: it must hold "
            "the file, file_digest streams it (no target: docs/benchmarks.md)",
        )
    )


def run(res: Results, workdir: Path, *, quick: bool, reuse: bool) -> None:
    files, dirs = (300, 10) if quick else (100_000, 320)
    runs = 3 if quick else 7
    lib, built = synced_library(workdir, files, dirs, reuse=reuse)
    res.extra["first_sync"] = built
    res.add(
        Metric(
            "1 warm reconcile",
            f"first sync of {files:,} files on the local store (build step)",
            built["first_sync_seconds"],
            "s",
            note=("reused from " + built["built_at"]) if built.get("reused") else "this run",
        )
    )
    bench_warm_reconcile(res, lib, files, runs)
    bench_forced_hashing(res, lib, files, runs)
    big = (8 << 20) if quick else (1 << 30)
    read = (4 << 20) if quick else 100_000_000
    bench_big_file(res, workdir, big, read, runs)
