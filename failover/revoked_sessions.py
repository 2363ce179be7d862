"""Ended sessions, known to every post: a logout or an administrator's revocation holds
at both posts and through a failover.

A session is the `sid` its tokens carry (security.tokens). Ending one writes a
`SessionRevocation` to etcd under the city's prefix, outside the control state's
namespaces (the standby's follower and snapshots ignore it):

    /citypost/<city>/sessions/revoked/<sid>          one session
    /citypost/<city>/sessions/revoked-users/<user>   every session of the user that
                                                     began before `revoked_at_ms`

with a lease as long as a refresh token lives (plus the verifiers' leeway): by then
every token of the session has expired anyway, since a revoked session gets no new
token. etcd deletes the key when the lease ends; nothing sweeps.

Either post writes, leader or not, and unfenced: a revocation only ever adds a
refusal, two posts writing the same one agree, and an operator logging out at the
standby must not wait for (or depend on) the leader. Every post holds the
revocations in memory (`RevokedSet`), loaded at start and fed by a watch, so the
check on every call is two dictionary lookups, never an etcd read. A post that
writes a revocation applies it at once; the other post sees it when the watch
delivers it (milliseconds). A watch that breaks resumes from the revision after its
last event, and after a compaction the set is read again, so nothing is missed.

`InMemoryRevocations` serves a post without etcd (alone, no failover): what it
holds ends with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote

import aetcd
import grpc
from aetcd import rpc
from google.protobuf.message import DecodeError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from citypost.errors import InfrastructureError, InvalidArgumentError
from failover.control_state import city_root
from failover.etcd_client import etcd_client
from failover.etcd_control_state import is_transient, prefix_range_end
from protos.citypost.v1 import auth_pb2
from security.pki_store import Identity

log = logging.getLogger(__name__)

SESSIONS = "sessions/"
REVOKED_SESSION = SESSIONS + "revoked/"
REVOKED_USER = SESSIONS + "revoked-users/"
# Before a watch is opened again after it broke: a flapping member cannot make us spin.
_REWATCH_PAUSE_S = 0.2


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="seconds")


def revocation_key(revocation: auth_pb2.SessionRevocation) -> str:
    """The key of a revocation, relative to the city root."""
    if revocation.session_id:
        return REVOKED_SESSION + quote(revocation.session_id, safe="-_.~")
    if revocation.user:
        return REVOKED_USER + quote(revocation.user, safe="-_.~")
    raise InvalidArgumentError("a revocation names a session or a user")


def _why(revocation: auth_pb2.SessionRevocation) -> str:
    reason = f" ({revocation.reason})" if revocation.reason else ""
    return f"by {revocation.by or 'unknown'} at {_iso(revocation.revoked_at_ms)}{reason}"


@dataclass
class _Held:
    revocation: auth_pb2.SessionRevocation
    until_ms: int


class RevokedSet:
    """What is revoked: pure, no I/O. `keep_s` bounds how long an entry is held where
    no lease removes it (in memory; a delete event that never came)."""

    def __init__(self, keep_s: float) -> None:
        if keep_s <= 0:
            raise InvalidArgumentError(f"keep_s must be > 0, got {keep_s}")
        self.keep_ms = int(keep_s * 1000)
        self._sessions: dict[str, _Held] = {}
        self._users: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    def add(self, revocation: auth_pb2.SessionRevocation) -> None:
        held = _Held(revocation, revocation.revoked_at_ms + self.keep_ms)
        if revocation.session_id:
            self._sessions[revocation.session_id] = held
        elif revocation.user:
            previous = self._users.get(revocation.user)
            # A user's later revocation covers every earlier one.
            if previous is None or previous.revocation.revoked_at_ms <= revocation.revoked_at_ms:
                self._users[revocation.user] = held
        else:
            raise InvalidArgumentError("a revocation names a session or a user")

    def apply(self, key: str, value: bytes | None) -> None:
        """A change of the revocations' keys (relative to the city root): a put adds, a
        delete (the lease ended) removes. A value that does not parse is ignored."""
        if value is None:
            if key.startswith(REVOKED_SESSION):
                self._sessions.pop(unquote(key[len(REVOKED_SESSION) :]), None)
            elif key.startswith(REVOKED_USER):
                self._users.pop(unquote(key[len(REVOKED_USER) :]), None)
            return
        revocation = auth_pb2.SessionRevocation()
        try:
            revocation.ParseFromString(value)
            self.add(revocation)
        except (DecodeError, InvalidArgumentError):
            log.warning("revoked sessions: %s holds no revocation: ignored", key)

    def prune(self, now_ms: int) -> None:
        """Forget what no unexpired token can be refused for any more."""
        for table in (self._sessions, self._users):
            for name in [n for n, held in table.items() if held.until_ms < now_ms]:
                del table[name]

    def refusal(self, session_id: str, user: str, issued_at: float) -> str | None:
        """Why a token of this session (issued at `issued_at`, Unix seconds) is refused,
        or None if nothing revoked it."""
        held = self._sessions.get(session_id)
        if held is not None:
            revocation = held.revocation
            what = "ended (logout)" if revocation.by == revocation.user else "revoked"
            return f"session {session_id} was {what} {_why(revocation)}: log in again"
        held = self._users.get(user)
        if held is not None and issued_at * 1000 <= held.revocation.revoked_at_ms:
            return (
                f"every session of {user} begun before "
                f"{_iso(held.revocation.revoked_at_ms)} was revoked {_why(held.revocation)}: "
                "log in again"
            )
        return None


class SessionRevocations(Protocol):
    """What the authorizer and the AuthService ask of the revocations."""

    def refusal(self, session_id: str, user: str, issued_at: float) -> str | None: ...

    async def revoke(self, revocation: auth_pb2.SessionRevocation) -> None: ...


class InMemoryRevocations:
    """A post alone (no etcd): revocations held by this process only."""

    def __init__(self, keep_s: float, *, now: Callable[[], float] = time.time) -> None:
        self._set = RevokedSet(keep_s)
        self._now = now

    def refusal(self, session_id: str, user: str, issued_at: float) -> str | None:
        return self._set.refusal(session_id, user, issued_at)

    async def revoke(self, revocation: auth_pb2.SessionRevocation) -> None:
        self._set.prune(int(self._now() * 1000))
        self._set.add(revocation)


class EtcdRevocations:
    """The city's revocations in etcd, mirrored in memory by a watch (module docstring).

    `start()` reads them (before the post serves) and follows them; `revoke()` returns
    once etcd committed the revocation. etcd unreachable: retried for `retry_for_s`,
    then InfrastructureError.
    """

    def __init__(
        self,
        client: aetcd.Client,
        city: str,
        *,
        keep_s: float,
        call_timeout_s: float = 5.0,
        retry_for_s: float = 10.0,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._root = city_root(city)
        self._prefix = (self._root + SESSIONS).encode()
        self._set = RevokedSet(keep_s)
        self._lease_ttl = math.ceil(keep_s)
        self._call_timeout_s = call_timeout_s
        self._retry_for_s = retry_for_s
        self._owns_client = owns_client
        self._task: asyncio.Task[None] | None = None
        self._revision = 0  # the last revision applied to the set
        self.loaded = asyncio.Event()

    @classmethod
    def from_endpoints(
        cls,
        endpoints: list[str],
        city: str,
        *,
        keep_s: float,
        tls: Identity | None = None,
        call_timeout_s: float = 5.0,
    ) -> EtcdRevocations:
        client = etcd_client(endpoints, timeout=call_timeout_s, tls=tls)
        return cls(client, city, keep_s=keep_s, call_timeout_s=call_timeout_s, owns_client=True)

    def __len__(self) -> int:
        return len(self._set)

    # --- the per-call check and the write ---------------------------------------------

    def refusal(self, session_id: str, user: str, issued_at: float) -> str | None:
        return self._set.refusal(session_id, user, issued_at)

    async def revoke(self, revocation: auth_pb2.SessionRevocation) -> None:
        key = (self._root + revocation_key(revocation)).encode()
        value = revocation.SerializeToString()

        async def write() -> None:
            await self._client.connect()
            lease = await self._client.leasestub.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=self._lease_ttl),
                timeout=self._call_timeout_s,
                metadata=self._metadata(),
            )
            await self._client.kvstub.Put(
                rpc.PutRequest(key=key, value=value, lease=lease.ID),
                timeout=self._call_timeout_s,
                metadata=self._metadata(),
            )

        await self._retried(f"revoking {revocation_key(revocation)}", write)
        self._set.add(revocation)  # this post refuses at once, not when the watch comes

    # --- following etcd ----------------------------------------------------------------

    async def start(self) -> None:
        """Read every revocation, then follow them; returns once they are read."""
        await self._load()
        self.loaded.set()
        self._task = asyncio.create_task(self._follow(), name="revoked-sessions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owns_client:
            await self._client.close()

    def _metadata(self) -> Any:
        meta = getattr(self._client, "metadata", None)
        return tuple(meta) if meta else None

    async def _retried(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self._retry_for_s),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception(is_transient),
                reraise=True,
            ):
                with attempt:
                    return await call()
        except grpc.aio.AioRpcError as exc:
            raise InfrastructureError(
                f"etcd refused or did not answer {what}: {exc.code().name}: {exc.details()}"
            ) from None
        except TimeoutError:
            raise InfrastructureError(f"etcd did not answer {what}") from None

    async def _load(self) -> None:
        async def read() -> Any:
            await self._client.connect()
            return await self._client.kvstub.Range(
                rpc.RangeRequest(key=self._prefix, range_end=prefix_range_end(self._prefix)),
                timeout=self._call_timeout_s,
                metadata=self._metadata(),
            )

        response = await self._retried("reading the revoked sessions", read)
        fresh = RevokedSet(self._set.keep_ms / 1000)
        root = len(self._root.encode())
        for kv in response.kvs:
            fresh.apply(bytes(kv.key)[root:].decode(), bytes(kv.value))
        self._set = fresh
        self._revision = int(response.header.revision)

    async def _follow(self) -> None:
        """Apply every change after the loaded revision; re-watch when a stream breaks,
        reload after a compaction. Never raises but for cancellation."""
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revoked sessions: watch broke (%s): watching again", exc)
            await asyncio.sleep(_REWATCH_PAUSE_S)

    async def _watch_once(self) -> None:
        await self._client.connect()
        stub = rpc.WatchStub(self._client.channel)
        call = stub.Watch(metadata=(("hasleader", "true"), *(self._metadata() or ())))
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=self._prefix,
                        range_end=prefix_range_end(self._prefix),
                        start_revision=self._revision + 1,
                    )
                )
            )
            root = len(self._root.encode())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF or response.canceled:
                    return
                if response.compact_revision:
                    log.warning("revoked sessions: compacted past the watch: reading them again")
                    await self._load()
                    return
                for event in response.events:
                    deleted = event.type == rpc.Event.DELETE
                    self._set.apply(
                        bytes(event.kv.key)[root:].decode(),
                        None if deleted else bytes(event.kv.value),
                    )
                    self._revision = int(event.kv.mod_revision)
        finally:
            call.cancel()
