"""`objlibd init`, `status` and `search`: setting a library up and looking at it."""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from objlib_daemon.cli.common import State, emit, json_option, when
from objlib_daemon.config import Config, load, parse, render_minimal
from objlib_daemon.enrichment.pending import enrichment_line
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.stores.base import PermanentError

if TYPE_CHECKING:
    from objlib_daemon.stores.base import SearchResult

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
@json_option
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
    # Nothing is written unless init succeeds (issue 15, finding 1): the new
    # config is validated in memory and written last; a failed init_library
    # removes the state it created.
    new_config: str | None = None
    if path.exists():
        config = load(path)
        backend = store_backend or config.store.backend
        store_name = store_name or config.store.name
    else:
        backend = store_backend or "local"
        new_config = render_minimal(root, backend, store_name or "")
        config = parse(new_config, path)
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
    if new_config is not None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(new_config, encoding="utf-8")
        os.chmod(path, 0o600)
    wrote_config = new_config is not None
    # Counted for the root just recorded (a config may still name an older one).
    adoptable = expect_adoption(replace(config, library=replace(config.library, root=root)))
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
    from objlib_daemon.connect import open_admin
    from objlib_daemon.stores.base import StoreNotFound

    admin = open_admin(config, "gemini")
    try:
        resource = admin.resolve(name)
    except StoreNotFound:
        if not create:
            raise
        resource = admin.create(name)
    finally:
        admin.close()
    display = name if not name.startswith("fileSearchStores/") else resource
    return resource, display


def _status_text(data: dict[str, Any], *, verbose: bool = False) -> str:
    lib, files, q = data["library"], data["files"], data["queue"]
    daemon = data.get("daemon")
    busy = data.get("lock_holder")
    lines = [
        f"daemon:    {daemon['state'] if daemon else 'not running'}"
        + (f"; {busy['what']} running (pid {busy['pid']})" if busy else ""),
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
    for row in q.get("waiting") or []:  # absent from an older daemon's answer
        detail = ""
        if verbose:
            detail = f" (attempts {row['attempts']}, next {when(row['next_attempt_at'])})"
        lines.append(f"waiting:   {row['path']}: {row['why']}{detail}")
    shown = len(q.get("waiting") or [])
    if q["pending"] > shown and shown:
        lines.append(f"           ... {q['pending'] - shown} more in `objlibd queue`")
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
    if last["at"] or not daemon:  # under the daemon its drains are the syncs
        lines.append(
            f"last sync: {when(last['at'])}"
            + (f" ({result.get('outcome', '?')})" if result else "")
        )
    if daemon:
        lines += _daemon_lines(daemon)
    return "\n".join(lines)


def _daemon_lines(daemon: dict[str, Any]) -> list[str]:
    lines = [f"activity:  {daemon.get('activity') or 'idle'}"]
    drain = daemon.get("last_drain")
    if drain:
        done = drain.get("counts") or {}
        lines.append(
            f"last drain: {when(drain.get('finished_at'))}"
            + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(done.items())) + ")" if done else "")
        )
    totals = {k: v for k, v in (daemon.get("totals") or {}).items() if v}
    if totals:
        lines.append("since start: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
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


def collect_status(config: Config, *, every: bool = False) -> dict[str, Any]:
    """Live state from a running daemon when there is one, else from the database;
    with `every`, all failed and waiting rows rather than the first few."""
    try:
        from objlib_daemon.daemon.control import request
    except ModuleNotFoundError:
        request = None
    from objlib_daemon.state.lock import holder

    if request is not None:
        live = request(config, {"cmd": "status", "every": every})
        if live is not None:
            live["lock_holder"] = holder(config.state_dir)
            return live
    from objlib_daemon.state.db import Database
    from objlib_daemon.sync.status import SHOWN, database_status
    from objlib_daemon.workspace import check_matches

    db = Database(config.database_path, readonly=True)
    try:
        check_matches(config, db.all_meta())  # another library's database is no status
        data = database_status(db, shown=None if every else SHOWN)
    finally:
        db.close()
    data["daemon"] = None
    data["lock_holder"] = holder(config.state_dir)
    return data


@click.command()
@json_option
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    help="Show it again every N seconds (default 2) until Ctrl-C: a live view of the daemon.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Every failed and waiting file (not the first ten), with attempts and next try.",
)
@click.pass_obj
def status(state: State, as_json: bool, watch: float | None, verbose: int) -> None:
    """Files by state, queue, orphans, missing files, last sync, store and volume."""
    config = state.config()
    detailed = bool(verbose or state.verbose)
    if watch is None:
        data = collect_status(config, every=detailed)
        emit(data, as_json, _status_text(data, verbose=detailed))
        return
    clear = sys.stdout.isatty() and not as_json
    tick = threading.Event()
    try:
        while True:
            data = collect_status(config, every=detailed)
            if clear:  # redraw in place on a terminal; a pipe gets one block per look
                click.echo("\x1b[H\x1b[J", nl=False)
            emit(data, as_json, _status_text(data, verbose=detailed) + ("" if clear else "\n"))
            tick.wait(watch)
    except KeyboardInterrupt:  # the way out of a watch: not an error
        return


