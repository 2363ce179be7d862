"""gRPC calls that follow the leader across a list of posts.

Reads go to any post: the one that answered last (so pages come from one
post), failing over to the next on UNAVAILABLE or DEADLINE_EXCEEDED. Writes go
to the leader: a standby refuses them with FAILED_PRECONDITION and the
leader's address in the trailing metadata `x-citypost-leader`; the client
remembers that address and retries there at once. A refusal without the
address (an election is in progress) or an unreachable post makes the write
try the other posts, again and again with exponential backoff and jitter,
for a bounded time: a write issued during a failover lands once the new
leader is up.

Which calls are writes: those whose request message has an `idempotency_key`
field. Every operator write carries one (protos/citypost/v1/operator.proto)
and it is what makes a retry on another post safe: a post that acted before
its answer was lost does not act again. Deciding from the request's schema
keeps the client generic (any stub, any new write RPC) with no list of
method names to keep in step. A write sent without a key gets a fresh one,
shared by all its tries.

A FAILED_PRECONDITION without the leader's address is ambiguous: an election
in progress, or the leader refusing the write for a reason of its own (the
alarm is already cleared). The client asks that post's PostAdmin.GetStatus:
a post that says it leads meant it, and its answer goes to the caller at
once; otherwise the write keeps looking for the leader until the window ends.

A write not answered for `RetryPolicy.write_probe_after_s` makes the client ask
that post's health: a post that answers is slow and is waited for; one that
answers nothing (frozen, cut off) is left for the next post, and skipped by
writes for a few seconds even if a standby still names it as the leader.

The decisions are pure (`decide`, `PostDirectory`, `Walk`, `parse_posts`);
`LeaderFollowingChannel` is the grpc.aio shell. The console's blocking client
(console/client.py) drives the same pure parts with blocking gRPC.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from citypost.errors import ConfigError, InfrastructureError
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc
from protos.metadata import LEADER_METADATA, OPERATOR_METADATA

IDEMPOTENCY_FIELD = "idempotency_key"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
LEADER_ROLE = "leader"  # PostStatus.role of the post that leads
PROBE_S = 2.0  # deadline of a health check or a role question
SILENT_FOR_S = 5.0  # a post found silent is left out of writes this long, unless it answers

# --- errors -----------------------------------------------------------------------------------


class SilentPostError(grpc.RpcError):
    """A post took a write, then answered neither it nor a health check for a while:
    frozen, or cut off. The write goes to the next post with the same key."""

    def __init__(self, address: str, waited_s: float) -> None:
        super().__init__()
        self._details = (
            f"{address} answered neither the write nor a health check for {waited_s:.1f} s"
        )

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


class PostUnreachableError(InfrastructureError):
    """No post answered at any of the addresses tried."""

    def __init__(self, addresses: Sequence[str], status: str = "UNAVAILABLE") -> None:
        where = ", ".join(addresses)
        super().__init__(f"no post answers at {where}: is `citypost post` running? ({status})")
        self.addresses = tuple(addresses)


# --- addresses --------------------------------------------------------------------------------


def parse_address(text: str) -> str:
    """One post's gRPC address, HOST:PORT (HOST may be a bracketed IPv6 address)."""
    address = text.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:50051")
    return address


def parse_posts(values: Iterable[str]) -> list[str]:
    """Post addresses from flags or an environment variable: each value may be a comma list.

    Keeps the order (the first is tried first), drops repeats and empty items.
    """
    posts = [parse_address(item) for value in values for item in value.split(",") if item.strip()]
    return list(dict.fromkeys(posts))


# --- what a refusal means ---------------------------------------------------------------------


class Kind(Enum):
    READ = "read"
    WRITE = "write"


def kind_of(request: Message) -> Kind:
    """A write is a request with an idempotency key field (see the module's docstring)."""
    fields = request.DESCRIPTOR.fields_by_name
    return Kind.WRITE if IDEMPOTENCY_FIELD in fields else Kind.READ


class Move(Enum):
    GIVE_UP = "give_up"  # the post's answer is the caller's, unchanged
    FOLLOW = "follow"  # a standby named the leader: try there now
    NEXT = "next"  # out of reach, or between leaders: try another post, then all again later
    ASK_ROLE = "ask_role"  # refused without a leader named: final if that post leads, else NEXT


