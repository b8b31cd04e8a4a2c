"""Whether a document found in the store is a finished upload to record for a path.

Why a module of its own: the applier (adopting by identity), recovery
(settling interrupted uploads) and `objlibd verify --repair` apply the same
rule, and recovery builds on the applier, so the rule sits below both.
"""

from __future__ import annotations

from objlib_daemon.state.models import File, FileState
from objlib_daemon.stores.base import ACTIVE, RemoteDocument


def adoptable(
    doc: RemoteDocument,
    row: File | None,
    *,
    attempts: dict[str, float],
    disk_sha256: str | None = None,
) -> bool:
    """Is `doc`, one of ours at `row`'s path, a finished upload to record as its document?

    - Only an ACTIVE document: a PENDING one is not indexed yet, a FAILED one never will be.
    - Never one the row already holds, nor a second copy of content it already holds.
    - With an unresolved attempt of that content (`attempts`: sha256 → when the
      earliest began): yes, unless the row changed since that attempt began
      (it then holds something later).
    - Without one, by identity: the row (or, with no row, the file on disk,
      `disk_sha256`) holds exactly this content and no document: a database
      rebuilt or lost after the upload.
    """
    sha = doc.metadata.get("sha256")
    if not isinstance(sha, str) or doc.state != ACTIVE:
        return False
    if row is not None and (row.document == doc.name or row.upload_sha256 == sha):
        return False
    if sha in attempts:
        return row is None or (row.updated_at or 0.0) <= attempts[sha]
    if row is None:
        return disk_sha256 == sha
    return row.document is None and row.state != FileState.PRUNED and row.sha256 == sha
