"""The remote side: two protocols (a store's documents, and the stores themselves) and
two backends (embedded `local`, `gemini`).

Callers build stores only through the two factories here, from plain values
(an API key they resolved, `RemoteSettings` from their config, paths and names), so no
caller imports a backend module and no backend reads the config or the
credentials. Backends are imported on first use: `local` needs no SDK.
"""

from __future__ import annotations

from pathlib import Path

from objlib_daemon.stores.base import RemoteSettings, Store, StoreAdmin

LOCAL_DEFAULT_NAME = "local"


def local_directory(state_dir: Path) -> Path:
    """Where the embedded store keeps its documents."""
    return state_dir / "local-store"


def needs_api_key(backend: str) -> bool:
    """Whether the backend's factories need an API key (the caller resolves it)."""
    return backend == "gemini"


def open_store(
    backend: str, name: str, *, state_dir: Path, api_key: str, settings: RemoteSettings
) -> Store:
    """Build the store recorded in the database (`name` is its resource name)."""
    if backend == "local":
        from objlib_daemon.stores.local import LocalStore

        return LocalStore(local_directory(state_dir), name=name or LOCAL_DEFAULT_NAME)
    if backend == "gemini":
        from objlib_daemon.stores.gemini import GeminiStore

        return GeminiStore(api_key, name, settings)
    raise ValueError(f"unknown store backend {backend!r}")


def open_admin(
    backend: str, *, state_dir: Path, name: str, api_key: str, base_url: str
) -> StoreAdmin:
    """The backend's stores themselves (`store create`, `store list`, `init`).

    `name` is the configured store name (the local store is listed under it);
    the local admin never creates the store's folder unless asked to create.
    """
    if backend == "local":
        from objlib_daemon.stores.local import LocalAdmin

        return LocalAdmin(local_directory(state_dir), name or LOCAL_DEFAULT_NAME)
    if backend == "gemini":
        from objlib_daemon.stores.gemini import GeminiAdmin

        return GeminiAdmin(api_key, base_url)
    raise ValueError(f"unknown store backend {backend!r}")
