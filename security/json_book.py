"""A book of named records in one JSON file, which the CLI changes and the posts read.

The operators' accounts (security.account_book) and the citizen apps
(security.apps) are each such a file, `{"version": 1, "<section>": [...]}`,
so:

- every read-modify-write holds an exclusive `flock` on a sibling lock file and
  reads the file afresh under it, so no writer loses another's change;
- the file is replaced atomically (security.files.replace_file) with mode 0600:
  a reader sees the old book or the new one, never half, and nobody but the
  owner reads the secrets in it;
- readers re-read when the file changed (inode, mtime, size), so a running post
  sees a change without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from citypost.errors import ConfigError, NotFoundError
from security.files import replace_file

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

FORMAT_VERSION = 1
# File times come from a coarse kernel clock (one tick): two writes within a tick can
# leave the same mtime (and, after a rename, a reused inode and the same size). A file
# changed this recently is read again whatever its stat says (git's "racy" rule).
_RACY_NS = 2_000_000_000

Record = TypeVar("Record", bound="DataclassInstance")


class JsonBook(Generic[Record]):
    """The records (frozen dataclasses) of the file at `path`, by name. A subclass says
    what its file's list is called (`section`) and what one record is (`noun`, for
    errors), and how a record is read from the file and named."""

    section: str
    noun: str

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache: dict[str, Record] = {}
        self._cache_key: tuple[int, int, int] | None = None  # (inode, mtime_ns, size)
        self._guard = threading.Lock()  # the cache, between threads of one process

    def _record(self, item: dict[str, Any]) -> Record:
        """One record from its item in the file; ValueError (or KeyError, TypeError)
        for an item that is not one."""
        raise NotImplementedError

    def _name(self, record: Record) -> str:
        raise NotImplementedError

    # --- for the subclass's methods ------------------------------------------------------

    def _current(self) -> dict[str, Record]:
        """The records, read again only if the file changed since the last read."""
        with self._guard:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self._cache, self._cache_key = {}, None
                return self._cache
            # Stat and read the same open file, so the key always matches the content.
            with os.fdopen(fd, "rb") as file:
                st = os.fstat(file.fileno())
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
                if key != self._cache_key or racy:
                    self._cache = self._parse(file.read())
                    self._cache_key = key
            return self._cache

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Record]]:
        """The records read afresh under the file lock; saved if the block ends normally."""
        with self._locked():
            with self._guard:
                self._cache_key = None  # another process may have written since
            records = dict(self._current())
            yield records
            self._save(records)

    def _update(self, name: str, **changes: Any) -> None:
        """The named record with `changes`; NotFoundError if there is none."""
        with self._changing() as records:
            found = records.get(name)
            if found is None:
                raise NotFoundError(f"no {self.noun} {name!r} in {self.path}")
            records[name] = replace(found, **changes)

    def _remove(self, name: str) -> None:
        with self._changing() as records:
            if records.pop(name, None) is None:
                raise NotFoundError(f"no {self.noun} {name!r} in {self.path}")

    # --- inside --------------------------------------------------------------------------

    def _parse(self, data: bytes) -> dict[str, Record]:
        try:
            raw = json.loads(data)
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {raw.get('version')!r}")
            records = {}
            for item in raw[self.section]:
                record = self._record(item)
                records[self._name(record)] = record
            return records
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(
                f"the {self.section} file {self.path} cannot be read: {error}"
            ) from error

    def _save(self, records: dict[str, Record]) -> None:
        body = {
            "version": FORMAT_VERSION,
            self.section: [asdict(records[name]) for name in sorted(records)],
        }
        replace_file(self.path, json.dumps(body, indent=1) + "\n")
        with self._guard:
            self._cache_key = None  # the next read takes the file just written

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
