"""The post's gRPC server: one place for binding, health, reflection and the
interceptors every service shares.

Interceptors: (1) who calls and whether they may (api.authorization: an
operator's token or a machine's certificate, the policy's rule for the
method), kept in context variables for the servicers; without an authorizer
(a city run without TLS, the benchmarks' baseline) the caller is what the
`x-citypost-operator` metadata says; (2) error translation: a CitypostError
becomes its gRPC status with its message, anything else INTERNAL without
leaking internals; (3) a server-side deadline on every unary call.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from api.authorization import Guard, current
from citypost.errors import CitypostError, NotLeaderError
from protos.metadata import LEADER_METADATA, OPERATOR_METADATA

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
_INTERNAL = "internal error in the post (it is logged); retry, and report it if it persists"
caller: contextvars.ContextVar[str] = contextvars.ContextVar("citypost_caller", default=ANONYMOUS)


@dataclass(frozen=True)
class Service:
    name: str  # full service name, e.g. "citypost.v1.OperatorService"
    register: Callable[[Any, grpc.aio.Server], None]  # the generated add_..._to_server
    servicer: Any


def status_of(error: CitypostError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, error: CitypostError) -> None:
    if isinstance(error, NotLeaderError):
        # Empty when nobody leads yet: the client then knows an election is on.
        context.set_trailing_metadata(((LEADER_METADATA, error.leader_address),))
    await context.abort(status_of(error), error.message)


class _CommonInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, deadline_s: float, authorizer: Guard | None) -> None:
        self._deadline_s = deadline_s
        self._authorizer = authorizer

    def _admit(self, method: str, metadata: Any, context: Any, request: Any) -> None:
        """Sets who calls; raises the typed refusal if they may not."""
        if self._authorizer is None:
            caller.set(str(dict(metadata).get(OPERATOR_METADATA, ANONYMOUS)))
            return
        who = self._authorizer.admit(method, metadata, context, request)
        current.set(who)
        caller.set(who.name or ANONYMOUS)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(details)
        if handler is None:
            return handler
        metadata = tuple(details.invocation_metadata or ())
        method = details.method
        deadline_s = self._deadline_s
        admit = self._admit
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    admit(method, metadata, context, request)
                    return await asyncio.wait_for(inner(request, context), deadline_s)
                except CitypostError as error:
                    await _abort(context, error)
                except TimeoutError:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the post did not answer within {deadline_s:g} s; retry",
                    )
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unexpected error in %s", details.method)
                    await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    admit(method, metadata, context, request)
                    async for item in inner_stream(request, context):
                        yield item
                except CitypostError as error:
                    await _abort(context, error)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unexpected error in %s", details.method)
                    await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # reflection
            inner_bidi: Any = handler.stream_stream

            async def bidi(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    admit(method, metadata, context, None)
                except CitypostError as error:
                    await _abort(context, error)
                async for item in inner_bidi(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                bidi,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if self._authorizer is not None:
            # No citypost service streams from the client; anything else is not served.
            return None
        return handler


def method_names(services: Sequence[str]) -> list[str]:
    """Every method of these services, as gRPC names them (`/package.Service/Method`)."""
    pool = descriptor_pool.Default()
    names = []
    for service in services:
        descriptor = pool.FindServiceByName(service)
        names += [f"/{service}/{m.name}" for m in descriptor.methods]
    return names


async def start_server(
    services: Sequence[Service],
    *,
    host: str = "127.0.0.1",
    port: int,
    deadline_s: float = 10.0,
    credentials: grpc.ServerCredentials | None = None,
    authorizer: Guard | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Start serving; health reports SERVING for every service (and "").

    With `credentials` (security.grpc_tls.server_credentials) the port speaks mutual
    TLS only; without, plaintext (the benchmark baseline, `security.tls = false`)."""
    served = [s.name for s in services] + [
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    if authorizer is not None:
        authorizer.check_methods(method_names(served))
    # No SO_REUSEPORT: a port another server holds must fail here, not be shared.
    server = grpc.aio.server(
        interceptors=[_CommonInterceptor(deadline_s, authorizer)],
        options=[("grpc.so_reuseport", 0)],
    )
    for service in services:
        service.register(service.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise CitypostError(f"cannot bind the gRPC server to {host}:{port}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer
