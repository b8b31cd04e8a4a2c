"""The `objlibd` command: parse, call, render. No logic lives here.

Errors that carry an exit code (`ObjlibError`) are printed as one line saying
what to do; exit codes are listed in the README.
"""

from __future__ import annotations

import importlib
import os

import click

from objlib_daemon import errors
from objlib_daemon.cli.common import State
from objlib_daemon.config import ConfigError
from objlib_daemon.logging import setup_logging
from objlib_daemon.stores.base import StoreError, StoreUnusable, TransientError

# Command name → (module, attribute). Modules load only when their command
# runs, so `objlibd status` does not pay for SQLAlchemy, the SDK or the daemon.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("objlib_daemon.cli.library", "init"),
    "status": ("objlib_daemon.cli.library", "status"),
    "search": ("objlib_daemon.cli.library", "search"),
    "sync": ("objlib_daemon.cli.syncing", "sync"),
    "verify": ("objlib_daemon.cli.verify", "verify"),
    "run": ("objlib_daemon.cli.daemon", "run"),
    "reconcile": ("objlib_daemon.cli.daemon", "reconcile"),
    "pause": ("objlib_daemon.cli.daemon", "pause"),
    "resume": ("objlib_daemon.cli.daemon", "resume"),
    "queue": ("objlib_daemon.cli.daemon", "queue_cmd"),
    "auth": ("objlib_daemon.cli.auth", "auth"),
    "store": ("objlib_daemon.cli.store", "store"),
    "service": ("objlib_daemon.cli.service", "service_group"),
    "doctor": ("objlib_daemon.cli.service", "doctor"),
}


class ObjlibGroup(click.Group):
    """Loads commands lazily; maps our errors to one line and the documented exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (ConfigError, StoreUnusable) as exc:  # the message names the fix
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(errors.CONFIG) from None
        except errors.ObjlibError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None
        except TransientError as exc:
            click.echo(f"error: the store failed: {exc}; try again later", err=True)
            raise click.exceptions.Exit(errors.STORE_UNAVAILABLE) from None
        except StoreError as exc:
            click.echo(f"error: the store refused: {exc}", err=True)
            raise click.exceptions.Exit(errors.UNEXPECTED) from None
        except Exception as exc:  # last resort: one line, a traceback only when asked
            if os.environ.get("OBJLIBD_DEBUG"):
                raise
            if "sqlite" in type(getattr(exc, "orig", None) or exc).__module__:
                from objlib_daemon.state.db import damaged  # loads SQLAlchemy: only here

                state_error = damaged(exc)
                if state_error is not None:  # read outside a session: still say the fix
                    click.echo(f"error: {state_error}", err=True)
                    raise click.exceptions.Exit(state_error.exit_code) from None
            click.echo(
                f"unexpected error: {type(exc).__name__}: {exc}\n"
                "Run again with OBJLIBD_DEBUG=1 for a traceback, and report it.",
                err=True,
            )
            raise click.exceptions.Exit(errors.UNEXPECTED) from None


@click.group(cls=ObjlibGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    setup_logging(None)  # warnings only; `objlibd run` sets the configured level
    ctx.obj = State(config_path, verbose)


def main() -> None:
    """Console entry point."""
    cli(prog_name="objlibd")
