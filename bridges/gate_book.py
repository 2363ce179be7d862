"""The downlink gate's fence, apart from MQTT: the mark, and what to do with a command.

The mark is the highest epoch the gate knows a leader held. Only etcd confirms
an epoch (`raise_epoch`: the leader watch, the gate's periodic read of the
leader key, and the read the gate makes when a command asks for it), never a
command frame: a frame is signed by a post, and a post's key is no proof that
its epoch was ever elected, so a frame carrying a made-up epoch must not raise
the mark and fence the real leader out.

`decide` answers, for a command of epoch e and the mark m:
- e < m: DROP_STALE (a deposed leader's);
- e == m (and m >= 1: no leader has epoch 0, etcd's revisions start at 1):
  FORWARD, or PERSIST_FIRST while m is not yet on disk;
- e > m: CONFIRM, the I/O shell reads the leader key now (the leader watch may
  lag the new leader's first command by a few milliseconds), calls `raise_epoch`
  with what etcd said, and decides again with `after_confirm=True`: an epoch
  still above the mark is then DROP_UNCONFIRMED, counted and never forwarded.

The mark must survive the gate's own restart, else a restarted gate would let
a deposed leader's commands through again, so the first command of a new mark
is forwarded only once the mark is on disk: `decide` answers PERSIST_FIRST and
the I/O shell writes the mark (`store_mark`), tells the book (`mark_persisted`),
then forwards. A failed write leaves the book's durable mark where it was, so
the next command of that epoch asks again.

The gate does not deduplicate by command_id: a new leader re-sends its
unacknowledged commands under its own epoch with the same command_id, and the
devices execute a command_id at most once.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson

from bridges.downlink_frame import decode_header
from citypost.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
)

MARK_FILE_VERSION = 1


class Verdict(StrEnum):
    FORWARD = "forward"
    PERSIST_FIRST = "persist_first"  # forward, but only after the new mark is on disk
    DROP_STALE = "drop_stale"
    # Above the mark: ask etcd for the leader's epoch (`raise_epoch`), then decide again.
    CONFIRM = "confirm"
    # Still above the mark once etcd was asked: no leader holds that epoch.
    DROP_UNCONFIRMED = "drop_unconfirmed"


class DropReason(StrEnum):
    """Why the gate did not forward a well-formed command."""

    STALE_EPOCH = "stale_epoch"
    PERSIST_FAILED = "persist_failed"  # the new mark could not be written: not safe to forward
    FORWARD_REFUSED = "forward_refused"  # the broker refused the forwarded publish
    # Signed, but its epoch is above the leader's epoch etcd gave: a post's key signed
    # an epoch nobody was elected with (a stolen key, a bug), or a leader gone by then.
    UNCONFIRMED_EPOCH = "unconfirmed_epoch"


class GateStateError(FailedPreconditionError):
    """The gate's high-water-mark file exists but cannot be read as one.

    Never treated as "no mark": starting from 0 would reopen the fence to every
    deposed leader. An operator inspects the file (and the leader key's epoch) first.
    """


class GateBook:
    """The mark (the highest epoch etcd confirmed), the part of it known durable, and
    counters. Thread-safe."""

    def __init__(self, persisted_epoch: int = 0) -> None:
        # A persisted mark was confirmed when it was written: it is the mark again.
        _check_epoch(persisted_epoch)
        self._lock = threading.Lock()
        self._highest = persisted_epoch
        self._persisted = persisted_epoch
        self._forwarded = 0
        self._dropped: Counter[DropReason] = Counter()

    def decide(self, epoch: int, *, after_confirm: bool = False) -> Verdict:
        """The fate of a command of this epoch; never moves the mark.

        `after_confirm`: etcd was just asked and its answer given to `raise_epoch`, so
        an epoch above the mark is dropped (DROP_UNCONFIRMED) instead of asking again.
        Drops are counted here; the caller counts forwards (`count_forwarded`) once it
        has actually forwarded.
        """
        _check_epoch(epoch)
        with self._lock:
            if epoch < self._highest:
                self._dropped[DropReason.STALE_EPOCH] += 1
                return Verdict.DROP_STALE
            if epoch == self._highest and epoch > 0:
                return Verdict.PERSIST_FIRST if epoch > self._persisted else Verdict.FORWARD
            if not after_confirm:
                return Verdict.CONFIRM
            self._dropped[DropReason.UNCONFIRMED_EPOCH] += 1
            return Verdict.DROP_UNCONFIRMED

    def raise_epoch(self, epoch: int) -> bool:
        """A leader's epoch read from etcd's leader key: the only way the mark rises.

        Fences every older epoch at once. True when the caller must persist `epoch`
        (then call `mark_persisted`); False when the mark was already there.
        """
        _check_epoch(epoch)
        with self._lock:
            self._highest = max(self._highest, epoch)
            return epoch > self._persisted

    def mark_persisted(self, epoch: int) -> None:
        """`epoch` is durably written; never lowers what is known durable.

        FailedPreconditionError above the mark: only a confirmed epoch is written, and
        writing one must not confirm it.
        """
        _check_epoch(epoch)
        with self._lock:
            if epoch > self._highest:
                raise FailedPreconditionError(
                    f"epoch {epoch} persisted above the mark {self._highest}: "
                    "only an epoch etcd confirmed (raise_epoch) may be written"
                )
            self._persisted = max(self._persisted, epoch)

    def count_forwarded(self) -> None:
        with self._lock:
            self._forwarded += 1

    def count_dropped(self, reason: DropReason) -> None:
        with self._lock:
            self._dropped[reason] += 1

    @property
    def highest_epoch(self) -> int:
        with self._lock:
            return self._highest

    @property
    def persisted_epoch(self) -> int:
        with self._lock:
            return self._persisted

    @property
    def forwarded(self) -> int:
        with self._lock:
            return self._forwarded

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return {reason.value: n for reason, n in self._dropped.items()}


def _check_epoch(epoch: int) -> None:
    if type(epoch) is not int or epoch < 0:
        raise InvalidArgumentError(f"epoch must be an integer >= 0, got {epoch!r}")


# --- the command frame's header ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameHeader:
    epoch: int
    command_id: str  # canonical lowercase UUID


def read_frame_header(data: bytes) -> FrameHeader:
    """Epoch and command_id of a command frame; DecodeError(BAD_ENVELOPE) if it has none.

    Only the header: the gate fences, it does not need to understand the action.
    """
    epoch, command_id = decode_header(data)
    return FrameHeader(epoch, command_id)


# --- the mark on disk ----------------------------------------------------------------------


def encode_mark(epoch: int) -> bytes:
    _check_epoch(epoch)
    return orjson.dumps({"version": MARK_FILE_VERSION, "highest_epoch": epoch}) + b"\n"


def decode_mark(raw: bytes, *, where: str = "the gate's mark") -> int:
    """The epoch in a mark file's bytes; GateStateError for anything else."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GateStateError(f"{where} is not JSON ({exc}); refusing to reset the fence") from exc
    if type(obj) is not dict or obj.get("version") != MARK_FILE_VERSION:
        raise GateStateError(
            f"{where} is not a version-{MARK_FILE_VERSION} mark; refusing to reset the fence"
        )
    epoch = obj.get("highest_epoch")
    if type(epoch) is not int or epoch < 0:
        raise GateStateError(
            f"{where} has no highest_epoch >= 0 (got {epoch!r}); refusing to reset the fence"
        )
    return epoch


def load_mark(path: Path) -> int:
    """The persisted mark; 0 when the file does not exist (a gate that never forwarded)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise GateStateError(f"cannot read the gate's mark {path}: {exc}") from exc
    return decode_mark(raw, where=str(path))


def store_mark(path: Path, epoch: int) -> None:
    """Write the mark atomically: temp file, fsync, rename, fsync of the directory.

    A crash leaves either the old mark or the new one, never a torn file.
    Raises OSError on failure (the caller must then not forward).
    """
    payload = encode_mark(epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must be durable
    finally:
        os.close(dir_fd)
