"""Benchmarks 4 and 5: drain throughput under latency, API calls per change.

Both run the real GeminiStore (google-genai SDK) against tests/emulator.py.

4. Every request answered after an injected latency; `[store] concurrency` at
   1, 2, 4, 8. The ideal is latency-bound: each file costs the requests the
   log shows per file, one after another, and `c` files are in flight at once,
   so ideal files/s = c / (requests per file x latency).
5. One change of each kind, then `objlibd sync`, and the emulator's request
   log: mutating calls (uploads, deletes), operation polls, reads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import PYTHON, Lib, Metric, Results, check, content, median

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


def bench_drain(
    res: Results, workdir: Path, *, latency: float, levels: list[int], per_level: int, runs: int
) -> None:
    from objlib_daemon.workspace import open_workspace

    name = "4 drain throughput"
    emu = Emulator()
    try:
        lib = _gemini_lib(workdir / "drain", emu)
        counter = 0
        for c in levels:
            lib.store_extra = f"concurrency = {c}\n"
            lib.write_config()
            rates, per_file = [], []
            n = per_level * c
            for r in range(runs):
                for _ in range(n):
                    counter += 1
                    _write(lib, f"c{c}/run{r}/f{counter:06d}.txt", counter)
                with lib.applied_env():
                    ws = open_workspace(lib.config())
                try:
                    plan = ws.engine.reconcile()
                    assert len(plan.candidates) == n, (len(plan.candidates), n)
                    emu.call("clear")
                    emu.call("latency", seconds=latency)
                    t0 = time.perf_counter()
                    counts = ws.engine.drain(concurrency=c)
                    elapsed = time.perf_counter() - t0
                    emu.call("latency", seconds=0)
                finally:
                    ws.close()
                if counts.get("new") != n:
                    raise AssertionError(f"drain at concurrency {c}: {dict(counts)}")
                reqs = classify(emu.requests())["http"] / n
                rates.append(n / elapsed)
                per_file.append(reqs)
            rate = median(rates)
            rpf = median(per_file)
            ideal = c / (rpf * latency)
            frac = rate / ideal
            res.add(
                Metric(
                    name,
                    f"concurrency {c}: files/s ({n} files x {runs} runs)",
                    rate,
                    "files/s",
                    baseline=ideal,
                    baseline_name="ideal files/s",
                    ratio=frac,
                    target=">= 85% of ideal" if c == 4 else "",
                    met=check(res.quick, frac >= 0.85) if c == 4 else None,
                    note=f"{rpf:.2f} requests/file at {latency * 1000:.0f} ms each",
                )
            )
    finally:
        emu.stop()


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


def run(res: Results, workdir: Path, *, quick: bool) -> None:
    if quick:
        bench_drain(res, workdir, latency=0.02, levels=[1, 2, 4, 8], per_level=3, runs=1)
        bench_api_calls(res, workdir, indexing_delay=0.2, files=8)
    else:
        bench_drain(res, workdir, latency=0.1, levels=[1, 2, 4, 8], per_level=20, runs=3)
        bench_api_calls(res, workdir, indexing_delay=1.0, files=40)
