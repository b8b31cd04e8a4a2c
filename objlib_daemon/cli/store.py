"""`objlibd store`: create and list Gemini File Search stores.

Creating a store is always an explicit user action (sync never creates one,
gemini-file-search.md rule 10). These commands talk to Gemini whatever
`[store] backend` says, so a user can prepare a store before switching.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from objlib_daemon import errors
from objlib_daemon.config import Config, StoreConfig
from objlib_daemon.credentials import resolve_api_key
from objlib_daemon.stores.base import AuthError, StoreError, StoreInfo


class StoreCommandError(errors.ObjlibError):
    """A store command failed for a reason the message explains."""


class StoreExists(StoreCommandError):
    exit_code = errors.USAGE


def _store_config(ctx: click.Context) -> StoreConfig:
    obj = ctx.obj
    if obj is None:  # invoked on its own (tests): defaults, env base URL
        return Config().store
    config = obj["load_config"]()
    return config.store


@contextmanager
def _client(ctx: click.Context) -> Iterator[Any]:
    """A Gemini client for the configured key and base URL; store errors → ObjlibError."""
    from objlib_daemon.stores.gemini import make_client

    config = _store_config(ctx)
    key, _source = resolve_api_key()
    try:
        client = make_client(config, key)
        try:
            yield client
        finally:
            client.close()
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
    from objlib_daemon.stores.gemini import create_store, list_stores

    name = name.strip()
    if not name:
        raise click.UsageError("the store name must not be empty")
    with _client(ctx) as client:
        existing = [s for s in list_stores(client) if s.display_name == name]
        if existing:
            raise StoreExists(
                f"a store named {name!r} already exists ({existing[0].name}); use it "
                "(set [store] name) or choose another name"
            )
        resource = create_store(client, name)
    click.echo(resource)
    click.echo(
        f'Created. Put `name = "{resource}"` under [store] in the config '
        '(with backend = "gemini").',
        err=True,
    )


def _as_dict(info: StoreInfo) -> dict[str, Any]:
    return {"name": info.name, "display_name": info.display_name, "documents": info.documents}


@store.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the File Search stores this API key can see."""
    from objlib_daemon.stores.gemini import list_stores

    with _client(ctx) as client:
        stores = list_stores(client)
    if as_json:
        click.echo(json.dumps([_as_dict(s) for s in stores], indent=2))
        return
    if not stores:
        click.echo("No File Search stores. Create one with `objlibd store create NAME`.")
        return
    width = max(len(s.name) for s in stores)
    for s in stores:
        count = "?" if s.documents is None else str(s.documents)
        click.echo(f"{s.name:<{width}}  {count:>6} docs  {s.display_name}")
