"""The control state seam: keyed protobuf records, fenced writes, a revisioned watch.

Keys are relative to the city root (etcd: `/citypost/<city>/`) and are built
only by the helpers below. The model is etcd's: one revision counter for the
whole store, raised by one per write transaction; every write is compared
against the leader's epoch (etcd: `create_revision(leader key) == epoch`);
reads may name a past revision for a consistent snapshot across pages; a
watch replays from a revision (inclusive) and then follows live writes. After
a compaction, revisions before it are gone: reads and watches there raise
`RevisionCompactedError` and the caller reloads a snapshot (`read_snapshot`).

`InMemoryControlState` serves a post without etcd and the unit tests. It is
asyncio-safe because no method awaits between its check and its change; it
is not thread-safe (one event loop).
"""

from __future__ import annotations

import asyncio
import bisect
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from citypost.errors import CitypostError, FailedPreconditionError, InvalidArgumentError
from protos.citypost.v1 import control_state_pb2, operations_pb2

M = TypeVar("M", bound=Message)
V = TypeVar("V")

# Namespaces, mirroring DESIGN.md's etcd layout below /citypost/<city>/.
OVERRIDES = "state/overrides/"
ALARMS = "state/alarms/"
TASKS = "state/tasks/"
INCIDENTS = "state/incidents/"
NOTIFICATIONS = "state/notifications/"
LEDGER = "ledger/"
AUDIT = "audit/"
CONFIG = "config/"
IDEMPOTENCY = "idempotency/"

# The record type of each namespace; config/ holds several kinds, so it is unchecked.
RECORD_TYPES: Mapping[str, type[Message]] = {
    OVERRIDES: control_state_pb2.Override,
    ALARMS: operations_pb2.Alarm,
    TASKS: operations_pb2.Task,
    INCIDENTS: operations_pb2.Incident,
    NOTIFICATIONS: operations_pb2.Notification,
    LEDGER: control_state_pb2.CommandRecord,
    AUDIT: control_state_pb2.AuditEntry,
    IDEMPOTENCY: control_state_pb2.IdempotencyRecord,
}
NAMESPACES: tuple[str, ...] = (*RECORD_TYPES, CONFIG)

MAX_PAGE = 1000


class FencedError(FailedPreconditionError):
    """A write from an epoch that is not the current leader's: the writer must stop leading."""

    def __init__(self, epoch: int, leader_epoch: int) -> None:
        super().__init__(f"fenced: epoch {epoch} is not the leader's")
        self.epoch = epoch
        self.leader_epoch = leader_epoch


class KeyExistsError(FailedPreconditionError):
    """A write made on condition that a key was absent found it present (nothing written):
    an idempotency key already used, whose first request's result the caller reads."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} exists already")
        self.key = key


class RevisionCompactedError(FailedPreconditionError):
    """The asked revision was compacted away: reload a snapshot and watch from after it."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {revision} is compacted (history starts at {compact_revision}): "
            "reload a snapshot"
        )
        self.revision = revision
        self.compact_revision = compact_revision


# --- keys -------------------------------------------------------------------

# Outside the namespaces: the election's key, which fences every write.
LEADER_KEY = "leader"


def city_root(city: str) -> str:
    """The etcd prefix of a city's control state; every key above is relative to it."""
    if not city or "/" in city:
        raise InvalidArgumentError(f"city must be a non-empty name without '/', got {city!r}")
    return f"/citypost/{city}/"


def _segment(name: str, value: str) -> str:
    # Ids may hold "/" (a group originator is "<class>/<group>"): escape so one id is one segment.
    if not value:
        raise InvalidArgumentError(f"{name} must not be empty")
    return quote(value, safe="-_.~:@")


def override_key(override_id: str) -> str:
    return OVERRIDES + _segment("override_id", override_id)


def alarm_key(alarm_id: str) -> str:
    return ALARMS + _segment("alarm_id", alarm_id)


def task_key(task_id: str) -> str:
    return TASKS + _segment("task_id", task_id)


def incident_key(incident_id: str) -> str:
    return INCIDENTS + _segment("incident_id", incident_id)


def notification_key(notification_id: str) -> str:
    return NOTIFICATIONS + _segment("notification_id", notification_id)


def ledger_key(command_id: str) -> str:
    return LEDGER + _segment("command_id", command_id)


