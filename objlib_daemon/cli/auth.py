"""`objlibd auth`: store, inspect and remove the Gemini API key.

The key is read without echo (or from stdin for scripts), stored in the
system keyring (or, on a machine without one, in the service's 0600 env
file), and never printed back, not even in part: `status` says where the key
comes from, nothing more.
"""

from __future__ import annotations

import json
import sys

import click

from objlib_daemon import credentials, errors


@click.group()
def auth() -> None:
    """Manage the Gemini API key (system keyring, the service's env file, or environment)."""


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _read_key(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        # First line only: `echo KEY | objlibd auth set` and files with a
        # trailing newline both work, and nothing else is read.
        return sys.stdin.readline().strip()
    return click.prompt("Gemini API key", hide_input=True, show_default=False).strip()


@auth.command("set")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the key from standard input.")
def set_(from_stdin: bool) -> None:
    """Store the API key in the system keyring (prompted without echo); without a
    keyring, in the env file the service reads."""
    key = _read_key(from_stdin)
    if not key:
        raise click.UsageError("no key given; nothing was stored")
    where = credentials.set_key(key)
    click.echo(f"API key stored in {where}.")
    _warn(credentials.describe_source().warnings)


@auth.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Say where the API key comes from (never the key). Exit 78 if there is none."""
    info = credentials.describe_source()
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2, sort_keys=True))
    else:
        if info.configured:
            click.echo(f"API key: from {info.description}")
        else:
            click.echo(info.description)
        click.echo(f"keyring: {info.keyring}")
        _warn(info.warnings)
    if not info.configured:
        ctx.exit(errors.CONFIG)


@auth.command("clear")
def clear() -> None:
    """Remove the API key from the system keyring (or the env file `set` wrote)."""
    removed = credentials.clear_key()
    if removed:
        click.echo("API key removed.")
    else:
        click.echo("No key was stored.")
    status = credentials.describe_source()
    if status.source and status.source != credentials.SOURCE_KEYRING:
        click.echo(f"note: a key is still provided by {status.description}.", err=True)
