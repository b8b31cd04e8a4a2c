"""Helpers shared by the command modules: context state and rendering."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from objlib_daemon.config import Config, load, resolve_config_path
from objlib_daemon.timefmt import utc_iso
from objlib_daemon.units import parse_duration


class State:
    """What the group hands to commands: the config path and a lazy loader."""

    def __init__(self, config_path: str | None, verbose: int, quiet: bool = False) -> None:
        self.config_path = resolve_config_path(config_path)
        self.verbose = verbose
        self.quiet = quiet
        self._config: Config | None = None

    def __getitem__(self, key: str) -> Any:
        """Mapping access for command modules: `ctx.obj["load_config"]()`."""
        if key == "load_config":
            return self.config
        raise KeyError(key)

    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path)
        return self._config


# The one `--json` flag: its shape per command is in docs/json.md, and an error
# under it is a JSON object too (cli/__init__.py `fail`).
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object, errors included (shapes: docs/json.md).",
)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON when asked, else the human text (nothing with `-q`: the exit
    code and stderr say what went wrong)."""
    if as_json:
        click.echo(json.dumps(iso_times(data), indent=2, sort_keys=True, default=str))
    elif text is not None and not _quiet():
        click.echo(text)


# Keys that hold a point in time besides those ending in `_at` (docs/json.md):
# every one is written as ISO 8601 UTC, whatever produced it (database, daemon).
TIME_KEYS = frozenset({"at", "since", "first_seen", "last_seen", "next_due", "oldest_since"})


def iso_times(data: Any) -> Any:
    """`data` with every epoch time (by key: `*_at` or TIME_KEYS) as ISO 8601 UTC:
    one rule in one place, so every command's `--json` speaks the same time."""
    if isinstance(data, dict):
        return {
            k: utc_iso(v)
            if (k.endswith("_at") or k in TIME_KEYS)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            else iso_times(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [iso_times(v) for v in data]
    return data


def _quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx is not None else None
    return bool(getattr(root, "quiet", False))


def when(ts: float | None) -> str:
    if not ts:
        return "never"
    age = time.time() - ts
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    if age < 0:
        return f"{stamp} (in {-age:.0f}s)" if age > -7200 else f"{stamp}"
    if age < 120:
        return f"{stamp} ({age:.0f}s ago)"
    if age < 7200:
        return f"{stamp} ({age / 60:.0f} min ago)"
    return f"{stamp} ({age / 3600:.1f} h ago)"


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def summary_line(counts: Counter[str] | dict[str, int], keys: list[str]) -> str:
    return ", ".join(f"{k} {counts.get(k, 0)}" for k in keys)


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop` instead of killing the command: the pass
    ends after the files in flight and the summary is still printed (exit 130;
    before, Ctrl-C printed only `Aborted!` and SIGTERM exited 143 with nothing).
    A second Ctrl-C quits at once."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the files in flight (Ctrl-C again to quit now)", err=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
