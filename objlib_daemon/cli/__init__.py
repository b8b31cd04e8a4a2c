"""The `objlibd` command: parse, call, render. No logic lives here.

Errors that carry an exit code (`ObjlibError`) are printed as one line saying
what to do, or with `--json` as one object on stdout (docs/json.md); exit
codes are listed in the README.
"""

from __future__ import annotations

import importlib
import json
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
    "why": ("objlib_daemon.cli.why", "why"),
    "config": ("objlib_daemon.cli.config_cmd", "config_group"),
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

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Seen before the command parses: a usage error of a `--json` call is JSON too.
        ctx.meta["json"] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            if not ctx.meta.get("json"):
                raise
            fail(ctx, exc.format_message(), exc.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside a sync's own handling
            fail(ctx, "interrupted", errors.INTERRUPTED)
        except (ConfigError, StoreUnusable) as exc:  # the message names the fix
            fail(ctx, str(exc), errors.CONFIG)
        except errors.ObjlibError as exc:
            fail(ctx, str(exc), exc.exit_code)
        except TransientError as exc:
            fail(ctx, f"the store failed: {exc}; try again later", errors.STORE_UNAVAILABLE)
        except StoreError as exc:
            fail(ctx, f"the store refused: {exc}", errors.UNEXPECTED)
        except Exception as exc:  # last resort: one line, a traceback only when asked
            if os.environ.get("OBJLIBD_DEBUG"):
                raise
            if "sqlite" in type(getattr(exc, "orig", None) or exc).__module__:
                from objlib_daemon.state.db import damaged  # loads SQLAlchemy: only here

                state_error = damaged(exc)
                if state_error is not None:  # read outside a session: still say the fix
                    fail(ctx, str(state_error), state_error.exit_code)
            fail(
                ctx,
                f"{type(exc).__name__}: {exc}",
                errors.UNEXPECTED,
                hint="Run again with OBJLIBD_DEBUG=1 for a traceback, and report it.",
            )


def fail(ctx: click.Context, message: str, code: int, *, hint: str | None = None) -> None:
    """End the command with `code`: one `error:` line on stderr, or with `--json`
    one object on stdout, `{"error": {"code", "kind", "message"}}`, so a script
    reading stdout always gets JSON (docs/json.md)."""
    if ctx.meta.get("json"):
        error = {"code": code, "kind": errors.KINDS.get(code, "error"), "message": message}
        click.echo(json.dumps({"error": error}, indent=2, sort_keys=True))
    else:
        prefix = "unexpected error" if code == errors.UNEXPECTED and hint else "error"
        click.echo(f"{prefix}: {message}" + (f"\n{hint}" if hint else ""), err=True)
    raise click.exceptions.Exit(code)


@click.group(cls=ObjlibGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="OBJLIBD_CONFIG",
    help="Config file (default: $OBJLIBD_CONFIG, else the user config dir).",
)
@click.option("-v", "--verbose", count=True, help="More detail (-v: each file).")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress and no summary: only errors and --json."
)
@click.version_option(package_name="objlibd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """Keep a document library in sync with a Gemini File Search store."""
    setup_logging(None)  # warnings only; `objlibd run` sets the configured level
    ctx.obj = State(config_path, verbose, quiet)


def main() -> None:
    """Console entry point."""
    cli(prog_name="objlibd")