def audit_key(at_ms: int, entry_id: str) -> str:
    """Time-ordered: a listing of audit/ reads oldest first."""
    if at_ms < 0:
        raise InvalidArgumentError(f"at_ms must be >= 0, got {at_ms}")
    return f"{AUDIT}{at_ms:015d}-{_segment('entry_id', entry_id)}"


def config_key(name: str) -> str:
    return CONFIG + _segment("name", name)


def idempotency_index_key(idempotency_key: str) -> str:
    return IDEMPOTENCY + _segment("idempotency_key", idempotency_key)


def key_id(key: str) -> str:
    """The id a key was built from (the last segment, unescaped)."""
    return unquote(key.rsplit("/", 1)[-1])


def namespace_of(key: str) -> str:
    for namespace in NAMESPACES:
        if key.startswith(namespace) and len(key) > len(namespace):
            return namespace
    raise InvalidArgumentError(f"key {key!r} is in no control-state namespace")


def record_type_for(key: str) -> type[Message] | None:
    """The message type stored under `key`, or None for config/ (several kinds)."""
    return RECORD_TYPES.get(namespace_of(key))


# --- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One key changed at `revision`; `value` is None for a delete."""

    revision: int
    key: str
    value: bytes | None

    @property
    def deleted(self) -> bool:
        return self.value is None

    def decode(self, message_type: type[M]) -> M | None:
        return None if self.value is None else decode(self.key, self.value, message_type)


@dataclass(frozen=True)
class Entry(Generic[V]):
    key: str
    value: V
    mod_revision: int


@dataclass(frozen=True)
class Page(Generic[V]):
    """Entries in key order, read at `revision`.

    `next_start_after` is None on the last page; otherwise pass it back as
    `start_after`, with `revision=page.revision` for a consistent snapshot.
    """

    entries: tuple[Entry[V], ...]
    revision: int
    next_start_after: str | None


@dataclass(frozen=True)
class Snapshot:
    """Every record of the state at `revision`; watch from `revision + 1` to follow."""

    revision: int
    records: Mapping[str, bytes]


def decode(key: str, value: bytes, message_type: type[M]) -> M:
    try:
        return message_type.FromString(value)
    except ProtobufDecodeError as exc:
        raise CitypostError(f"{key}: not a {message_type.DESCRIPTOR.full_name}: {exc}") from exc


# --- the seam ---------------------------------------------------------------


class ControlState(Protocol):
    """Replicated control state. Only the leader writes; every write names its epoch."""

    async def revision(self) -> int:
        """The store's current revision (etcd: the response header's revision)."""
        ...

    async def put(self, key: str, message: Message, *, epoch: int) -> int:
        """Write one record; returns the revision of the write."""
        ...

    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int:
        """Write (None: delete) several keys in one transaction, all or none; one revision.
        With `absent`, only if none of those keys exists (else KeyExistsError, nothing
        written): a first request's check and its write in one round trip."""
        ...

    async def delete(self, key: str, *, epoch: int) -> int:
        """Delete a key; an absent key changes nothing and returns the current revision."""
        ...

    async def get(self, key: str, message_type: type[M]) -> M | None: ...

    async def list(
        self,
        prefix: str,
        message_type: type[M],
        *,
        limit: int = 100,
        start_after: str = "",
        revision: int | None = None,
    ) -> Page[M]: ...

    async def list_raw(
        self,
        prefix: str,
        *,
        limit: int = 100,
        start_after: str = "",
        revision: int | None = None,
    ) -> Page[bytes]: ...

    def watch(self, from_revision: int, *, prefix: str = "") -> AsyncGenerator[Change, None]:
        """Changes with revision >= from_revision in revision order, then live ones, forever.

        Changes of one transaction share a revision and come in write order.
        `aclose()` the generator to cancel the watch (etcd: the server stream).
        """
        ...


async def read_snapshot(state: ControlState, *, page_size: int = 500) -> Snapshot:
    """Every record at one revision, read page by page (the standby's reload after compaction)."""
    revision = await state.revision()
    records: dict[str, bytes] = {}
    for namespace in NAMESPACES:
        start_after = ""
        while True:
            page = await state.list_raw(
                namespace, limit=page_size, start_after=start_after, revision=revision
            )
            records.update((entry.key, entry.value) for entry in page.entries)
            if page.next_start_after is None:
                break
            start_after = page.next_start_after
    return Snapshot(revision=revision, records=records)


