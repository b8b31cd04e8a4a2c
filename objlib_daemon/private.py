"""Folders nobody else may read: the state dir and the control socket's runtime dir.

The state dir holds the database (every path of the library, the store's
name) and the lock; the runtime dir holds the socket that pauses or drives
the daemon. Both are created 0700, an existing one of ours is made 0700, and
one that belongs to another user is refused: whoever owns it could read or
swap what we put there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from objlib_daemon.errors import ObjlibError


def private_dir(path: Path) -> None:
    """Create `path` 0700, or make an existing one of ours 0700; refuse another user's."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ObjlibError(
            f"{path} belongs to uid {st.st_uid}, not to us: refusing to keep private files "
            "there; choose a folder of your own (docs/configuration.md, [paths])"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