@click.command()
@click.argument("query")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--topic", multiple=True, help="Only documents with this AI topic (repeatable).")
@click.option("--course", help="Only documents of this course.")
@click.option(
    "--where",
    help="Metadata filter in AIP-160 syntax, e.g. 'difficulty = \"advanced\" AND year >= 2010'.",
)
@json_option
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

    if not query.strip():
        raise click.BadParameter("say what to look for", param_hint="QUERY")
    clauses = [f"topics:{_quoted(t)}" for t in topic]
    if course:
        clauses.append(f"course = {_quoted(course)}")
    if where:
        clauses.append(f"({where})")
    where = " AND ".join(clauses) or None
    ws = open_workspace(state.config())
    try:
        result = ws.search(query, limit=limit, where=where)
    except PermanentError as exc:
        if where is None or exc.code != 400:
            raise
        raise click.UsageError(f"the store refused the filter {where!r}: {exc}") from None
    finally:
        ws.close()
    data = {
        "query": query,
        "answer": result.answer,
        # Hit numbers (1-based, as printed) each claim of the answer rests on.
        "citations": [
            {"end": c.end, "hits": [i + 1 for i in c.hits]} for c in result.citations
        ],
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
    emit(data, as_json, _search_text(result, bold=sys.stdout.isatty()))


# Characters of a snippet shown per hit: two terminal lines.
SNIPPET = 160


def _search_text(result: SearchResult, *, bold: bool) -> str:
    """The answer with `[n]` after each grounded claim, then hit n: path, score,
    a snippet of the content (no header, cut at a word, markdown `**` rendered
    on a terminal and dropped elsewhere)."""
    from objlib_daemon.library.metadata import strip_header

    lines = []
    if result.answer:
        answer = result.answer
        for citation in sorted(result.citations, key=lambda c: c.end, reverse=True):
            marks = "".join(f"[{i + 1}]" for i in citation.hits)
            answer = answer[: citation.end] + marks + answer[citation.end :]
        lines += [_markdown(answer, bold), ""]
    for i, hit in enumerate(result.hits, 1):
        score = f"  (score {hit.score:.2f})" if hit.score is not None else ""
        lines.append(f"[{i}] {hit.path or hit.display_name}{score}")
        snippet = " ".join(strip_header(hit.snippet).split())
        if len(snippet) > SNIPPET:
            snippet = snippet[:SNIPPET].rsplit(" ", 1)[0] + " …"
        if _topics(hit.metadata):
            lines.append("    topics: " + ", ".join(_topics(hit.metadata)))
        if snippet:
            lines.append("    " + _markdown(snippet, bold))
    if not result.hits:
        lines.append("no matches")
    return "\n".join(lines)


def _markdown(text: str, bold: bool) -> str:
    """`**strong**` as bold on a terminal, as plain words elsewhere."""
    if bold:
        return re.sub(r"\*\*(.+?)\*\*", lambda m: click.style(m.group(1), bold=True), text)
    return text.replace("**", "")


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _topics(metadata: dict[str, Any]) -> list[str]:
    topics = metadata.get("topics")
    return [str(t) for t in topics] if isinstance(topics, list) else []


COMMANDS = [init, status, search]
