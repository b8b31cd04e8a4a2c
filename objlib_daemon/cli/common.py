"""Helpers shared by the command modules: context state and rendering."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import click

from objlib_daemon.config import Config, load, parse_duration, resolve_config_path


class State:
    """What the group hands to commands: the config path and a lazy loader."""

    def __init__(self, config_path: str | None, verbose: int) -> None:
        self.config_path = resolve_config_path(config_path)
        self.verbose = verbose
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


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON when asked, else the human text."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


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
