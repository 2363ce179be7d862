"""The console's gRPC client: which post to ask, retries with the same idempotency key, errors
an operator can act on.

Reads go to the first post that answers (and stay there for the rest of the
invocation, so pages come from one post); writes go to the first post given.
The failover stage will make writes follow the leader.

A write carries an idempotency key, fresh per invocation, and every retry
(after UNAVAILABLE or DEADLINE_EXCEEDED: the first try may have acted before
its answer was lost) sends the same key, so the post acts once.

Failures end in one of two errors: `PostUnreachableError` when nothing
answers at the addresses (told apart from a post that answered UNAVAILABLE
itself, or was merely slow, by a health check), `CallFailedError` with the
post's own status and message otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cluster.errors import CitypostError, ConfigError, InfrastructureError
from cluster.grpc_server import OPERATOR_METADATA
from protos.citypost.v1 import admin_pb2_grpc, operator_pb2, operator_pb2_grpc

Service = Literal["operator", "admin"]
ChannelFactory = Callable[[str], grpc.Channel]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
HEALTH_PROBE_S = 2.0


class PostUnreachableError(InfrastructureError):
    """No post answered at any of the addresses tried."""

    def __init__(self, addresses: Sequence[str], status: str = "UNAVAILABLE") -> None:
        where = ", ".join(addresses)
        super().__init__(f"no post answers at {where}: is `citypost post` running? ({status})")
        self.addresses = tuple(addresses)


class CallFailedError(CitypostError):
    """The post answered with an error status; its message is written for people."""

    def __init__(self, address: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details or '(no message)'}")
        self.grpc_status = code.name
        self.address = address
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RetryPolicy:
    """Tries per call (each read try goes through every post) and the waits between them."""

    attempts: int = 3
    initial_wait_s: float = 0.25
    max_wait_s: float = 2.0


class _Retry(Exception):
    """One try failed in a way worth another: (address, error) per post tried."""

    def __init__(self, failures: list[tuple[str, grpc.RpcError]]) -> None:
        super().__init__("retryable failure")
        self.failures = failures


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    # An RpcError raised by a call is also a grpc.Call; read it by duck typing, as interceptors
    # may raise their own.
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    return str((details() if callable(details) else None) or "")


class PostClient:
    def __init__(
        self,
        posts: Sequence[str],
        *,
        operator: str | None = None,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        channel_factory: ChannelFactory = grpc.insecure_channel,
    ) -> None:
        if not posts:
            raise ConfigError("posts: give at least one post address (HOST:PORT)")
        if timeout_s <= 0:
            raise ConfigError(f"timeout: must be positive, got {timeout_s}")
        self._posts = list(dict.fromkeys(posts))  # keep the order, drop repeats
        self._metadata = ((OPERATOR_METADATA, operator),) if operator else ()
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}
        self._answered: str | None = None  # the post that answered a read last

    @property
    def posts(self) -> list[str]:
        return list(self._posts)

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
        """A read from the first post that answers, retried while none does."""

        def attempt() -> Any:
            failures: list[tuple[str, grpc.RpcError]] = []
            for address in self._read_order():
                try:
                    reply = self._unary(address, service, rpc, request)
                except grpc.RpcError as error:
                    if _code(error) not in RETRYABLE:
                        raise self._failed(address, error) from None
                    failures.append((address, error))
                    continue
                self._answered = address
                return reply
            raise _Retry(failures)

        return self._with_retries(attempt)

    def write(self, rpc: str, request: Message) -> Any:
        """A write to the first post; every retry carries the same idempotency key.

        A request without a key gets a fresh one, so an invocation's tries share it.
        """
        keyed: Any = request
        if not keyed.idempotency_key:
            keyed.idempotency_key = new_idempotency_key()
        address = self._posts[0]

        def attempt() -> Any:
            try:
                return self._unary(address, "operator", rpc, request)
            except grpc.RpcError as error:
                if _code(error) not in RETRYABLE:
                    raise self._failed(address, error) from None
                raise _Retry([(address, error)]) from None

        return self._with_retries(attempt)

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
        call, address = self._with_retries(lambda: self._open_watch(request))
        try:
            yield from call
        except grpc.RpcError as error:
            if _code(error) == grpc.StatusCode.CANCELLED:
                return
            raise self._final(address, error) from None
        finally:
            call.cancel()

    # --- internals -----------------------------------------------------------------------

    def _read_order(self) -> list[str]:
        if self._answered is None:
            return list(self._posts)
        return [self._answered, *(p for p in self._posts if p != self._answered)]

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
        return operator_pb2_grpc.OperatorServiceStub(channel)

    def _unary(self, address: str, service: Service, rpc: str, request: Message) -> Any:
        method = getattr(self._stub(address, service), rpc)
        return method(request, timeout=self._timeout_s, metadata=self._metadata)

    def _open_watch(self, request: operator_pb2.WatchEventsRequest) -> tuple[Any, str]:
        failures: list[tuple[str, grpc.RpcError]] = []
        for address in self._read_order():
            stub = operator_pb2_grpc.OperatorServiceStub(self._channel(address))
            call: Any = stub.WatchEvents(request, metadata=self._metadata)
            # The post sends its initial metadata once the stream is set up: waiting for it
            # tells a stream that started from one that failed at once.
            call.initial_metadata()
            if call.done():
                code = call.code()
                if code in RETRYABLE:
                    failures.append((address, call))
                    continue
                raise self._failed(address, call)
            self._answered = address
            return call, address
        raise _Retry(failures)

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        policy = self._retry
        retrying = Retrying(
            stop=stop_after_attempt(max(1, policy.attempts)),
            wait=wait_exponential(multiplier=policy.initial_wait_s, max=policy.max_wait_s),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as last:
            raise self._give_up(last.failures) from None

    def _give_up(self, failures: list[tuple[str, grpc.RpcError]]) -> CitypostError:
        """The error to report once retries are spent: unreachable only if nothing answers."""
        if not failures:
            return PostUnreachableError(self._posts)
        answered = [(address, error) for address, error in failures if self._answers(address)]
        if not answered:
            return PostUnreachableError(
                list(dict.fromkeys(address for address, _ in failures)), _code(failures[-1][1]).name
            )
        return self._failed(*answered[0])

    def _final(self, address: str, error: grpc.RpcError) -> CitypostError:
        """The error for a stream that broke after it started."""
        if _code(error) in RETRYABLE and not self._answers(address):
            return PostUnreachableError([address], _code(error).name)
        return self._failed(address, error)

    def _failed(self, address: str, error: grpc.RpcError) -> CallFailedError:
        code, details = _code(error), _details(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
            # The client's own deadline, not the post's message: say which and how long.
            details = (
                f"no answer from {address} within {self._timeout_s:g} s "
                "(the post answers health checks; a longer --timeout may help)"
            )
        return CallFailedError(address, code, details)

    def _answers(self, address: str) -> bool:
        """Whether anything answers a health check at `address` (any status but a transport one)."""
        stub: Any = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            stub.Check(
                health_pb2.HealthCheckRequest(), timeout=min(self._timeout_s, HEALTH_PROBE_S)
            )
        except grpc.RpcError as error:
            return _code(error) not in RETRYABLE
        return True
