"""Files the city's security keeps: replaced whole, never seen half written.

Keys, passwords' hashes, app secrets and sessions are written to a temporary
file beside the target, flushed to disk, then renamed over it: a reader sees
the old file or the new one, and a crash leaves at most a temporary file. The
mode is set on the open file too, since a temporary file left by a crash may
have kept another.

The demo's passwords and its apps' secrets are each such a file: a JSON object
of names and secrets (`load_secrets`, `save_secrets`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from citypost.errors import ConfigError

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


def load_secrets(path: Path) -> dict[str, str]:
    """A JSON object of names and secrets (the demo's passwords, its apps' secrets);
    empty if there is no such file, ConfigError if it cannot be read."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is unreadable: {error}") from None
    return {str(k): str(v) for k, v in raw.items()}


def save_secrets(path: Path, secrets: dict[str, str]) -> None:
    """Replace `path` with `secrets` as `load_secrets` reads them, owner-only."""
    replace_file(path, json.dumps(secrets, indent=1, sort_keys=True))
