"""Where the config and the credentials meet the stores: the one place a store,
or a backend's store admin, is opened from a `Config`.

Stores take plain values and never read either (stores/__init__.py); the
callers (workspace, doctor, the CLI's `store` commands and `init`) should not
each repeat how [store] maps onto those values or when a key is needed, so
they come here. The API key is resolved only for a backend that needs one:
the local store works on a machine with no Gemini key.
"""

from __future__ import annotations

from objlib_daemon import stores
from objlib_daemon.config import Config, StoreConfig
from objlib_daemon.stores.base import RemoteSettings, Store, StoreAdmin


def remote_settings(store: StoreConfig) -> RemoteSettings:
    """The [store] settings a remote backend takes, as plain values."""
    return RemoteSettings(
        base_url=store.base_url,
        model=store.model,
        concurrency=store.concurrency,
        max_requests_per_minute=store.max_requests_per_minute,
        breaker_threshold=store.breaker_threshold,
        breaker_cooldown=store.breaker_cooldown,
        retry_attempts=store.retry_attempts,
        retry_initial=store.retry_initial,
    )


def api_key(backend: str) -> str:
    """The resolved API key if `backend` needs one (ConfigurationError when none
    is set), else ""."""
    if not stores.needs_api_key(backend):
        return ""
    from objlib_daemon.credentials import resolve_api_key

    key, _source = resolve_api_key()
    return key


def open_store(config: Config, *, backend: str, name: str) -> Store:
    """The store recorded in the database (`name` is its resource name)."""
    return stores.open_store(
        backend,
        name,
        state_dir=config.state_dir,
        api_key=api_key(backend),
        settings=remote_settings(config.store),
    )


def open_admin(config: Config, backend: str) -> StoreAdmin:
    """`backend`'s stores themselves, whatever [store] backend says (`store create`
    always talks to Gemini)."""
    return stores.open_admin(
        backend,
        state_dir=config.state_dir,
        name=config.store.name,
        api_key=api_key(backend),
        base_url=config.store.base_url,
    )
