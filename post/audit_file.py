"""Every audit entry a post sees, appended to a file of its own as a hash chain with
signed checkpoints (security/audit_chain.py), one JSON object a line.

etcd holds the recent audit only (post.audit_retention_s); the file (audit-<post>.jsonl
in the run dir) holds all of it. Both posts watch the control state, so each writes the
whole audit, whoever wrote it; each adds its own refusals and logins.

A line is the entry's protobuf JSON mapping (int64 as strings, enums by name, defaults
left out) plus `prev` and `hash`; every `checkpoint_every` records, and on `close()`,
a checkpoint signed with the post's certificate key follows (when the file was given
the post's identity). `citypost audit verify FILE` checks a file.

Opened for appending: a restarted post goes on after what it wrote before. It resumes
the chain from the file's last lines (the last hash; the count from the last checkpoint,
read backwards until one). A file begun before the chain existed, or whose last line
was cut short (a crash in a write), gets a start marker first (action
`audit.chain.start`, the reason in its detail): from an old file a new chain starts
there (the lines before it cannot be verified); after a cut line the chain goes on,
and `verify` reports the cut line.

Each line is one `write(2)` on a file opened with O_APPEND, so a reader (ListAudit)
never sees two lines mixed. Calls are serialised by a lock: appends come from the
event loop today, but the file must not depend on that. Not fsync'ed: a crash of the
machine can lose the last lines (the peer post's file keeps the leader's entries).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from protos.citypost.v1 import control_state_pb2
from security.audit_chain import (
    CHAIN_START,
    GENESIS,
    CheckpointSigner,
    is_checkpoint,
    line_of,
    link,
    parse_line,
)
from security.pki_store import IdentityPem

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 100
_BLOCK = 1 << 16
_PRE_CHAIN = (
    "the lines before this one were written before the audit was chained: they cannot be "
    "verified; the chain starts here"
)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --- reading a file backwards ---------------------------------------------------------------


def complete_end(path: Path) -> int:
    """Where the file's last complete line ends (just after its newline; 0 if none):
    bytes past it are a line still being written, or cut short."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _BLOCK)
            file.seek(start)
            found = file.read(end - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
    return 0


def lines_backwards(path: Path, end: int) -> Iterator[tuple[int, bytes]]:
    """The lines of `path` before offset `end`, newest first, each with the offset it
    starts at, without its newline. `end` is a line's start (0, or just after a newline),
    as `complete_end` and the offsets yielded give."""
    with path.open("rb") as file:
        pos, buffer = end, b""  # buffer: the bytes [pos, pos + len(buffer)), read, not yielded
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            file.seek(pos)
            buffer = file.read(size) + buffer
            parts = buffer.split(b"\n")  # the last part is empty: buffer ends with a newline
            whole = parts[1:-1] if pos > 0 else parts[:-1]  # parts[0] may begin before pos
            line_end = pos + len(buffer) - 1  # the newline closing the newest line in buffer
            for part in reversed(whole):
                start = line_end - len(part)
                yield start, part
                line_end = start - 1
            buffer = parts[0] + b"\n" if pos > 0 else b""


def entry_of(record: Mapping[str, Any]) -> control_state_pb2.AuditEntry | None:
    """The AuditEntry a record line holds; None for a checkpoint or a line that is none."""
    if is_checkpoint(record):
        return None
    try:
        return ParseDict(dict(record), control_state_pb2.AuditEntry(), ignore_unknown_fields=True)
    except ParseError:
        return None


def _record_of(entry: control_state_pb2.AuditEntry) -> dict[str, Any]:
    # The protobuf JSON mapping, as the file held before the chain (readers keep working).
    return MessageToDict(entry, preserving_proto_field_name=True)


# --- the chain's state when the file is opened ----------------------------------------------


@dataclass(frozen=True)
class _Resume:
    head: str  # the hash the next line links to
    count: int  # records since the chain's start
    since_checkpoint: int
    start_reason: str  # non-empty: write a start marker with this detail first


def _resume(path: Path) -> _Resume:
    """Read backwards to the last checkpoint (or the chain's first line): the cost of an
    open is the lines since the last checkpoint, all of the chain in a file never signed."""
    size = path.stat().st_size
    if size == 0:
        return _Resume(GENESIS, 0, 0, "")
    end = complete_end(path)
    cut = size - end  # bytes of a last line without its newline
    head: str | None = None
    since = 0
    unparsable = 0
    for _, line in lines_backwards(path, end):
        try:
            record = parse_line(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError included
            if head is None:
                unparsable += 1
            continue  # inside the chain: `verify` reports it, nothing to count
        chained = isinstance(record.get("hash"), str)
        if head is None:
            if not chained:
                return _Resume(GENESIS, 0, 0, _PRE_CHAIN)
            head = record["hash"]
        if is_checkpoint(record):
            body = record["checkpoint"]
            count = body.get("count") if isinstance(body, dict) else None
            if isinstance(count, int):
                return _Resume(head, count + since, since, _damage(cut, unparsable))
        elif chained:
            since += 1
            if record.get("prev") == GENESIS:
                break  # the chain's first line
    if head is None:
        return _Resume(GENESIS, 0, 0, "no line before this one could be read")
    return _Resume(head, since, since, _damage(cut, unparsable))


def _damage(cut: int, unparsable: int) -> str:
    if not cut and not unparsable:
        return ""
    what = []
    if unparsable:
        what.append(f"{unparsable} unparsable line(s)")
    if cut:
        what.append(f"a last line cut short ({cut} bytes without a newline)")
    return (
        f"reopened after {' and '.join(what)} at the end of the file (a write cut short?): "
        "the chain goes on from the last good line"
    )


# --- the file -------------------------------------------------------------------------------


class AuditFile:
    def __init__(
        self,
        path: Path,
        signer: IdentityPem | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        *,
        now_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if checkpoint_every < 1:
            raise InvalidArgumentError(
                f"checkpoint_every must be at least 1, got {checkpoint_every}"
            )
        self.path = path
        self.checkpoint_every = checkpoint_every
        self._signer = CheckpointSigner(signer) if signer is not None else None
        self._now_ms = now_ms
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: the audit names operators and what they were refused (IEC 62443 SR 3.9).
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._torn = False  # a write failed part-way: the next line starts on a new one
        # Why the last write failed ("" once one succeeds): the post refuses mass commands
        # and overrides meanwhile (api.operator); appends are retried by the post.
        self.failure = ""
        try:
            resume = _resume(path)
            self._head = resume.head
            self.count = resume.count  # records since the chain's start
            self._since_checkpoint = resume.since_checkpoint
            if resume.start_reason:
                # A cut line is ended first, so the marker gets a line of its own.
                self._torn = complete_end(path) != path.stat().st_size
                self._append_record(_record_of(self._marker(resume.start_reason)))
                log.warning("audit file %s: %s", path, resume.start_reason)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def head(self) -> str:
        """The hash of the chain's last line."""
        return self._head

    def append(self, entry: control_state_pb2.AuditEntry) -> None:
        record = _record_of(entry)
        with self._lock:
            self._append_record(record)

    def checkpoint(self) -> bool:
        """Sign the chain as it is now, if there is a signer and something new to sign."""
        with self._lock:
            return self._checkpoint()

    def close(self) -> None:
        """A last checkpoint, then the file is closed; later appends are refused."""
        with self._lock:
            if self._fd is None:
                return
            try:
                self._checkpoint()
            finally:
                os.close(self._fd)
                self._fd = None

    # --- inside (the lock held) ---------------------------------------------------------

    def _marker(self, reason: str) -> control_state_pb2.AuditEntry:
        name = (
            self._signer.principal.name
            if self._signer is not None
            else self.path.stem.removeprefix("audit-")
        )
        return control_state_pb2.AuditEntry(
            entry_id=uuid.uuid4().hex,
            at_ms=self._now_ms(),
            actor=f"post:{name}",
            action=CHAIN_START,
            target=f"file/{self.path.name}",
            outcome=control_state_pb2.AUDIT_OK,
            detail=reason,
        )

    def _append_record(self, record: dict[str, Any]) -> None:
        self._write_linked(record)
        self.count += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.checkpoint_every:
            self._checkpoint()

    def _checkpoint(self) -> bool:
        if self._signer is None or self._since_checkpoint == 0:
            return False
        self._write_linked(
            self._signer.checkpoint(count=self.count, chain_hash=self._head, at_ms=self._now_ms())
        )
        self._since_checkpoint = 0
        return True

    def _write_linked(self, record: dict[str, Any]) -> None:
        linked = link(record, self._head)
        self._write_bytes(line_of(linked).encode("utf-8"))
        self._head = linked["hash"]

    def _write_bytes(self, data: bytes) -> None:
        if self._fd is None:
            raise FailedPreconditionError(f"the audit file {self.path} is closed")
        if self._torn:
            # The torn line stays as it is (`verify` reports it); the chain skips it.
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:  # one write(2) but for a disk running full
                view = view[os.write(self._fd, view) :]
        except OSError as error:
            self._torn = True
            self.failure = f"{self.path.name}: {error.strerror or error}"
            raise
        self._torn = False
        self.failure = ""
