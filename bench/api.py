"""Benchmarks 4 and 5: drain throughput under latency, API calls per change.

Both run the real GeminiStore (google-genai SDK) against tests/emulator.py.

4. Every request answered after an injected latency (150 ms), imports indexed
   after 5 s; `[store] concurrency` at 2, 4, 8 (issue 11). The ideal is
   latency-bound: a worker holds its slot only for the upload's own requests
   (start + byte requests, from the log; polls run beside it), and `c`
   uploads are in flight at once, so ideal files/s = c / (requests per
   upload x latency).
5. One change of each kind, then `objlibd sync`, and the emulator's request
   log: mutating calls (uploads, deletes), operation polls, reads.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import PYTHON, Lib, Metric, Results, check, content

UPLOAD_PHASES = ("start", "chunk", "finalize")
EMUSERVER = Path(__file__).resolve().parent / "emuserver.py"


class Emulator:
    """tests/emulator.py in a child process (bench/emuserver.py)."""

    def __init__(self, indexing_delay: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(EMUSERVER), str(indexing_delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self._read()["url"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"emulator exited {self.proc.wait()}")
        return json.loads(line)

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def create_store(self, name: str) -> str:
        return self.call("create_store", name=name)["store"]

    def requests(self) -> list[tuple[str, str, str | None]]:
        return [tuple(r) for r in self.call("log")["requests"]]  # type: ignore[misc]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def classify(records: list[tuple[str, str, str | None]]) -> Counter[str]:
    """Requests by kind: upload (one per upload: its `start`), upload_bytes, delete, poll, read."""
    out: Counter[str] = Counter()
    for method, path, phase in records:
        out["http"] += 1
        if phase == "start":
            out["upload"] += 1
        elif phase in UPLOAD_PHASES:
            out["upload_bytes"] += 1
        elif method == "DELETE":
            out["delete"] += 1
        elif method == "GET" and re.search(r"/operations/", path):
            out["poll"] += 1
        elif method == "GET":
            out["read"] += 1
        else:
            out["other"] += 1
    out["mutating"] = out["upload"] + out["delete"]
    return out


def _gemini_lib(base: Path, emu: Emulator, extra: str = "") -> Lib:
    if base.exists():  # a previous run's: bound to a store of a previous emulator
        shutil.rmtree(base)
    store = emu.create_store("objlibd-bench")
    lib = Lib(base, backend="gemini", store=store, base_url=emu.url, extra=extra)
    lib.init()
    return lib


def _write(lib: Lib, rel: str, i: int, salt: int = 0) -> Path:
    path = lib.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content(i, salt))
    return path


# --- 4. drain throughput ---------------------------------------------------------------------


def upload_stage_end(timed: list[list[Any]], latency: float) -> float:
    """When the last upload's last request was answered (emulator clock = time.time())."""
    return max(t for t, _method, _path, phase in timed if phase in UPLOAD_PHASES) + latency


def bench_drain(
    res: Results,
    workdir: Path,
    *,
    latency: float,
    indexing: float,
    levels: list[int],
    per_level: int,
    min_seconds: float,
    targets: tuple[int, ...] = (2, 4, 8),
) -> None:
    """Files/s through `Engine.drain(concurrency=c)` at a fixed latency and indexing time.

    Throughput is the upload stage's: files / (drain start .. last upload
    answered). The indexing tail after it (one indexing time plus a poll) is
    a batch's fixed cost, not a rate, and is reported apart with the
    end-to-end figure; a tracker that fell behind would show there as a tail
    much longer than the indexing time. Each level gets at least
    `min_seconds` of uploads at the ideal rate so the pacer's slow start and
    the tail do not dominate.
    """
    from objlib_daemon.workspace import open_workspace

    name = "4 drain throughput"
    emu = Emulator(indexing_delay=indexing)
    polls = uploads = 0
    try:
        lib = _gemini_lib(workdir / "drain", emu)
        counter = 0
        for c in levels:
            lib.store_extra = f"concurrency = {c}\n"
            lib.write_config()
            # Upload requests per file: 2 (start, finalize) for the small files here.
            n = max(per_level * c, math.ceil(min_seconds * c / (2 * latency)))
            for _ in range(n):
                counter += 1
                _write(lib, f"c{c}/f{counter:06d}.txt", counter)
            with lib.applied_env():
                ws = open_workspace(lib.config())
            try:
                plan = ws.engine.reconcile()
                assert len(plan.candidates) == n, (len(plan.candidates), n)
                emu.call("clear")
                emu.call("latency", seconds=latency)
                started = time.time()
                t0 = time.perf_counter()
                counts = ws.engine.drain(concurrency=c)
                elapsed = time.perf_counter() - t0
                emu.call("latency", seconds=0)
            finally:
                ws.close()
            if counts.get("new") != n:
                raise AssertionError(f"drain at concurrency {c}: {dict(counts)}")
            timed = emu.call("log", timed=True)["requests"]
            kinds = classify([(m, p, ph) for _t, m, p, ph in timed])
            rpu = (kinds["upload"] + kinds["upload_bytes"]) / kinds["upload"]
            polls += kinds["poll"]
            uploads += kinds["upload"]
            stage = upload_stage_end(timed, latency) - started
            rate = n / stage
            ideal = c / (rpu * latency)
            frac = rate / ideal
            targeted = c in targets
            res.add(
                Metric(
                    name,
                    f"concurrency {c}: files/s through the upload stage ({n} files)",
                    rate,
                    "files/s",
                    baseline=ideal,
                    baseline_name="ideal files/s",
                    ratio=frac,
                    target=">= 80% of ideal" if targeted else "",
                    met=check(res.quick, frac >= 0.8) if targeted else None,
                    note=f"{rpu:.2f} upload requests/file at {latency * 1000:.0f} ms, "
                    f"{indexing:g} s indexing; uploads done in {stage:.1f} s, all indexed "
                    f"in {elapsed:.1f} s ({n / elapsed:.2f} files/s end to end, tail "
                    f"{elapsed - stage:.1f} s); polls {kinds['poll'] / n:.2f}/upload",
                )
            )
    finally:
        emu.stop()
    per = polls / uploads
    res.add(
        Metric(
            name,
            f"operation polls per upload, all levels ({uploads} uploads)",
            per,
            "polls",
            target="<= 3",
            met=check(res.quick, per <= 3),
            note=f"{indexing:g} s indexing; the tracker's learned estimate of it",
        )
    )


