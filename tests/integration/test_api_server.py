"""The shared gRPC server: statuses from typed errors, deadlines, identity, health, reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from api.server import Service, caller, start_server
from citypost.errors import FailedPreconditionError, InvalidArgumentError
from cluster.ports import free_port
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc
from protos.metadata import OPERATOR_METADATA

pytestmark = pytest.mark.integration


class Scripted(admin_pb2_grpc.PostAdminServicer):
    def __init__(self) -> None:
        self.mode = "ok"

    async def GetStatus(self, request: Any, context: Any) -> admin_pb2.PostStatus:
        if self.mode == "invalid":
            raise InvalidArgumentError("page_size must be between 1 and 1000, got 5000")
        if self.mode == "precondition":
            raise FailedPreconditionError("this post is a standby")
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "bug":
            raise RuntimeError("secret internals")
        return admin_pb2.PostStatus(post="primary", role=caller.get())


@pytest.mark.timeout(30)
async def test_statuses_deadline_identity_health_reflection() -> None:
    servicer = Scripted()
    port = free_port()
    name = admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name
    server, _ = await start_server(
        [Service(name, admin_pb2_grpc.add_PostAdminServicer_to_server, servicer)],
        port=port,
        deadline_s=0.5,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.PostAdminStub(channel)
            reply = await stub.GetStatus(
                admin_pb2.GetStatusRequest(), metadata=((OPERATOR_METADATA, "op-claire"),)
            )
            assert reply.role == "op-claire"  # the identity seam carried the caller
            expected = {
                "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "page_size must be between"),
                "precondition": (grpc.StatusCode.FAILED_PRECONDITION, "standby"),
                "slow": (grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer within"),
                "bug": (grpc.StatusCode.INTERNAL, "internal error in the post"),
            }
            for mode, (code, words) in expected.items():
                servicer.mode = mode
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetStatus(admin_pb2.GetStatusRequest())
                assert caught.value.code() == code, mode
                assert words in (caught.value.details() or "")
                assert "secret internals" not in (caught.value.details() or "")
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", name):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for response in responses:
                listed = {s.name for s in response.list_services_response.service}
                assert name in listed
                break
    finally:
        await server.stop(grace=None)
