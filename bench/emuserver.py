"""tests/emulator.py in its own process, driven by JSON lines on stdin/stdout.

The emulator stands in for a remote server: run in the benchmark's process
its handler threads would compete with objlibd's for the GIL and be charged
to objlibd. Commands (one JSON object per line, one answer per line):

    {"op": "create_store", "name": "x"}          -> {"store": "fileSearchStores/..."}
    {"op": "latency", "seconds": 0.1}            -> every request waits that long (0: off)
    {"op": "generation", "seconds": 2}           -> a structured answer takes that much longer
    {"op": "throttle", "rate": 20}               -> 429 + RetryInfo above 20 requests/s (0: off)
    {"op": "clear"}                              -> empty the request log
    {"op": "log"}                                -> {"requests": [[method, path, phase], ...]}
    {"op": "log", "timed": true}                 -> {"requests": [[time, method, path, phase], ...]}
    {"op": "answers"}                            -> {"answers": [[time, status], ...]}
    {"op": "stop"}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from emulator import GeminiEmulator  # noqa: E402


def main() -> None:
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    emu = GeminiEmulator(api_key="test-key", clock=time.time, indexing_delay=delay).start()
    print(json.dumps({"url": emu.url}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        answer: dict = {"ok": True}
        if op == "create_store":
            answer["store"] = emu.create_store(msg["name"])
        elif op == "latency":
            emu.request_latency = float(msg["seconds"])
        elif op == "generation":
            emu.generation_latency = float(msg["seconds"])
        elif op == "throttle":
            emu.rate_limit = float(msg["rate"]) or None
        elif op == "clear":
            emu.clear_log()
        elif op == "log":
            # Arrival times (time.time(), the caller's clock too): when the
            # upload stage ended, apart from the indexing tail after it.
            timed = [[r.time] if msg.get("timed") else [] for r in emu.requests]
            answer["requests"] = [
                [*t, r.method, r.path, r.phase] for t, r in zip(timed, emu.requests, strict=True)
            ]
        elif op == "answers":
            answer["answers"] = [[r.time, r.status] for r in emu.requests]
        elif op == "stop":
            break
        print(json.dumps(answer), flush=True)
    emu.stop()


if __name__ == "__main__":
    main()