# --- in memory --------------------------------------------------------------


def _check_write(key: str, message: Message | None) -> None:
    expected = record_type_for(key)
    if message is not None and expected is not None and not isinstance(message, expected):
        raise InvalidArgumentError(
            f"{key}: expected a {expected.DESCRIPTOR.full_name}, "
            f"got a {message.DESCRIPTOR.full_name}"
        )


def encode_items(items: Sequence[tuple[str, Message | None]]) -> list[tuple[str, bytes | None]]:
    """A transaction's items checked (namespaced keys, once each, the right record type)
    and serialized; None stays a delete. Every store validates a write this way."""
    seen: set[str] = set()
    encoded: list[tuple[str, bytes | None]] = []
    for key, message in items:
        namespace_of(key)
        if key in seen:
            raise InvalidArgumentError(f"duplicate key in one transaction: {key}")
        seen.add(key)
        _check_write(key, message)
        encoded.append((key, None if message is None else message.SerializeToString()))
    return encoded


def check_page(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgumentError(f"limit must be in 1..{MAX_PAGE}, got {limit}")


class StoreBase(ABC):
    """What every ControlState derives the same way from `list_raw` and `put_many`."""

    @abstractmethod
    async def list_raw(
        self, prefix: str, *, limit: int = 100, start_after: str = "", revision: int | None = None
    ) -> Page[bytes]: ...

    @abstractmethod
    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int: ...

    async def list(
        self,
        prefix: str,
        message_type: type[M],
        *,
        limit: int = 100,
        start_after: str = "",
        revision: int | None = None,
    ) -> Page[M]:
        raw = await self.list_raw(prefix, limit=limit, start_after=start_after, revision=revision)
        entries = tuple(
            Entry(e.key, decode(e.key, e.value, message_type), e.mod_revision) for e in raw.entries
        )
        return Page(entries, raw.revision, raw.next_start_after)

    async def put(self, key: str, message: Message, *, epoch: int) -> int:
        return await self.put_many([(key, message)], epoch=epoch)

    async def delete(self, key: str, *, epoch: int) -> int:
        return await self.put_many([(key, None)], epoch=epoch)


class InMemoryControlState(StoreBase):
    """A `ControlState` in one process, with etcd's revision, history and compaction rules.

    Revisions start at 1 (an empty etcd) and rise by one per transaction that
    changes something. History older than `history_limit` revisions is
    compacted automatically, as etcd's auto-compaction would.
    """

    def __init__(self, *, epoch: int = 0, history_limit: int = 10_000) -> None:
        if epoch < 0:
            raise InvalidArgumentError(f"epoch must be >= 0, got {epoch}")
        if history_limit < 1:
            raise InvalidArgumentError(f"history_limit must be >= 1, got {history_limit}")
        self._epoch = epoch
        self._history_limit = history_limit
        self._revision = 1
        self._compact_revision = 0
        # key -> [(mod_revision, value or None for a delete)], oldest first
        self._versions: dict[str, list[tuple[int, bytes | None]]] = {}
        self._keys: list[str] = []  # sorted keys of _versions
        self._log: list[Change] = []  # changes after the compaction, in revision order
        self._changed = asyncio.Event()
        self._closed = False

    # -- leadership

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """A new leader was elected with `epoch`; writes from any other epoch are fenced."""
        if epoch < self._epoch:
            raise FailedPreconditionError(
                f"epoch only grows: {epoch} is below the current {self._epoch}"
            )
        self._epoch = epoch

    def _fence(self, epoch: int) -> None:
        if epoch < 1 or epoch != self._epoch:
            raise FencedError(epoch, self._epoch)

    # -- reads

    async def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    def _read_revision(self, revision: int | None) -> int:
        if revision is None:
            return self._revision
        if revision > self._revision:
            raise InvalidArgumentError(
                f"revision {revision} is in the future (current {self._revision})"
            )
        if revision < self._compact_revision:
            raise RevisionCompactedError(revision, self._compact_revision)
        return revision

    def _value_at(self, key: str, revision: int) -> tuple[int, bytes | None]:
        versions = self._versions.get(key, ())
        for mod_revision, value in reversed(versions):
            if mod_revision <= revision:
                return mod_revision, value
        return 0, None

    async def get(self, key: str, message_type: type[M]) -> M | None:
        namespace_of(key)
        _, value = self._value_at(key, self._revision)
        return None if value is None else decode(key, value, message_type)

    async def list_raw(
        self,
        prefix: str,
        *,
        limit: int = 100,
        start_after: str = "",
        revision: int | None = None,
    ) -> Page[bytes]:
        check_page(limit)
        at = self._read_revision(revision)
        entries: list[Entry[bytes]] = []
        if start_after >= prefix:
            index = bisect.bisect_right(self._keys, start_after)
        else:
            index = bisect.bisect_left(self._keys, prefix)
        more = False
        for key in self._keys[index:]:
            if not key.startswith(prefix):
                break
            mod_revision, value = self._value_at(key, at)
            if value is None:
                continue
            if len(entries) == limit:
                more = True
                break
            entries.append(Entry(key, value, mod_revision))
        next_start_after = entries[-1].key if more else None
        return Page(tuple(entries), at, next_start_after)

    # -- writes

    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int:
        self._fence(epoch)
        # Validate everything before changing anything: the transaction is all or none.
        encoded = encode_items(items)
        for key in absent:
            if self._value_at(key, self._revision)[1] is not None:
                raise KeyExistsError(key)
        # Like etcd, deleting an absent key is no change and does not raise the revision.
        effective = [
            (key, value)
            for key, value in encoded
            if value is not None or self._value_at(key, self._revision)[1] is not None
        ]
        if not effective:
            return self._revision
        self._revision += 1
        for key, value in effective:
            versions = self._versions.get(key)
            if versions is None:
                versions = self._versions[key] = []
                bisect.insort(self._keys, key)
            versions.append((self._revision, value))
            self._log.append(Change(self._revision, key, value))
        self._wake_watchers()
        if self._revision - self._compact_revision > 2 * self._history_limit:
            self.compact(self._revision - self._history_limit)
        return self._revision

    def compact(self, revision: int) -> None:
        """Drop history before `revision` (etcd's compaction): older reads and watches fail."""
        if revision <= self._compact_revision:
            return
        if revision > self._revision:
            raise InvalidArgumentError(
                f"cannot compact to {revision}, beyond the current revision {self._revision}"
            )
        for key in list(self._versions):
            versions = self._versions[key]
            kept_from = 0
            for i, (mod_revision, _) in enumerate(versions):
                if mod_revision <= revision:
                    kept_from = i
            kept = versions[kept_from:]
            if kept[0][1] is None and kept[0][0] <= revision:
                kept = kept[1:]  # a delete at or before the compaction leaves no trace
            if kept:
                self._versions[key] = kept
            else:
                del self._versions[key]
        self._keys = sorted(self._versions)
        start = bisect.bisect_left(self._log, revision, key=lambda c: c.revision)
        self._log = self._log[start:]
        self._compact_revision = revision

    # -- watch

    def _wake_watchers(self) -> None:
        # One event per generation: setting it wakes every waiter, the fresh one waits again.
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    async def close(self) -> None:
        """End every watch (their iterators stop)."""
        self._closed = True
        self._wake_watchers()

    async def watch(self, from_revision: int, *, prefix: str = "") -> AsyncGenerator[Change, None]:
        if from_revision < 1:
            raise InvalidArgumentError(f"from_revision must be >= 1, got {from_revision}")
        next_revision = from_revision
        while True:
            if next_revision < self._compact_revision:
                raise RevisionCompactedError(next_revision, self._compact_revision)
            changed = self._changed
            index = bisect.bisect_left(self._log, next_revision, key=lambda c: c.revision)
            pending = self._log[index:]
            if pending:
                next_revision = pending[-1].revision + 1
                for change in pending:
                    if change.key.startswith(prefix):
                        yield change
                continue
            if self._closed:
                return
            await changed.wait()


async def list_all(
    state: ControlState, prefix: str, message_type: type[M], *, page_size: int = 500
) -> list[Entry[M]]:
    """Every record under `prefix`, page after page, in key order."""
    out: list[Entry[M]] = []
    start_after = ""
    while True:
        page = await state.list(prefix, message_type, limit=page_size, start_after=start_after)
        out.extend(page.entries)
        if page.next_start_after is None:
            return out
        start_after = page.next_start_after
