"""`objlibd config show`: every setting in force and where it came from."""

from __future__ import annotations

import json

import click

from objlib_daemon.cli.common import State, emit, json_option
from objlib_daemon.config import effective


@click.group("config")
def config_group() -> None:
    """Look at the configuration."""


@config_group.command("show")
@json_option
@click.pass_obj
def show(state: State, as_json: bool) -> None:
    """Effective values: set in the file, by an environment variable, or the default."""
    rows = effective(state.config_path)
    data = {
        "config": str(state.config_path),
        "values": {
            key: {"value": json.loads(json.dumps(value, default=str)), "source": source}
            for key, value, source in rows
        },
    }
    width = max(len(key) for key, _, _ in rows)
    lines = [f"# {state.config_path}"]
    lines += [
        f"{key:{width}} = {json.dumps(value, default=str)}  ({source})"
        for key, value, source in rows
    ]
    emit(data, as_json, "\n".join(lines))


COMMANDS = [config_group]
