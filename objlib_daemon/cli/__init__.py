"""The `objlibd` command: parse, call, render. No logic lives here.

Errors that carry an exit code (`ObjlibError`) are printed as one line saying
what to do; exit codes are listed in the README.
"""

from __future__ import annotations

import os
import sys

import click

from objlib_daemon import errors
from objlib_daemon.cli.common import State
from objlib_daemon.config import ConfigError
from objlib_daemon.logging import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="OBJLIBD_CONFIG",
    help="Config file (default: $OBJLIBD_CONFIG, else the user config dir).",
)
@click.option("-v", "--verbose", count=True, help="More detail (-v: each file).")
@click.version_option(package_name="objlibd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Keep a document library in sync with a Gemini File Search store."""
    ctx.obj = State(config_path, verbose)


def _register() -> None:
    from objlib_daemon.cli import library, syncing

    for command in (*library.COMMANDS, *syncing.COMMANDS):
        cli.add_command(command)
    for module, name in (
        ("objlib_daemon.cli.auth", "auth"),
        ("objlib_daemon.cli.store", "store"),
        ("objlib_daemon.cli.daemon", "COMMANDS"),
        ("objlib_daemon.cli.service", "COMMANDS"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        found = getattr(mod, name)
        for command in found if isinstance(found, list | tuple) else (found,):
            cli.add_command(command)


_register()


def main() -> None:
    """Console entry point: run the group and map errors to documented exit codes."""
    setup_logging(None)
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(errors.UNEXPECTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(errors.USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(errors.CONFIG)
    except errors.ObjlibError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: one line, no traceback unless asked
        click.echo(
            f"unexpected error: {type(exc).__name__}: {exc}\n"
            "Run again with OBJLIBD_DEBUG=1 for a traceback, and report it.",
            err=True,
        )
        if _debug():
            raise
        sys.exit(errors.UNEXPECTED)
    sys.exit(rc if isinstance(rc, int) else 0)


def _debug() -> bool:
    return bool(os.environ.get("OBJLIBD_DEBUG"))
