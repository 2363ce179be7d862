"""The console's gRPC client: which post to ask, retries with the same idempotency key, errors
an operator can act on.

The console is given every post (primary and backup) and follows the leader
with the pure parts of failover/follow_client.py: reads go to the post that
answered last (the first that answers, at first; pages then come from one
post), writes to the leader: a standby's refusal names it (trailing metadata
`x-citypost-leader`) and the write is sent there at once; while no post
leads (an election) or the leader is out of reach, the write tries every post
again with backoff for `RetryPolicy.write_window_s`.

A write carries an idempotency key, fresh per invocation, and every retry
(after UNAVAILABLE or DEADLINE_EXCEEDED: the first try may have acted before
its answer was lost, or on another post) sends the same key, so the city acts once.

Failures end in one of two errors: `PostUnreachableError` when nothing
answers at the addresses (told apart from a post that answered UNAVAILABLE
itself, or was merely slow, by a health check), `CallFailedError` with the
post's own status and message otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Literal

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import Retrying, retry_if_exception_type

from citypost.errors import CitypostError, ConfigError
from failover.follow_client import (
    IDEMPOTENCY_FIELD,
    LEADER_ROLE,
    PROBE_S,
    RETRYABLE,
    Kind,
    Move,
    PostDirectory,
    PostUnreachableError,
    Retry,
    RetryPolicy,
    SilentPostError,
    Walk,
    code_of,
    details_of,
    kind_of,
    leader_of,
    new_idempotency_key,
)
from protos.citypost.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
)
from protos.metadata import OPERATOR_METADATA

__all__ = [
    "CallFailedError",
    "PostClient",
    "PostUnreachableError",
    "RetryPolicy",
    "new_idempotency_key",
]

Service = Literal["operator", "admin", "auth"]
ChannelFactory = Callable[[str], grpc.Channel]


class CallFailedError(CitypostError):
    """The post answered with an error status; its message is written for people."""

    def __init__(self, address: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details or '(no message)'}")
        self.grpc_status = code.name
        self.address = address
        self.code = code
        self.details = details


class PostClient:
    def __init__(
        self,
        posts: Sequence[str],
        *,
        operator: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        channel_factory: ChannelFactory = grpc.insecure_channel,
        token: Callable[[], str] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout: must be positive, got {timeout_s}")
        self._directory = PostDirectory(posts)  # keeps the order, drops repeats
        self._operator_metadata = ((OPERATOR_METADATA, operator),) if operator else ()
        # The operator's access token, asked before each call: the source renews it.
        self._token = token
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # No token (a login, or a caller without one: the post says what is missing).
        token = self._token() if self._token is not None else ""
        if not token:
            return self._operator_metadata
        return (*self._operator_metadata, ("authorization", f"Bearer {token}"))

    @property
    def posts(self) -> list[str]:
        return self._directory.posts

    @property
    def leader(self) -> str | None:
        """The post that took the last write, or that a standby named; None until known."""
        return self._directory.leader

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> PostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ---------------------------------------------------------------------------

    def read(self, rpc: str, request: Message, *, service: Service = "operator") -> Any:
        """A read from the post that answered last (or the first that answers)."""
        return self._call(rpc, request, service, Kind.READ)

    def write(self, rpc: str, request: Message, *, service: Service = "operator") -> Any:
        """A write to the leader, following it through a failover; every try carries the
        same idempotency key.

        A request without a key gets a fresh one (set on `request`), so an invocation's
        tries share it.
        """
        if kind_of(request) is Kind.WRITE and not getattr(request, IDEMPOTENCY_FIELD):
            setattr(request, IDEMPOTENCY_FIELD, new_idempotency_key())
        return self._call(rpc, request, service, Kind.WRITE)

    def pages(self, rpc: str, request: Message, items: str) -> Iterator[Message]:
        """Every item of a list RPC, page after page (`items` names the repeated field)."""
        while True:
            reply = self.read(rpc, request)
            yield from getattr(reply, items)
            token = reply.next_page_token
            if not token:
                return
            request.page_token = token  # type: ignore[attr-defined]

    def watch(
        self, request: operator_pb2.WatchEventsRequest
    ) -> Generator[operator_pb2.Event, None, None]:
        """Events from the first post that accepts the stream, until the caller stops.

        Closing the iterator (or the client) cancels the stream.
        """
        call, address = self._with_retries(lambda: self._open_watch(request), Kind.READ)
        try:
            yield from call
        except grpc.RpcError as error:
            if code_of(error) == grpc.StatusCode.CANCELLED:
                return
            raise self._final(address, error) from None
        finally:
            call.cancel()

    # --- internals -----------------------------------------------------------------------

    def _call(self, rpc: str, request: Message, service: Service, kind: Kind) -> Any:
        def attempt() -> Any:
            walk = Walk(self._directory, kind)
            while (address := walk.next()) is not None:
                try:
                    reply = self._unary(address, service, rpc, request, kind)
                except grpc.RpcError as error:
                    move = walk.refused(address, code_of(error), leader_of(error), error)
                    if move is Move.GIVE_UP:
                        raise self._failed(address, error) from None
                    if move is Move.ASK_ROLE:
                        if self._leads(address):
                            raise self._failed(address, error) from None
                        walk.not_leading(address)
                    continue
                walk.answered(address)
                return reply
            raise Retry(walk.failures)

        return self._with_retries(attempt, kind)

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channel_factory(address)
            self._channels[address] = channel
        return channel

    def _stub(self, address: str, service: Service) -> Any:
        channel = self._channel(address)
        if service == "admin":
            return admin_pb2_grpc.PostAdminStub(channel)
        if service == "auth":
            return auth_pb2_grpc.AuthServiceStub(channel)
        return operator_pb2_grpc.OperatorServiceStub(channel)

    def _unary(self, address: str, service: Service, rpc: str, request: Message, kind: Kind) -> Any:
        method = getattr(self._stub(address, service), rpc)
        if kind is not Kind.WRITE:
            return method(request, timeout=self._timeout_s, metadata=self._metadata())
        # A write's answer, as long as the post answers health checks meanwhile
        # (failover/follow_client.py, RetryPolicy.write_probe_after_s).
        every = self._retry.write_probe_after_s
        future = method.future(request, timeout=self._timeout_s, metadata=self._metadata())
        started = time.monotonic()
        while True:
            try:
                return future.result(timeout=every)
            except grpc.FutureTimeoutError:
                if not self._answers(address, probe_s=every):
                    future.cancel()
                    raise SilentPostError(address, time.monotonic() - started) from None

    def _open_watch(self, request: operator_pb2.WatchEventsRequest) -> tuple[Any, str]:
        failures: list[tuple[str, grpc.RpcError]] = []
        for address in self._directory.order(Kind.READ):
            stub = operator_pb2_grpc.OperatorServiceStub(self._channel(address))
            call: Any = stub.WatchEvents(request, metadata=self._metadata())
            # The post sends its initial metadata once the stream is set up: waiting for it
            # tells a stream that started from one that failed at once.
            call.initial_metadata()
            if call.done():
                code = call.code()
                if code in RETRYABLE:
                    failures.append((address, call))
                    continue
                raise self._failed(address, call)
            self._directory.answered(address, Kind.READ)
            return call, address
        raise Retry(failures)

    def _with_retries(self, attempt: Callable[[], Any], kind: Kind) -> Any:
        retrying = Retrying(
            stop=self._retry.stop(kind),
            wait=self._retry.wait(kind),
            retry=retry_if_exception_type(Retry),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Retry as last:
            raise self._give_up(last.failures) from None

    def _give_up(self, failures: list[tuple[str, grpc.RpcError]]) -> CitypostError:
        """The error to report once retries are spent: unreachable only if nothing answers."""
        if not failures:
            return PostUnreachableError(self.posts)
        answered = [
            (address, error)
            for address, error in failures
            if code_of(error) not in RETRYABLE or self._answers(address)
        ]
        if not answered:
            return PostUnreachableError(
                list(dict.fromkeys(address for address, _ in failures)),
                code_of(failures[-1][1]).name,
            )
        return self._failed(*answered[0])

    def _final(self, address: str, error: grpc.RpcError) -> CitypostError:
        """The error for a stream that broke after it started."""
        if code_of(error) in RETRYABLE and not self._answers(address):
            return PostUnreachableError([address], code_of(error).name)
        return self._failed(address, error)

    def _failed(self, address: str, error: grpc.RpcError) -> CallFailedError:
        code, details = code_of(error), details_of(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
            # The client's own deadline, not the post's message: say which and how long.
            details = (
                f"no answer from {address} within {self._timeout_s:g} s "
                "(the post answers health checks; a longer --timeout may help)"
            )
        return CallFailedError(address, code, details)

    def _leads(self, address: str) -> bool:
        """Whether the post says it leads; False when it cannot tell (no PostAdmin, no answer)."""
        stub: Any = admin_pb2_grpc.PostAdminStub(self._channel(address))
        try:
            status = stub.GetStatus(
                admin_pb2.GetStatusRequest(), timeout=min(self._timeout_s, PROBE_S)
            )
        except grpc.RpcError:
            return False
        return bool(status.role == LEADER_ROLE)

    def _answers(self, address: str, *, probe_s: float = PROBE_S) -> bool:
        """Whether anything answers a health check at `address` (any status but a transport one)."""
        stub: Any = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=min(self._timeout_s, probe_s))
        except grpc.RpcError as error:
            return code_of(error) not in RETRYABLE
        return True
