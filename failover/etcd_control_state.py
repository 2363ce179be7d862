"""The `ControlState` seam backed by etcd: fenced transactions, revision reads, a re-watching watch.

Every key lives under `city_root(city)`; the leader key `<root>leader` fences
every write (compare `create_revision(leader) == epoch`, and the failure
branch reads the leader key, so a fenced writer learns the real epoch in the
same round trip).

aetcd is used for its channel only: its range, transaction and watch helpers
lack what the seam needs (limit and revision on reads, a range in a
transaction's failure branch, a watch that reports where it broke), so the
etcd v3 gRPC stubs it ships are called directly.

Differences from `InMemoryControlState` that etcd imposes:
- Revisions are the etcd store's, shared by every key in the cluster: writes
  outside this city (other cities, the leader key, leases) raise them too, so
  a city's changes do not have consecutive revisions and an empty store is
  not necessarily at revision 1.
- `put_many` takes at most `max_txn_ops` items (etcd's --max-txn-ops, 128 by
  default) and its request must stay under etcd's --max-request-bytes (1.5 MiB).
- A write whose answer was lost (member died, deadline) is retried; puts and
  deletes are idempotent, so the state is the same, but the returned revision
  is the retry's and a watcher may see the same value twice at two revisions.
  A retry that finds itself fenced raises `FencedError` even if the first
  attempt landed: the writer must stop leading either way.
- A watch restarted after its member died resumes from the revision after its
  last delivered change; if a compaction passed that point meanwhile it raises
  `RevisionCompactedError` even when nothing under its prefix changed.
- `list`/`list_raw` refuse `revision < 1` (etcd reads 0 as "latest").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from citypost.errors import CitypostError, InfrastructureError, InvalidArgumentError
from failover.control_state import (
    LEADER_KEY,
    NAMESPACES,
    Change,
    Entry,
    FencedError,
    KeyExistsError,
    M,
    Page,
    RevisionCompactedError,
    StoreBase,
    check_page,
    city_root,
    decode,
    encode_items,
    namespace_of,
)
from failover.etcd_client import etcd_client
from security.pki_store import Identity

log = logging.getLogger(__name__)

T = TypeVar("T")

# etcd's default --max-txn-ops.
DEFAULT_MAX_TXN_OPS = 128
# Like clientv3.WithRequireLeader: a member cut off from its leader ends our watch stream
# instead of keeping it silently open, so we re-watch on a member that has one.
_REQUIRE_LEADER = (("hasleader", "true"),)
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A pause before re-watching after a stream broke, so a flapping member cannot make us spin.
_REWATCH_PAUSE_S = 0.05


# --- pure helpers -------------------------------------------------------------


def in_namespace(key: str) -> bool:
    """True for a control-state record key (the leader key and strangers are not)."""
    return any(key.startswith(ns) and len(key) > len(ns) for ns in NAMESPACES)


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff: up to the end of the keyspace


def encode_txn(
    items: Sequence[tuple[str, Message | None]], *, max_ops: int
) -> list[tuple[str, bytes | None]]:
    """The items checked and encoded as every store does, within etcd's txn size."""
    encoded = encode_items(items)
    if len(encoded) > max_ops:
        raise InvalidArgumentError(
            f"put_many: {len(encoded)} items exceed etcd's {max_ops} operations per "
            "transaction (--max-txn-ops); split the write or raise the limit"
        )
    return encoded


class WatchNotCreatedError(Exception):
    """etcd answered a watch request with something else than "created" (retried)."""


