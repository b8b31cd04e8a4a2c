"""Open one library's pieces from its config: database, store, engine — checked.

Every command that touches the store goes through `open_workspace`, so the
checks of docs/design.md happen in one place and before any remote call: the
database exists, the configured library and store are the recorded ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select

from objlib_daemon import connect
from objlib_daemon.config import Config
from objlib_daemon.enrichment.enricher import open_enricher
from objlib_daemon.errors import ConfigurationError, Mismatch
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.library.metadata import validate_rules, with_defaults
from objlib_daemon.library.volume import MARKER, MarkerError, read_marker, write_marker
from objlib_daemon.state.db import Database
from objlib_daemon.state.models import File
from objlib_daemon.stores import LOCAL_DEFAULT_NAME
from objlib_daemon.stores.base import SearchResult, Store
from objlib_daemon.sync.applier import Library
from objlib_daemon.sync.passes import Engine


@dataclass
class Workspace:
    config: Config
    db: Database
    library: Library
    store: Store | None
    engine: Engine

    @property
    def meta(self) -> dict[str, str]:
        return self.db.all_meta()

    def search(self, query: str, *, limit: int, where: str | None) -> SearchResult:
        """The store's search, each hit's `document` filled from the files table
        when the store did not name it.

        Why here: Gemini's grounding chunks carry the title, text and custom
        metadata (our `path`) but, in the shape the API documents, not the
        document's name; the database knows which document holds each path.
        """
        assert self.store is not None
        result = self.store.search(query, limit=limit, where=where)
        unnamed = {h.path for h in result.hits if not h.document and h.path}
        if not unnamed:
            return result
        with self.db.reading() as s:
            known = dict(
                s.execute(
                    select(File.path, File.document).where(
                        File.path.in_(unnamed), File.document.is_not(None)
                    )
                ).all()
            )
        hits = [
            replace(h, document=known[h.path]) if not h.document and h.path in known else h
            for h in result.hits
        ]
        return replace(result, hits=hits)

    def close(self) -> None:
        if self.library.enricher is not None:
            self.library.enricher.close()
        if self.store is not None:
            self.store.close()
        self.db.close()


def library_from(
    config: Config, meta: dict[str, str], db: Database, *, skip_enrichment: bool | None = None
) -> Library:
    """The library's local side with its enricher (`skip_enrichment` overrides the config)."""
    root = Path(meta.get("root") or config.require_root())
    skip = config.sync.skip_enrichment if skip_enrichment is None else skip_enrichment
    rules = with_defaults(config.metadata_rules)
    if config.metadata_rules:  # a placeholder naming no group or filter: said now, not per file
        try:
            validate_rules(config.metadata_rules)
        except ValueError as exc:
            raise ConfigurationError(f"[[metadata.rules]]: {exc}") from None
    enricher = open_enricher(
        config,
        db,
        library_id=meta["library_id"],
        backend=meta["store_backend"],
        rules=rules,
        skip=skip,
    )
    return Library(
        root=root,
        library_id=meta["library_id"],
        eligibility=Eligibility.from_config(config.library),
        rules=rules,
        skip_enrichment=skip,
        enricher=enricher,
        no_text=config.library.no_text,
    )


def check_matches(config: Config, meta: dict[str, str]) -> None:
    """The configured library and store must be the ones recorded (exit 4 otherwise)."""
    if "library_id" not in meta:
        raise ConfigurationError(
            "the state database has no library recorded: run `objlibd init --library PATH`"
        )
    root = config.require_root()
    if os.path.abspath(root) != os.path.abspath(meta["root"]):
        raise Mismatch(
            f"config says library root {root}, the database records {meta['root']}: "
            "fix [library] root, or use a separate state dir for another library"
        )
    backend, name = config.store.backend, config.store.name
    recorded = {meta.get("store_name"), meta.get("store_display_name")} - {None}
    if backend != meta.get("store_backend") or (name and name not in recorded):
        raise Mismatch(
            f"config names store {backend}:{name or '(default)'}, the database records "
            f"{meta.get('store_backend')}:{meta.get('store_name')}; objlibd writes only to "
            "the recorded store. Fix [store] in the config, or use a separate state dir"
        )