@dataclass(frozen=True)
class Step:
    move: Move
    leader: str = ""


def decide(kind: Kind, code: grpc.StatusCode, leader: str | None) -> Step:
    """What to do after a post answered `code`; `leader` is its `x-citypost-leader` trailing
    metadata (None when absent, "" when present but empty: no leader known)."""
    if code == grpc.StatusCode.FAILED_PRECONDITION and leader:
        return Step(Move.FOLLOW, leader)
    if code in RETRYABLE:
        return Step(Move.NEXT)
    if code == grpc.StatusCode.FAILED_PRECONDITION and kind is Kind.WRITE:
        # An explicit "no leader known" is an election; silence may be the leader's own refusal.
        return Step(Move.NEXT if leader == "" else Move.ASK_ROLE)
    return Step(Move.GIVE_UP)


class PostDirectory:
    """The posts, which one leads as far as we know, which one answered last, and which
    went silent (took a write, then answered neither it nor a health check)."""

    def __init__(
        self, posts: Sequence[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not posts:
            raise ConfigError("posts: give at least one post address (HOST:PORT)")
        self._posts = list(dict.fromkeys(posts))
        self.leader: str | None = None
        self.current: str | None = None  # the post that answered last
        self._clock = clock
        self._silent_until: dict[str, float] = {}

    @property
    def posts(self) -> list[str]:
        return list(self._posts)

    def order(self, kind: Kind) -> list[str]:
        """Whom to try, first to last: reads stick to the last post that answered. A write
        leaves out a post gone silent (a frozen or cut-off leader would hold it again
        until it thaws; a standby still naming it knows no better), unless no other is left."""
        first = [self.leader, self.current] if kind is Kind.WRITE else [self.current]
        ordered = list(dict.fromkeys([*(a for a in first if a), *self._posts]))
        if kind is Kind.WRITE:
            heard = [a for a in ordered if not self.is_silent(a)]
            return heard or ordered
        return ordered

    def is_silent(self, address: str) -> bool:
        until = self._silent_until.get(address)
        if until is not None and self._clock() >= until:
            del self._silent_until[address]
            return False
        return until is not None

    def went_silent(self, address: str) -> None:
        self.lost(address)
        self._silent_until[address] = self._clock() + SILENT_FOR_S

    def answered(self, address: str, kind: Kind) -> None:
        self.current = address
        self._silent_until.pop(address, None)
        if kind is Kind.WRITE:
            self.leader = address

    def named_leader(self, address: str) -> None:
        self.leader = address
        if address not in self._posts:  # a leader we were not told of: remember it too
            self._posts.append(address)

    def lost(self, address: str) -> None:
        """`address` is out of reach or does not lead: stop sending writes there first."""
        if self.leader == address:
            self.leader = None
        if self.current == address:
            self.current = None


class Walk:
    """One pass over the posts for one call: which post next, and what each refusal means.

    Each post is tried at most once per pass, so two standbys naming each other
    cannot loop; the retry loop starts another pass after a wait.
    """

    def __init__(self, directory: PostDirectory, kind: Kind) -> None:
        self.kind = kind
        self._directory = directory
        self._queue = deque(directory.order(kind))
        self._tried: set[str] = set()
        self.failures: list[tuple[str, Any]] = []  # (address, error) worth another pass

    def next(self) -> str | None:
        while self._queue:
            address = self._queue.popleft()
            if address not in self._tried:
                self._tried.add(address)
                return address
        return None

    def refused(self, address: str, code: grpc.StatusCode, leader: str | None, error: Any) -> Move:
        step = decide(self.kind, code, leader)
        if step.move is Move.GIVE_UP:
            return step.move
        self.failures.append((address, error))
        if step.move is Move.FOLLOW and self._directory.is_silent(step.leader):
            # The leader it names went silent on us: an election is surely under way.
            return Move.NEXT
        if step.move is Move.FOLLOW:
            self._directory.named_leader(step.leader)
            self._queue.appendleft(step.leader)
        elif step.move is Move.NEXT:
            if isinstance(error, SilentPostError):
                self._directory.went_silent(address)
            else:
                self._directory.lost(address)
        return step.move

    def not_leading(self, address: str) -> None:
        """The post that refused without naming a leader does not lead: an election."""
        self._directory.lost(address)

    def answered(self, address: str) -> None:
        self._directory.answered(address, self.kind)


class Retry(Exception):
    """A pass over the posts failed in a way worth another: (address, error) per failure."""

    def __init__(self, failures: list[tuple[str, Any]]) -> None:
        super().__init__("no post took the call; retrying")
        self.failures = failures


@dataclass(frozen=True)
class RetryPolicy:
    """How long a call keeps trying: reads a few passes, writes for a window of time.

    The write window should outlast a failover (about the lease TTL plus an
    election); each try also has its own deadline (the caller's timeout).
    """

    attempts: int = 3  # passes over the posts for a read
    initial_wait_s: float = 0.25
    max_wait_s: float = 2.0
    write_window_s: float = 6.0
    # A write waits at most this long between passes: an operator's command lands within
    # this of the new leader taking over (with up to 2 s, the leader-partition drill's
    # operators waited 1.3 s past the takeover). A pass is one refused call per post.
    write_max_wait_s: float = 0.25
    # A write not answered within this long makes the client ask the post's health (with
    # this deadline too), and again each time as long as it waits: a post that answers
    # is slow and waited for until the caller's timeout; one that does not is frozen or
    # cut off, and the write goes to the next post (in the leader-freeze drill the writes
    # waited on the frozen leader for its whole 4 s freeze; the standby led after 2.4 s).
    write_probe_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"attempts: at least 1, got {self.attempts}")
        if not (0 < self.initial_wait_s <= self.max_wait_s):
            raise ConfigError("waits: need 0 < initial_wait_s <= max_wait_s")
        if self.write_max_wait_s <= 0:
            raise ConfigError(f"write_max_wait_s: must be positive, got {self.write_max_wait_s}")
        if self.write_probe_after_s <= 0:
            raise ConfigError(
                f"write_probe_after_s: must be positive, got {self.write_probe_after_s}"
            )
        if self.write_window_s <= 0:
            raise ConfigError(f"write_window_s: must be positive, got {self.write_window_s}")

    def stop(self, kind: Kind) -> stop_base:
        if kind is Kind.WRITE:
            return stop_after_delay(self.write_window_s)
        return stop_after_attempt(self.attempts)

    def wait(self, kind: Kind) -> wait_base:
        # Full jitter: consoles retrying through the same failover do not beat in step.
        most = self.write_max_wait_s if kind is Kind.WRITE else self.max_wait_s
        return wait_random_exponential(multiplier=min(self.initial_wait_s, most), max=most)


def with_key(request: Message, kind: Kind) -> Message:
    """The request to send on every try: a write without a key gets a fresh one."""
    if kind is Kind.WRITE and not getattr(request, IDEMPOTENCY_FIELD):
        keyed = copy.deepcopy(request)
        setattr(keyed, IDEMPOTENCY_FIELD, new_idempotency_key())
        return keyed
    return request


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


# --- reading gRPC errors (blocking and asyncio alike) ------------------------------------------


def code_of(error: Any) -> grpc.StatusCode:
    # An RpcError raised by a call is also a Call; read it by duck typing, as interceptors
    # may raise their own.
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def details_of(error: Any) -> str:
    details = getattr(error, "details", None)
    return str((details() if callable(details) else None) or "")


def leader_of(error: Any) -> str | None:
    """The `x-citypost-leader` trailing metadata of a failed call, None when absent."""
    trailing = getattr(error, "trailing_metadata", None)
    pairs = trailing() if callable(trailing) else None
    for key, value in pairs or ():
        if key == LEADER_METADATA:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


# --- the grpc.aio shell -----------------------------------------------------------------------

AioChannelFactory = Callable[[str], grpc.aio.Channel]


class FollowingStub:
    """A generated stub's unary methods, called through a `LeaderFollowingChannel`.

    `await stub.AcknowledgeAlarm(request)` is routed as a write (its request has
    an idempotency key), `await stub.ListAlarms(request)` as a read. Unary calls only:
    a stream cannot be replayed on another post mid-way, so open one on
    `channel.channel(channel.directory.order(Kind.READ)[0])` and reopen it on failure.
    """

    def __init__(self, channel: LeaderFollowingChannel, stub_class: type) -> None:
        self._channel = channel
        self._stub_class = stub_class

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return partial(self._channel.call, self._stub_class, method)


class LeaderFollowingChannel:
    """grpc.aio channels to every post; unary calls follow the leader (see the module)."""

    def __init__(
        self,
        posts: Sequence[str],
        *,
        operator: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        channel_factory: AioChannelFactory = grpc.aio.insecure_channel,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout: must be positive, got {timeout_s}")
        self.directory = PostDirectory(posts)
        self._metadata: tuple[tuple[str, str], ...] = (
            ((OPERATOR_METADATA, operator),) if operator else ()
        )
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, stub_class: type) -> FollowingStub:
        return FollowingStub(self, stub_class)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to one post (opened once), e.g. for a stream on the read post."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channel_factory(address)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> LeaderFollowingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        stub_class: type,
        method: str,
        request: Message,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One unary call, routed and retried; the post's own error when it is final."""
        kind = kind_of(request)
        request = with_key(request, kind)
        timeout_s = timeout if timeout is not None else self._timeout_s
        sent = (*self._metadata, *metadata)

        async def attempt() -> Any:
            walk = Walk(self.directory, kind)
            while (address := walk.next()) is not None:
                rpc = getattr(stub_class(self.channel(address)), method)
                try:
                    call = rpc(request, timeout=timeout_s, metadata=sent)
                    reply = await (self._heard(call, address) if kind is Kind.WRITE else call)
                except grpc.RpcError as error:
                    move = walk.refused(address, code_of(error), leader_of(error), error)
                    if move is Move.GIVE_UP:
                        raise
                    if move is Move.ASK_ROLE:
                        if await self._leads(address):
                            raise
                        walk.not_leading(address)
                    continue
                walk.answered(address)
                return reply
            raise Retry(walk.failures)

        retrying = AsyncRetrying(
            stop=self._retry.stop(kind),
            wait=self._retry.wait(kind),
            retry=retry_if_exception_type(Retry),
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except Retry as last:
            raise await self._give_up(last.failures) from None

    async def _leads(self, address: str) -> bool:
        """Whether the post says it leads; False when it cannot tell (no PostAdmin, no answer)."""
        stub: Any = admin_pb2_grpc.PostAdminStub(self.channel(address))
        try:
            status = await stub.GetStatus(
                admin_pb2.GetStatusRequest(), timeout=min(self._timeout_s, PROBE_S)
            )
        except grpc.RpcError:
            return False
        return bool(status.role == LEADER_ROLE)

    async def _give_up(self, failures: list[tuple[str, Any]]) -> Exception:
        """Once retries are spent: the refusal of a post that answered, else unreachable.

        UNAVAILABLE or DEADLINE_EXCEEDED may come from a post itself (a slow actor):
        a health check tells that from nothing listening.
        """
        for address, error in failures:
            if code_of(error) not in RETRYABLE or await self._answers(address):
                return error
        tried = list(dict.fromkeys(address for address, _ in failures)) or self.directory.posts
        status = code_of(failures[-1][1]).name if failures else "UNAVAILABLE"
        return PostUnreachableError(tried, status)

    async def _heard(self, call: Any, address: str) -> Any:
        """The write's answer, as long as the post answers health checks meanwhile; a post
        that stops answering anything raises SilentPostError (the call is cancelled)."""
        every = self._retry.write_probe_after_s
        task = asyncio.ensure_future(call)
        started = time.monotonic()
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            if not await self._answers(address, probe_s=every):
                task.cancel()
                raise SilentPostError(address, time.monotonic() - started)

    async def _answers(self, address: str, *, probe_s: float = PROBE_S) -> bool:
        """Whether anything answers a health check at `address` (any status but a transport one)."""
        stub: Any = health_pb2_grpc.HealthStub(self.channel(address))
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=min(self._timeout_s, probe_s))
        except grpc.RpcError as error:
            return code_of(error) not in RETRYABLE
        return True
