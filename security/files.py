"""Files the city's security keeps: replaced whole, never seen half written.

Keys, passwords' hashes, app secrets and sessions are written to a temporary
file beside the target, flushed to disk, then renamed over it: a reader sees
the old file or the new one, and a crash leaves at most a temporary file. The
mode is set on the open file too, since a temporary file left by a crash may
have kept another.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def replace_file(path: Path, data: bytes | str, *, mode: int = PRIVATE) -> None:
    """Replace `path` with `data` atomically, with `mode` (owner-only by default)."""
    raw = data.encode() if isinstance(data, str) else data
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