def open_workspace(
    config: Config, *, readonly: bool = False, with_store: bool = True, skip_enrichment=None
) -> Workspace:
    db = Database(config.database_path, readonly=readonly)
    try:
        meta = db.all_meta()
        check_matches(config, meta)
        library = library_from(config, meta, db, skip_enrichment=skip_enrichment)
        store = None
        if with_store:
            store = connect.open_store(
                config, backend=meta["store_backend"], name=meta.get("store_name", "")
            )
        return Workspace(config, db, library, store, Engine(db, store, library, config))
    except BaseException:
        db.close()
        raise


def init_library(
    config: Config,
    root: Path,
    *,
    backend: str,
    store_name: str,
    store_display_name: str | None = None,
    adopt: bool = False,
) -> tuple[str, bool]:
    """Write or read the marker, create the database, record library and store.

    Returns (library_id, created_marker).
    """
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise ConfigurationError(f"library root {root} is not a folder: check the path")
    with _undone_on_failure(config.database_path):
        return _record_library(config, root, backend, store_name, store_display_name, adopt=adopt)


@contextmanager
def _undone_on_failure(database: Path) -> Iterator[None]:
    """A failed `init` leaves no state behind: the state dir or the database it
    created is removed, so a retry starts clean (issue 15, finding 1)."""
    created = [p for p in (database.parent, database) if not p.exists()]
    try:
        yield
    except BaseException:
        if created:
            first = created[0]
            if first.is_dir():
                shutil.rmtree(first, ignore_errors=True)
            else:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{first}{suffix}").unlink(missing_ok=True)
        raise


def _record_library(
    config: Config,
    root: Path,
    backend: str,
    store_name: str,
    store_display_name: str | None,
    *,
    adopt: bool,
) -> tuple[str, bool]:
    db = Database(config.database_path, create=True)
    try:
        meta = db.all_meta()
        # The store binding is checked before the marker is written: a refused
        # init must not leave a marker behind either.
        known = {meta.get("store_name"), meta.get("store_display_name")} - {None}
        if meta.get("store_backend") and (
            meta["store_backend"] != backend or (store_name and store_name not in known)
        ):
            raise Mismatch(
                f"this state dir is bound to store {meta['store_backend']}:"
                f"{meta.get('store_name')}; use another state dir for another store"
            )
        try:
            marker = read_marker(root)
        except MarkerError as exc:
            raise ConfigurationError(f"{exc}: remove or repair {root / MARKER}") from None
        recorded = meta.get("library_id")
        if marker is None:
            if recorded and not adopt:
                raise Mismatch(
                    f"this state dir already tracks library {recorded} at {meta.get('root')}; "
                    "use another state dir, or pass --adopt to move it to this folder"
                )
            library_id = write_marker(root, recorded)
            created = True
        else:
            library_id = str(marker["library_id"])
            created = False
            if recorded and recorded != library_id and not adopt:
                raise Mismatch(
                    f"{root / MARKER} names library {library_id}, but this state dir tracks "
                    f"{recorded}; pass --adopt to take this folder over, or use another state dir"
                )
        with db.session() as s:
            db.set_meta(
                s,
                library_id=library_id,
                root=str(root),
                store_backend=backend,
                store_name=meta.get("store_name") or store_name or LOCAL_DEFAULT_NAME,
                store_display_name=store_display_name or meta.get("store_display_name"),
            )
        return library_id, created
    finally:
        db.close()


def expect_adoption(config: Config) -> int:
    """After `init`: how many documents of this library the store already holds with no
    row (a lost or rebuilt database); the next sync or drain adopts them (sync/recovery.py)."""
    ws = open_workspace(config)
    try:
        return ws.engine.recovery.expect_adoption()
    finally:
        ws.close()
