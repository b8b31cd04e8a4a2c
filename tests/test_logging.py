"""Loggers made on first use: commands that log nothing do not import structlog (30 ms,
with asyncio: docs/benchmarks.md, benchmark 7); those that do log as configured."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import sys
from objlib_daemon.cli import cli  # noqa: F401 - what every command imports
from objlib_daemon.daemon import control  # what `objlibd status` uses to ask the daemon
from objlib_daemon.logging import get_logger, setup_logging
setup_logging("info", "json")
before = "structlog" in sys.modules
get_logger("objlibd.test").info("hello", n=1)
print(before, file=sys.stdout)
"""


def test_structlog_is_loaded_only_when_something_logs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False", result.stdout
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["event"], line["n"], line["level"]) == ("hello", 1, "info")


def test_the_configured_level_holds_for_loggers_made_before_setup() -> None:
    probe = (
        "from objlib_daemon.logging import get_logger, setup_logging\n"
        "log = get_logger('objlibd.test')\n"
        "setup_logging('warning', 'json')\n"
        "log.info('hidden')\n"
        "log.warning('shown')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    events = [json.loads(x)["event"] for x in result.stderr.strip().splitlines()]
    assert events == ["shown"]
