"""The remote side: one store protocol, two backends (embedded `local`, `gemini`)."""

from __future__ import annotations

from pathlib import Path

from objlib_daemon.config import StoreConfig
from objlib_daemon.stores.base import Store, StoreInfo

LOCAL_DEFAULT_NAME = "local"


def local_stores(config: StoreConfig, *, state_dir: Path) -> list[StoreInfo]:
    """The embedded store under `state_dir`, if one was created (by `init` or a sync).

    Why not `open_store`: listing must not create the store's folder, and
    needs no credentials, so `store list` works on a machine with no Gemini key.
    """
    directory = state_dir / "local-store"
    if not directory.is_dir():
        return []
    from objlib_daemon.stores.local import LocalStore

    with LocalStore(directory, name=config.name or LOCAL_DEFAULT_NAME) as store:
        return [store.ensure()]


def open_store(config: StoreConfig, *, backend: str, name: str, state_dir: Path) -> Store:
    """Build the store recorded in the database (`name` is its resource name)."""
    if backend == "local":
        from objlib_daemon.stores.local import LocalStore

        return LocalStore(state_dir / "local-store", name=name or LOCAL_DEFAULT_NAME)
    if backend == "gemini":
        from objlib_daemon.credentials import resolve_api_key
        from objlib_daemon.stores.gemini import GeminiStore

        api_key, _source = resolve_api_key()
        return GeminiStore(config, api_key, name)
    raise ValueError(f"unknown store backend {backend!r}")