def is_transient(exc: BaseException) -> bool:
    """Failures that say nothing about the request: another attempt (member) may work."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_CODES
    return isinstance(exc, TimeoutError | WatchNotCreatedError)


# --- the etcd state -----------------------------------------------------------


class EtcdControlState(StoreBase):
    """A `ControlState` in etcd under `city_root(city)`; only the epoch's leader can write.

    Calls that fail for lack of a reachable member are retried (another member,
    exponential backoff) for `retry_for_s`, then raise `InfrastructureError`
    naming the endpoints. No gRPC error leaves this class.
    """

    def __init__(
        self,
        client: aetcd.Client,
        city: str,
        *,
        endpoints: Sequence[str] | None = None,
        call_timeout_s: float = 5.0,
        retry_for_s: float = 10.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        owns_client: bool = False,
    ) -> None:
        if call_timeout_s <= 0:
            raise InvalidArgumentError(f"call_timeout_s must be > 0, got {call_timeout_s}")
        if retry_for_s < 0:
            raise InvalidArgumentError(f"retry_for_s must be >= 0, got {retry_for_s}")
        if max_txn_ops < 1:
            raise InvalidArgumentError(f"max_txn_ops must be >= 1, got {max_txn_ops}")
        self._client = client
        self._root = city_root(city)
        self._city = city
        # For error messages; aetcd keeps the gRPC target ("ipv4:h:p,h:p" and the last port).
        self._endpoints = (
            ",".join(endpoints)
            if endpoints
            else f"{getattr(client, '_host', '?')}:{getattr(client, '_port', '?')}"
        )
        self._call_timeout_s = call_timeout_s
        self._retry_for_s = retry_for_s
        self._max_txn_ops = max_txn_ops
        self._owns_client = owns_client
        self._leader = (self._root + LEADER_KEY).encode()
        self._closed = False
        self._watch_calls: set[Any] = set()

    @classmethod
    def from_endpoints(
        cls,
        endpoints: Sequence[str],
        city: str,
        *,
        call_timeout_s: float = 5.0,
        retry_for_s: float = 10.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        tls: Identity | None = None,
    ) -> EtcdControlState:
        """A state with its own client on every member; `close()` closes the client too."""
        return cls(
            etcd_client(endpoints, timeout=call_timeout_s, tls=tls),
            city,
            endpoints=endpoints,
            call_timeout_s=call_timeout_s,
            retry_for_s=retry_for_s,
            max_txn_ops=max_txn_ops,
            owns_client=True,
        )

    @property
    def city(self) -> str:
        return self._city

    @property
    def root(self) -> str:
        return self._root

    @property
    def max_txn_ops(self) -> int:
        return self._max_txn_ops

    async def close(self) -> None:
        """End every watch of this state (their iterators stop); close the client if owned."""
        self._closed = True
        for call in list(self._watch_calls):
            call.cancel()
        if self._owns_client:
            await self._client.close()

    # -- plumbing

    def _metadata(self) -> Any:
        meta = getattr(self._client, "metadata", None)
        return tuple(meta) if meta else None

    def _unreachable(self, what: str, exc: grpc.aio.AioRpcError) -> InfrastructureError:
        return InfrastructureError(
            f"etcd at {self._endpoints} unreachable for {what} "
            f"(tried for {self._retry_for_s:g} s): {exc.code().name}: {exc.details()}"
        )

    async def _kv(self) -> Any:
        await self._client.connect()
        return self._client.kvstub

    def _retrying(self) -> AsyncRetrying:
        """Another member, with exponential backoff, while none answers (`retry_for_s`)."""
        return AsyncRetrying(
            stop=stop_after_delay(self._retry_for_s),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )

    async def _call(self, what: str, attempt_call: Callable[[Any], Awaitable[T]]) -> T:
        """One unary call on the KV stub, retried while no member answers."""
        kv = await self._kv()
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await attempt_call(kv)
        except grpc.aio.AioRpcError as exc:
            if is_transient(exc):
                raise self._unreachable(what, exc) from None
            raise  # the caller translates what it knows, `_refused` the rest
        raise AssertionError("unreachable: tenacity returns or raises")

    def _refused(self, what: str, exc: grpc.aio.AioRpcError) -> CitypostError:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            # e.g. "too many operations in txn request", "request is too large"
            return InvalidArgumentError(f"etcd refused {what}: {exc.details()}")
        return InfrastructureError(
            f"etcd at {self._endpoints} refused {what}: {exc.code().name}: {exc.details()}"
        )

    async def _range(self, what: str, request: Any) -> Any:
        async def attempt(kv: Any) -> Any:
            return await kv.Range(request, timeout=self._call_timeout_s, metadata=self._metadata())

        try:
            return await self._call(what, attempt)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
                revision = int(request.revision)
                raise RevisionCompactedError(
                    revision, await self._compact_revision(revision)
                ) from None
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "future" in details:
                raise InvalidArgumentError(
                    f"revision {request.revision} is in the future "
                    f"(current {await self.revision()})"
                ) from None
            raise self._refused(what, exc) from None

    # -- leadership

    async def leader_epoch(self) -> int:
        """The create_revision of the leader key: the current leader's epoch, 0 if none."""
        response = await self._range("reading the leader key", rpc.RangeRequest(key=self._leader))
        return int(response.kvs[0].create_revision) if response.kvs else 0

    # -- reads

    async def revision(self) -> int:
        response = await self._range(
            "reading the revision", rpc.RangeRequest(key=self._leader, count_only=True)
        )
        return int(response.header.revision)

    async def get(self, key: str, message_type: type[M]) -> M | None:
        namespace_of(key)
        response = await self._range(
            f"reading {key}", rpc.RangeRequest(key=(self._root + key).encode())
        )
        if not response.kvs:
            return None
        return decode(key, bytes(response.kvs[0].value), message_type)

    async def list_raw(
        self,
        prefix: str,
        *,
        limit: int = 100,
        start_after: str = "",
        revision: int | None = None,
    ) -> Page[bytes]:
        check_page(limit)
        if revision is not None and revision < 1:
            raise InvalidArgumentError(f"revision must be >= 1, got {revision}")
        root = self._root.encode()
        end = prefix_range_end(root + prefix.encode())
        start = root + (start_after.encode() + b"\0" if start_after >= prefix else prefix.encode())
        at = revision or 0
        entries: list[Entry[bytes]] = []
        more = False
        # Ask one more than the page to know whether there is a next page; keys that are
        # no record (the leader key, under prefix "") are skipped, so loop until enough.
        while True:
            response = await self._range(
                f"listing {prefix!r}",
                rpc.RangeRequest(key=start, range_end=end, limit=limit + 1, revision=at),
            )
            at = int(response.header.revision) if at == 0 else at
            for kv in response.kvs:
                key = bytes(kv.key)[len(root) :].decode()
                if not in_namespace(key):
                    continue
                if len(entries) == limit:
                    more = True
                    break
                entries.append(Entry(key, bytes(kv.value), int(kv.mod_revision)))
            if more or not response.more or not response.kvs:
                break
            start = bytes(response.kvs[-1].key) + b"\0"
        return Page(tuple(entries), at, entries[-1].key if more else None)

    # -- writes

    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int:
        try:
            encoded = encode_txn(items, max_ops=self._max_txn_ops)
        except InvalidArgumentError:
            # The in-memory state fences before it validates: a deposed writer hears so first.
            await self._raise_if_fenced(epoch)
            raise
        if epoch < 1:
            # create_revision == 0 would match an absent leader key: no epoch below 1 leads.
            raise FencedError(epoch, await self.leader_epoch())
        root = self._root
        ops = [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=(root + k).encode()))
            if v is None
            else rpc.RequestOp(request_put=rpc.PutRequest(key=(root + k).encode(), value=v))
            for k, v in encoded
        ]
        absent_keys = [(root + key).encode() for key in absent]
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=self._leader,
                    target=rpc.Compare.CREATE,
                    result=rpc.Compare.EQUAL,
                    create_revision=epoch,
                ),
                *(
                    rpc.Compare(
                        key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
                    )
                    for key in absent_keys
                ),
            ],
            success=ops,
            # Which compare failed: the leader key, then each key that had to be absent.
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=key, keys_only=True))
                for key in (self._leader, *absent_keys)
            ],
        )

        async def attempt(kv: Any) -> Any:
            return await kv.Txn(request, timeout=self._call_timeout_s, metadata=self._metadata())

        what = f"writing {len(ops)} key(s)"
        try:
            response = await self._call(what, attempt)
        except grpc.aio.AioRpcError as exc:
            raise self._refused(what, exc) from None
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            leader_epoch = int(kvs[0].create_revision) if kvs else 0
            if leader_epoch != epoch:
                raise FencedError(epoch, leader_epoch)
            for key, answer in zip(absent, response.responses[1:], strict=True):
                if answer.response_range.kvs:
                    raise KeyExistsError(key)
            raise InfrastructureError(f"etcd refused {what} and no compare explains it")
        return int(response.header.revision)

    async def _raise_if_fenced(self, epoch: int) -> None:
        leader_epoch = await self.leader_epoch()
        if epoch < 1 or epoch != leader_epoch:
            raise FencedError(epoch, leader_epoch)

    # -- watch

    async def _open_watch(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> tuple[Any, Any]:
        """A watch stream from `start_revision` and its "created" answer, retried while no
        member answers."""
        await self._client.connect()
        stub = rpc.WatchStub(self._client.channel)
        metadata = _REQUIRE_LEADER + (self._metadata() or ())
        request = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision
            )
        )

        async def attempt() -> tuple[Any, Any]:
            call = stub.Watch(metadata=metadata)
            try:
                await call.write(request)
                response = await asyncio.wait_for(call.read(), self._call_timeout_s)
                if response is grpc.aio.EOF or not response.created:
                    raise WatchNotCreatedError(f"watch not created: {response}")
            except BaseException:
                call.cancel()
                raise
            return call, response

        try:
            async for retry in self._retrying():
                with retry:
                    return await attempt()
        except grpc.aio.AioRpcError as exc:
            if is_transient(exc):
                raise self._unreachable("watching", exc) from None
            raise self._refused("a watch", exc) from None
        except (TimeoutError, WatchNotCreatedError) as exc:
            raise InfrastructureError(
                f"etcd at {self._endpoints} did not create a watch "
                f"(tried for {self._retry_for_s:g} s): {exc}"
            ) from None
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _compact_revision(self, revision: int) -> int:
        """etcd's compaction point, which only a watch from a compacted revision reports."""
        call, created = await self._open_watch(self._leader, b"", revision)
        try:
            if created.compact_revision:
                return int(created.compact_revision)
            response = await asyncio.wait_for(call.read(), self._call_timeout_s)
            if response is not grpc.aio.EOF and response.compact_revision:
                return int(response.compact_revision)
        except (TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            call.cancel()
        return revision + 1  # at least: the revision itself is gone

    async def watch(self, from_revision: int, *, prefix: str = "") -> AsyncGenerator[Change, None]:
        if from_revision < 1:
            raise InvalidArgumentError(f"from_revision must be >= 1, got {from_revision}")
        key = (self._root + prefix).encode()
        range_end = prefix_range_end(key)
        root_len = len(self._root.encode())
        # Everything before next_revision was delivered: a new stream starts there, so a
        # change is never skipped nor repeated. A response holds whole revisions.
        next_revision = from_revision
        while not self._closed:
            call, response = await self._open_watch(key, range_end, next_revision)
            self._watch_calls.add(call)
            try:
                while not self._closed:
                    if response.compact_revision:
                        raise RevisionCompactedError(next_revision, int(response.compact_revision))
                    if response.canceled:
                        log.info(
                            "watch cancelled by etcd (%s): re-watching", response.cancel_reason
                        )
                        break
                    for event in response.events:
                        change_key = bytes(event.kv.key)[root_len:].decode()
                        if in_namespace(change_key):
                            deleted = event.type == rpc.Event.DELETE
                            value = None if deleted else bytes(event.kv.value)
                            yield Change(int(event.kv.mod_revision), change_key, value)
                    if response.events:
                        next_revision = int(response.events[-1].kv.mod_revision) + 1
                    try:
                        response = await call.read()
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if self._closed and (task is None or task.cancelling() == 0):
                            return  # close() cancelled the stream, not our caller
                        raise
                    except grpc.aio.AioRpcError as exc:
                        if not is_transient(exc):
                            raise self._refused("a watch", exc) from None
                        log.info(
                            "watch of %s broke before revision %d (%s): re-watching",
                            self._root + prefix,
                            next_revision,
                            exc.code().name,
                        )
                        break
                    if response is grpc.aio.EOF:
                        break
            finally:
                self._watch_calls.discard(call)
                call.cancel()
            if not self._closed:
                await asyncio.sleep(_REWATCH_PAUSE_S)
