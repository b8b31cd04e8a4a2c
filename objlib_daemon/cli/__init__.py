"""The `objlibd` command: parse, call, render. No logic lives here.

Errors that carry an exit code (`ObjlibError`) are printed as one line saying
what to do; exit codes are listed in the README.
"""

from __future__ import annotations

import os

import click

from objlib_daemon import errors
from objlib_daemon.cli.common import State
from objlib_daemon.config import ConfigError
from objlib_daemon.logging import setup_logging
from objlib_daemon.stores.base import AuthError, StoreError, StoreNotFound


class ObjlibGroup(click.Group):
    """Maps our errors to one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (ConfigError, AuthError, StoreNotFound) as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(errors.CONFIG) from None
        except errors.ObjlibError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None
        except StoreError as exc:
            click.echo(f"error: the store failed: {exc}; try again later", err=True)
            raise click.exceptions.Exit(errors.UNEXPECTED) from None
        except Exception as exc:  # last resort: one line, a traceback only when asked
            if os.environ.get("OBJLIBD_DEBUG"):
                raise
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


def _register() -> None:
    from objlib_daemon.cli import auth, daemon, library, service, store, syncing, verify

    for command in (
        *library.COMMANDS,
        *syncing.COMMANDS,
        *daemon.COMMANDS,
        *verify.COMMANDS,
        *service.COMMANDS,
        auth.auth,
        store.store,
    ):
        cli.add_command(command)


_register()


def main() -> None:
    """Console entry point."""
    cli(prog_name="objlibd")