# --- 5. API calls per change -----------------------------------------------------------------


def bench_api_calls(res: Results, workdir: Path, *, indexing_delay: float, files: int) -> None:
    name = "5 API calls per change"
    emu = Emulator(indexing_delay=indexing_delay)
    try:
        lib = _gemini_lib(workdir / "calls", emu)
        for i in range(files):
            _write(lib, f"base/f{i:04d}.txt", i)
        lib.sync_inproc()  # the starting point: everything indexed

        def change(what: str, fn: Any, k: int) -> None:
            fn()
            emu.call("clear")
            summary = lib.sync_inproc()
            got = classify(emu.requests())
            per = {key: got[key] / k for key in ("mutating", "upload", "delete", "poll", "read")}
            expected = {"new": 1, "modified": 2, "rename": 2, "delete": 0, "no change": 0}[what]
            polls = got["poll"] / got["upload"] if got["upload"] else 0.0
            res.add(
                Metric(
                    name,
                    f"{what}: mutating calls per change ({k} changes in one sync)",
                    per["mutating"],
                    "calls",
                    target=f"== {expected}",
                    met=abs(per["mutating"] - expected) < 1e-9,
                    correctness=True,
                    note=f"uploads {per['upload']:g}, deletes {per['delete']:g}, "
                    f"polls {per['poll']:g} ({polls:.2f}/upload), reads {per['read']:g}; "
                    f"{got['http']} HTTP requests in all; sync said "
                    + ", ".join(
                        f"{key} {summary[key]}"
                        for key in ("new", "modified", "moved", "missing", "deleted")
                        if summary.get(key)
                    ),
                )
            )

        k = max(1, min(10, files // 4))
        change("new", lambda: [_write(lib, f"new/n{i}.txt", 10_000 + i) for i in range(k)], k)
        change(
            "modified",
            lambda: [_write(lib, f"base/f{i:04d}.txt", i, salt=1) for i in range(k)],
            k,
        )

        def rename() -> None:
            for i in range(k, 2 * k):
                src = lib.root / f"base/f{i:04d}.txt"
                dst = lib.root / f"renamed/f{i:04d}.txt"
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dst)

        change("rename", rename, k)

        def remove() -> None:
            for i in range(2 * k, 3 * k):
                (lib.root / f"base/f{i:04d}.txt").unlink()

        change("delete", remove, k)
        change("no change", lambda: None, 1)
    finally:
        emu.stop()


def run(res: Results, workdir: Path, *, quick: bool, wanted: set[str] | None = None) -> None:
    """Benchmarks 4 and 5, or those of them in `wanted`."""
    if wanted is None or "4" in wanted:
        if quick:
            bench_drain(
                res, workdir, latency=0.02, indexing=0.3, levels=[2, 4], per_level=3, min_seconds=0
            )
        else:
            bench_drain(
                res,
                workdir,
                latency=0.15,
                indexing=5.0,
                levels=[2, 4, 8],
                per_level=15,
                min_seconds=20,
            )
    if wanted is None or "5" in wanted:
        bench_api_calls(
            res, workdir, indexing_delay=0.2 if quick else 1.0, files=8 if quick else 40
        )
