"""Benchmark 9: adaptive pacing finds a rate limit the service does not publish.

tests/emulator.py runs in its own process (bench/emuserver.py), answering 429
RESOURCE_EXHAUSTED with a RetryInfo above R requests/s, every request delayed
by a fixed latency. The real GeminiStore (google-genai SDK) is driven through
its own Pacer (the AIMD limiter, no ceiling) by many threads, each calling
`get` in a loop, so the demand (threads / latency) is well above R. From the
emulator's log: the request rate it accepted, as a fraction of R, and the
share of requests it answered 429, both after a warm-up that covers the
limiter's slow start from its 120/min start.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from api import Emulator
from common import Metric, Results, check

from objlib_daemon.config import StoreConfig
from objlib_daemon.connect import remote_settings
from objlib_daemon.stores.base import StoreError
from objlib_daemon.stores.gemini import GeminiStore

NAME = "9 adaptive pacing"


def _drive(store: GeminiStore, document: str, threads: int, seconds: float) -> tuple[int, int]:
    """`threads` threads calling get() for `seconds`: (calls answered, calls that failed)."""
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    counts = [0, 0]

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                store.get(document)
                i = 0
            except StoreError:  # retries exhausted: the pacing failed this call
                i = 1
            with lock:
                counts[i] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts[0], counts[1]


def bench_pacing(
    res: Results, *, rate: float, latency: float, threads: int, seconds: float, warmup: float
) -> None:
    emu = Emulator()
    try:
        store = GeminiStore(
            "test-key",
            emu.create_store("objlibd-bench-pacing"),
            remote_settings(StoreConfig(base_url=emu.url)),
        )
        up = store.upload(
            io.BytesIO(b"paced " * 400), display_name="p.txt", metadata={}, mime_type="text/plain"
        )
        done = store.poll(up)  # the emulator indexes at once: done in the upload's answer
        assert done is not None, "the bench emulator should index at once"
        document = done.name
        emu.call("clear")
        emu.call("latency", seconds=latency)
        emu.call("throttle", rate=rate)
        started = time.time()
        answered, failed = _drive(store, document, threads, seconds)
        emu.call("throttle", rate=0)
        emu.call("latency", seconds=0)
        answers = emu.call("answers")["answers"]
        store.close()
    finally:
        emu.stop()
    window = [(t, status) for t, status in answers if t >= started + warmup]
    span = max(t for t, _ in window) - (started + warmup)
    accepted = sum(1 for _, status in window if status == 200)
    refused = sum(1 for _, status in window if status == 429)
    sustained = accepted / span
    share = refused / len(window)
    # The service's bucket holds one second's worth, so a window of `span`
    # seconds can see up to R x (span + 1) accepted: that is 100 % of R.
    most = (span + 1) / span
    note = (
        f"R = {rate:g}/s, {latency * 1000:.0f} ms per request, {threads} threads for "
        f"{seconds:g} s (first {warmup:g} s not counted); {accepted} accepted, {refused} "
        f"answered 429 in the window; {answered} get() calls answered, {failed} failed"
    )
    res.add(
        Metric(
            NAME,
            "sustained accepted request rate, fraction of the service's limit R",
            sustained,
            "requests/s",
            baseline=rate,
            baseline_name="R",
            ratio=sustained / rate,
            target="80-100% of R",
            met=check(res.quick, 0.8 <= sustained / rate <= most),
            note=note,
        )
    )
    res.add(
        Metric(
            NAME,
            "share of requests answered 429",
            share * 100,
            "%",
            target="< 5%",
            met=check(res.quick, share < 0.05),
        )
    )
    res.add(
        Metric(
            NAME,
            "get() calls that failed after the pacer's retries",
            failed,
            "calls",
            target="== 0",
            met=failed == 0,
            correctness=True,
        )
    )


def run(res: Results, workdir: Path, *, quick: bool) -> None:
    del workdir  # nothing on disk: the store is remote
    if quick:
        bench_pacing(res, rate=10, latency=0.02, threads=4, seconds=4, warmup=2)
    else:
        bench_pacing(res, rate=20, latency=0.15, threads=8, seconds=40, warmup=10)
