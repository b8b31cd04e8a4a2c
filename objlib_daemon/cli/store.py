"""`objlibd store`: create and list Gemini File Search stores.

Creating a store is always an explicit user action (sync never creates one,
docs/gemini-file-search.md rule 10). `create` and `list --gemini` talk to Gemini
whatever `[store] backend` says, so a user can prepare a store before
switching; a plain `list` on the local backend lists the local store and
needs no Gemini key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from objlib_daemon import errors
from objlib_daemon.config import Config
from objlib_daemon.stores.base import AuthError, StoreAdmin, StoreError, StoreInfo


class StoreCommandError(errors.ObjlibError):
    """A store command failed for a reason the message explains."""


class StoreExists(StoreCommandError):
    exit_code = errors.USAGE


def _config(ctx: click.Context) -> Config:
    obj = ctx.obj
    if obj is None:  # invoked on its own (tests): defaults, env base URL
        return Config()
    config: Config = obj["load_config"]()
    return config


@contextmanager
def _admin(config: Config, backend: str) -> Iterator[StoreAdmin]:
    """`backend`'s stores, with the configured key and base URL; store errors → ObjlibError."""
    from objlib_daemon.connect import open_admin

    try:
        admin = open_admin(config, backend)
        try:
            yield admin
        finally:
            admin.close()
    except AuthError as exc:
        raise errors.ConfigurationError(str(exc)) from None
    except StoreError as exc:
        raise StoreCommandError(str(exc)) from None


@click.group()
def store() -> None:
    """Gemini File Search stores (creation is always explicit)."""


@store.command("create")
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, name: str) -> None:
    """Create a File Search store with display name NAME and print its resource name."""
    name = name.strip()
    if not name:
        raise click.UsageError("the store name must not be empty")
    with _admin(_config(ctx), "gemini") as admin:
        existing = [s for s in admin.list() if s.display_name == name]
        if existing:
            raise StoreExists(
                f"a store named {name!r} already exists ({existing[0].name}); use it "
                "(set [store] name) or choose another name"
            )
        resource = admin.create(name)
    click.echo(resource)
    click.echo(
        f'Created. Put `name = "{resource}"` under [store] in the config '
        '(with backend = "gemini").',
        err=True,
    )


def _as_dict(info: StoreInfo) -> dict[str, Any]:
    return {"name": info.name, "display_name": info.display_name, "documents": info.documents}


@store.command("list")
@click.option(
    "--gemini",
    "gemini",
    is_flag=True,
    help="List the Gemini stores even when [store] backend is local.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, gemini: bool, as_json: bool) -> None:
    """List the stores of the configured backend (the File Search stores this
    API key can see, or the local store)."""
    config = _config(ctx)
    local = config.store.backend == "local" and not gemini
    with _admin(config, "local" if local else "gemini") as admin:
        stores = admin.list()
    if as_json:
        click.echo(json.dumps([_as_dict(s) for s in stores], indent=2))
        return
    if not stores:
        click.echo(
            "No local store yet: `objlibd init --library PATH` creates it."
            if local
            else "No File Search stores. Create one with `objlibd store create NAME`."
        )
        return
    width = max(len(s.name) for s in stores)
    for s in stores:
        count = "?" if s.documents is None else str(s.documents)
        click.echo(f"{s.name:<{width}}  {count:>6} docs  {s.display_name}")
