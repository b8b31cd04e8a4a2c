"""`objlibd init`, `status` and `search`: setting a library up and looking at it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from objlib_daemon.cli.common import State, emit, when
from objlib_daemon.config import Config, load, render_minimal
from objlib_daemon.enrichment.pending import enrichment_line
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.stores.base import PermanentError

# SQLAlchemy and the engine load inside the commands that need them: `status`
# with a daemon running answers from the socket and must stay fast (≤ 200 ms).


@click.command()
@click.option(
    "--library",
    "root",
    required=True,
    type=click.Path(path_type=Path),
    help="The library's root folder.",
)
@click.option(
    "--store-backend",
    type=click.Choice(["local", "gemini"]),
    default=None,
    help="Where documents go (default: local, the embedded store).",
)
@click.option(
    "--store",
    "store_name",
    default=None,
    help="Store name (gemini: resource name or display name).",
)
@click.option("--create-store", is_flag=True, help="Create the Gemini store if it does not exist.")
@click.option("--adopt", is_flag=True, help="Take over a root whose marker names another library.")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Set a lost or damaged state database aside and start a fresh one; documents "
    "already in the store are adopted by the next sync, not uploaded again.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def init(
    state: State,
    root: Path,
    store_backend: str | None,
    store_name: str | None,
    create_store: bool,
    adopt: bool,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Set up a library: config, marker file, state database."""
    from objlib_daemon.state.db import set_aside
    from objlib_daemon.workspace import expect_adoption, init_library

    root = root.expanduser().resolve()
    path = state.config_path
    wrote_config = False
    if path.exists():
        config = load(path)
        backend = store_backend or config.store.backend
        store_name = store_name or config.store.name
    else:
        backend = store_backend or "local"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(render_minimal(root, backend, store_name or ""), encoding="utf-8")
        os.chmod(path, 0o600)
        wrote_config = True
        config = load(path)
    display_name = None
    if backend == "gemini":
        store_name, display_name = _resolve_gemini_store(config, store_name, create_store)
    set_aside_as = set_aside(config.database_path) if rebuild else None
    library_id, created = init_library(
        config,
        root,
        backend=backend,
        store_name=store_name or "",
        store_display_name=display_name,
        adopt=adopt,
    )
    adoptable = expect_adoption(config)
    data = {
        "adoptable": adoptable,
        "database_set_aside": str(set_aside_as) if set_aside_as else None,
        "config": str(path),
        "config_written": wrote_config,
        "library_id": library_id,
        "marker_created": created,
        "root": str(root),
        "state_dir": str(config.state_dir),
        "store": {"backend": backend, "name": store_name or "local"},
    }
    text = (
        f"library {library_id} at {root}\n"
        f"  marker:   {'created' if created else 'found'} ({root / '.objlibd'})\n"
        f"  config:   {path}{' (written)' if wrote_config else ''}\n"
        f"  state:    {config.state_dir}\n"
        f"  store:    {backend}:{store_name or 'local'}\n"
    )
    if set_aside_as:
        text += f"  the old database was set aside as {set_aside_as}\n"
    if adoptable:
        text += (
            f"  the store already holds {adoptable} documents of this library: the next "
            "sync adopts each whose file is unchanged instead of uploading it again\n"
        )
    text += "Next: `objlibd sync` (or `objlibd run` to keep it in sync)."
    emit(data, as_json, text)


def _resolve_gemini_store(config: Config, name: str | None, create: bool) -> tuple[str, str]:
    """(resource name, display name) of the Gemini store; created only when asked."""
    if not name:
        raise ConfigurationError("a Gemini store needs a name: pass --store NAME")
    from objlib_daemon.credentials import resolve_api_key
    from objlib_daemon.stores.base import StoreNotFound
    from objlib_daemon.stores.gemini import create_store, make_client, resolve_store

    api_key, _ = resolve_api_key()
    client = make_client(config.store, api_key)
    try:
        resource = resolve_store(client, name)
    except StoreNotFound:
        if not create:
            raise
        resource = create_store(client, name)
    display = name if not name.startswith("fileSearchStores/") else resource
    return resource, display


def _status_text(data: dict[str, Any]) -> str:
    lib, files, q = data["library"], data["files"], data["queue"]
    daemon = data.get("daemon")
    lines = [
        f"daemon:    {daemon['state'] if daemon else 'not running'}",
        f"library:   {lib['root']} ({'available' if lib['available'] else 'UNAVAILABLE'}"
        + ("" if lib["available"] else f": {lib['volume']}")
        + ")",
        f"store:     {data['store']['backend']}:{data['store']['name']}",
        "files:     " + ", ".join(f"{k} {v}" for k, v in files.items()),
        f"queue:     {q['pending']} pending"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in q["by_reason"].items()) + ")"
            if q["by_reason"]
            else ""
        ),
        f"orphans:   {data['orphans']}",
    ]
    oldest = data["missing"]["oldest"]
    if oldest:
        lines.append(
            f"missing:   {data['missing']['count']}, oldest {oldest['path']} since "
            f"{when(oldest['since'])}"
        )
    for failure in data["failed"]:
        lines.append(f"failed:    {failure['path']}: {failure['error']}")
    for noted in data.get("noted") or []:  # absent from an older daemon's answer
        lines.append(f"note:      {noted['path']}: {noted['note']}")
    if data.get("retrying"):
        lines.append(f"retrying:  {data['retrying']} file(s) (see `objlibd queue`)")
    if data.get("indexing"):
        lines.append(f"indexing:  {data['indexing']} file(s) accepted, not indexed yet")
    enrichment = enrichment_line(data["enrichment"]) if data.get("enrichment") else ""
    if enrichment:
        lines.append(f"enrichment: {enrichment}")
    last = data["last_sync"]
    result = last["result"] or {}
    lines.append(
        f"last sync: {when(last['at'])}" + (f" ({result.get('outcome', '?')})" if result else "")
    )
    if daemon:
        lines += _daemon_lines(daemon)
    return "\n".join(lines)


