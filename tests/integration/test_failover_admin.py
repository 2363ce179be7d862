"""PostAdmin's failover RPCs and `citypost failover` over real gRPC servers.

A post here is a small object with what the failover RPCs read: its name, a
real `Leadership` (SoleLeadership, or an etcd `Election` on the session's
1-member etcd) and a real in-memory control state. The CLI is synchronous
gRPC, so it runs in a thread while the servers serve on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from api.admin import PostAdminService
from api.server import Service, start_server
from citypost.config import FailoverConfig
from cluster.etcd_local import LocalEtcd
from cluster.ports import free_port
from console import failover_cli
from failover.control_state import InMemoryControlState, config_key
from failover.election import Election
from failover.roles import Leadership, SoleLeadership
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, operations_pb2
from protos.metadata import LEADER_METADATA

pytestmark = pytest.mark.integration

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name
CONFIG = FailoverConfig(lease_ttl_s=1.0, keepalive_interval_s=0.2, safety_margin_s=0.3)


@dataclass
class FailoverPost:
    """What GetFailoverStatus and Resign read of a post."""

    name: str
    leadership: Leadership
    state: InMemoryControlState


async def serve(post: Any, port: int) -> grpc.aio.Server:
    server, _ = await start_server(
        [Service(SERVICE, admin_pb2_grpc.add_PostAdminServicer_to_server, PostAdminService(post))],
        port=port,
    )
    return server


@contextlib.asynccontextmanager
async def admin(address: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield admin_pb2_grpc.PostAdminStub(channel)


def resign_request(hold_off_ms: int = 0) -> admin_pb2.ResignRequest:
    return admin_pb2.ResignRequest(idempotency_key=str(uuid.uuid4()), hold_off_ms=hold_off_ms)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    # Posts of this test serve plaintext (TLS is tested with the city).
    code = await asyncio.to_thread(failover_cli.run, [*argv, "--insecure"])
    out, err = capsys.readouterr()
    return code, out, err


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
async def test_a_post_alone_leads_at_epoch_1_and_refuses_to_resign(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    state = InMemoryControlState(epoch=1)
    for i in range(3):
        await state.put(config_key(f"c{i}"), operations_pb2.Alarm(alarm_id=f"a{i}"), epoch=1)
    post = FailoverPost("primary", SoleLeadership("primary", address), state)
    server = await serve(post, port)
    try:
        async with admin(address) as stub:
            status = await stub.GetFailoverStatus(admin_pb2.GetFailoverStatusRequest())
            assert (status.post, status.role, status.action) == (
                "primary",
                admin_pb2.POST_ROLE_LEADER,
                "lead",
            )
            assert (status.epoch, status.leader_name, status.leader_address) == (
                1,
                "primary",
                address,
            )
            assert not status.HasField("lease_remaining_ms")  # no lease without etcd
            revision = await state.revision()
            assert revision >= 3 and status.store_revision == revision
            # This post does not track what it applied: lag unknown, not 0.
            assert not status.HasField("applied_revision")
            assert not status.HasField("lag_revisions")

            post.applied_revision = revision - 2  # type: ignore[attr-defined]
            status = await stub.GetFailoverStatus(admin_pb2.GetFailoverStatusRequest())
            assert (status.applied_revision, status.lag_revisions) == (revision - 2, 2)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Resign(resign_request())
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "nobody to hand over to" in (refused.value.details() or "")

            for request, field in (
                (resign_request(hold_off_ms=-1), "hold_off_ms"),
                (resign_request(hold_off_ms=3_600_000), "hold_off_ms"),
                (admin_pb2.ResignRequest(hold_off_ms=100), "idempotency_key"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as invalid:
                    await stub.Resign(request)
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (invalid.value.details() or "").startswith(field)

        # The CLI: one answering post, one where nothing listens.
        nobody = f"127.0.0.1:{free_port()}"
        code, out, _ = await run_cli(
            capsys, "status", "--post", address, "--post", nobody, "--json", "--timeout", "2"
        )
        assert code == failover_cli.EXIT_REFUSED
        listed = json.loads(out)
        assert listed[0]["status"]["post"] == "primary"
        assert listed[0]["status"]["role"] == "POST_ROLE_LEADER"
        assert listed[1]["address"] == nobody and "no answer" in listed[1]["error"]

        code, out, _ = await run_cli(capsys, "status", "--post", nobody, "--timeout", "2")
        assert code == failover_cli.EXIT_UNREACHABLE
        assert "unreachable" in out and "Traceback" not in out

        code, out, _ = await run_cli(capsys, "switchover", "--to", "primary", "--post", address)
        assert code == failover_cli.EXIT_OK and "leads already" in out

        code, _, err = await run_cli(capsys, "switchover", "--to", "backup", "--post", address)
        assert code == failover_cli.EXIT_REFUSED and "no post named 'backup'" in err
    finally:
        await server.stop(grace=None)


@pytest.mark.timeout(60)
async def test_switchover_hands_leadership_to_the_standby(
    etcd: LocalEtcd, capsys: pytest.CaptureFixture[str]
) -> None:
    city = f"switch-{uuid.uuid4().hex[:8]}"
    ports = {"primary": free_port(), "backup": free_port()}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    elections: dict[str, Election] = {}
    servers: list[grpc.aio.Server] = []
    try:
        for name in ("primary", "backup"):
            election = Election(
                etcd.endpoints, city=city, name=name, address=addresses[name], config=CONFIG
            )
            elections[name] = await election.start()
            post = FailoverPost(name, election, InMemoryControlState())
            servers.append(await serve(post, ports[name]))
        await eventually(
            lambda: sum(e.may_command() for e in elections.values()) == 1, 10, "one post leads"
        )
        leader = next(n for n, e in elections.items() if e.may_command())
        standby = "backup" if leader == "primary" else "primary"
        first_epoch = elections[leader].command_epoch()
        await eventually(
            lambda: elections[standby].status().epoch == first_epoch, 10, "the standby sees it"
        )
        posts = ["--post", addresses["primary"], "--post", addresses["backup"]]

        code, out, _ = await run_cli(capsys, "status", *posts, "--json")
        assert code == failover_cli.EXIT_OK
        seen = {item["status"]["post"]: item["status"] for item in json.loads(out)}
        assert seen[leader]["role"] == "POST_ROLE_LEADER"
        assert seen[standby]["role"] == "POST_ROLE_STANDBY"
        for status in seen.values():
            assert int(status["epoch"]) == first_epoch
            assert status["leaderName"] == leader
            assert status["leaderAddress"] == addresses[leader]
            assert 0 < int(status["leaseRemainingMs"]) <= 1000

        # A standby refuses to resign and points at the leader.
        async with admin(addresses[standby]) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Resign(resign_request())
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"{leader} leads at {addresses[leader]}" in (refused.value.details() or "")
            trailing = dict(refused.value.trailing_metadata() or ())
            assert trailing.get(LEADER_METADATA) == addresses[leader]

        code, out, err = await run_cli(capsys, "switchover", "--to", standby, *posts)
        assert code == failover_cli.EXIT_OK, err
        assert f"{standby} leads" in out and "handover took" in out
        assert elections[standby].may_command()
        assert not elections[leader].may_command()
        assert elections[standby].command_epoch() > first_epoch

        code, out, _ = await run_cli(capsys, "status", *posts)
        assert code == failover_cli.EXIT_OK
        assert f"{standby} leads, epoch {elections[standby].command_epoch()}" in out

        code, out, _ = await run_cli(capsys, "switchover", "--to", standby, *posts)
        assert code == failover_cli.EXIT_OK and "leads already" in out
    finally:
        for server in servers:
            await server.stop(grace=None)
        for election in elections.values():
            await election.close()


@pytest.mark.timeout(30)
async def test_a_resign_retried_with_its_key_acts_once(etcd: LocalEtcd) -> None:
    city = f"resign-{uuid.uuid4().hex[:8]}"
    port = free_port()
    address = f"127.0.0.1:{port}"
    election = Election(etcd.endpoints, city=city, name="primary", address=address, config=CONFIG)
    server: grpc.aio.Server | None = None
    try:
        await election.start()
        await eventually(election.may_command, 10, "the only post leads")
        epoch = election.command_epoch()
        server = await serve(FailoverPost("primary", election, InMemoryControlState()), port)
        async with admin(address) as stub:
            request = resign_request(hold_off_ms=5_000)
            first = await stub.Resign(request)
            assert (first.post, first.resigned_epoch, first.hold_off_ms) == (
                "primary",
                epoch,
                5_000,
            )
            assert not election.may_command()
            # The retry of a request whose answer was lost: the same answer, no refusal.
            assert await stub.Resign(request) == first
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Resign(resign_request())
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            status = await stub.GetFailoverStatus(admin_pb2.GetFailoverStatusRequest())
            assert status.role == admin_pb2.POST_ROLE_STANDBY
    finally:
        if server is not None:
            await server.stop(grace=None)
        await election.close()