def _daemon_lines(daemon: dict[str, Any]) -> list[str]:
    lines = [f"activity:  {daemon.get('activity') or 'idle'}"]
    for path in daemon.get("inflight") or []:
        lines.append(f"in flight: {path}")
    breaker = daemon.get("breaker") or {}
    if breaker.get("state") not in (None, "closed"):
        lines.append(
            f"breaker:   {breaker['state']} (remote work paused; retry in "
            f"{breaker.get('retry_in', 0):.0f}s; last error: {breaker.get('last_error')})"
        )
    last = daemon.get("last_reconcile") or {}
    if last:
        detail = last.get("outcome", "?")
        if last.get("error"):
            detail += f": {last['error']}"
        lines.append(f"reconcile: last {when(last.get('started_at'))} ({detail})")
    nxt = daemon.get("next_reconcile")
    if isinstance(nxt, int | float):
        lines.append(f"           next {when(nxt)}")
    elif nxt:
        lines.append(f"           next {nxt}")
    for err in (daemon.get("last_errors") or [])[-3:]:
        lines.append(f"error:     {when(err.get('at'))} {err.get('where')}: {err.get('error')}")
    return lines


def collect_status(config: Config) -> dict[str, Any]:
    """Live state from a running daemon when there is one, else from the database."""
    try:
        from objlib_daemon.daemon.control import request
    except ModuleNotFoundError:
        request = None
    if request is not None:
        live = request(config, {"cmd": "status"})
        if live is not None:
            return live
    from objlib_daemon.state.db import Database
    from objlib_daemon.sync.status import database_status
    from objlib_daemon.workspace import check_matches

    db = Database(config.database_path, readonly=True)
    try:
        check_matches(config, db.all_meta())  # another library's database is no status
        data = database_status(db)
    finally:
        db.close()
    data["daemon"] = None
    return data


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Files by state, queue, orphans, missing files, last sync, store and volume."""
    data = collect_status(state.config())
    emit(data, as_json, _status_text(data))


@click.command()
@click.argument("query")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--topic", multiple=True, help="Only documents with this AI topic (repeatable).")
@click.option("--course", help="Only documents of this course.")
@click.option(
    "--where",
    help="Metadata filter in AIP-160 syntax, e.g. 'difficulty = \"advanced\" AND year >= 2010'.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def search(
    state: State,
    query: str,
    limit: int,
    topic: tuple[str, ...],
    course: str | None,
    where: str | None,
    as_json: bool,
) -> None:
    """Search the store: ranked hits with path, topics and snippet (and an answer on Gemini)."""
    from objlib_daemon.workspace import open_workspace

    clauses = [f"topics:{_quoted(t)}" for t in topic]
    if course:
        clauses.append(f"course = {_quoted(course)}")
    if where:
        clauses.append(f"({where})")
    where = " AND ".join(clauses) or None
    ws = open_workspace(state.config())
    try:
        result = ws.store.search(query, limit=limit, where=where)
    except PermanentError as exc:
        if where is None or exc.code != 400:
            raise
        raise click.UsageError(f"the store refused the filter {where!r}: {exc}") from None
    finally:
        ws.close()
    data = {
        "query": query,
        "answer": result.answer,
        "hits": [
            {
                "path": h.path,
                "display_name": h.display_name,
                "snippet": h.snippet,
                "score": h.score,
                "document": h.document,
                "topics": _topics(h.metadata),
            }
            for h in result.hits
        ],
    }
    lines = [result.answer, ""] if result.answer else []
    for i, hit in enumerate(result.hits, 1):
        lines.append(f"{i:2}. {hit.path or hit.display_name}")
        if _topics(hit.metadata):
            lines.append("      topics: " + ", ".join(_topics(hit.metadata)))
        if hit.snippet:
            lines.append("      " + " ".join(hit.snippet.split())[:200])
    if not result.hits:
        lines.append("no matches")
    emit(data, as_json, "\n".join(lines))


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _topics(metadata: dict[str, Any]) -> list[str]:
    topics = metadata.get("topics")
    return [str(t) for t in topics] if isinstance(topics, list) else []


COMMANDS = [init, status, search]
