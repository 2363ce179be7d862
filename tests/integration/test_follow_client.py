"""The leader-following client against two real gRPC posts on 127.0.0.1.

Each post is `api.server.start_server` (so the real interceptor puts
the leader's address in the trailing metadata) serving a minimal
OperatorService (ListAlarms, a read; AcknowledgeAlarm, a write) and PostAdmin
(GetStatus: its role). Which post leads is a flag of the test: a standby
refuses writes with NotLeaderError naming the leader, or naming nobody while
`leader` is None (an election).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from api.server import Service, start_server
from citypost.errors import FailedPreconditionError, NotFoundError, NotLeaderError
from cluster.ports import free_port
from console.cli import POSTS_ENV, run
from console.client import PostClient
from failover.follow_client import (
    Kind,
    LeaderFollowingChannel,
    PostUnreachableError,
    RetryPolicy,
)
from protos.citypost.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
)

pytestmark = pytest.mark.integration

OPERATOR = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name
FAST = RetryPolicy(initial_wait_s=0.05, max_wait_s=0.3, write_window_s=5.0)


@dataclass
class City:
    """What both posts share: who leads, and what each post did."""

    leader: str | None = None  # the address of the leading post; None during an election
    write_delay_s: float = 0.0  # how long a write takes (a slow post, still answering)
    acted: list[tuple[str, str, str]] = field(default_factory=list)  # (post, alarm, key)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (post, key)


class _Operator(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(self, city: City, address: str) -> None:
        self.city = city
        self.address = address

    async def ListAlarms(self, request: Any, context: Any) -> operator_pb2.ListAlarmsResponse:
        return operator_pb2.ListAlarmsResponse(
            alarms=[operations_pb2.Alarm(alarm_id="a-1", detail=f"from {self.address}")]
        )

    async def AcknowledgeAlarm(self, request: Any, context: Any) -> operations_pb2.Alarm:
        if self.city.leader != self.address:
            self.city.refused.append((self.address, request.idempotency_key))
            raise NotLeaderError(
                f"post at {self.address} does not lead",
                leader_address=self.city.leader or "",
            )
        await asyncio.sleep(self.city.write_delay_s)
        if request.alarm_id == "cleared":
            raise FailedPreconditionError("alarm cleared is already cleared")
        if request.alarm_id.startswith("missing"):
            raise NotFoundError(f"no alarm {request.alarm_id}")
        self.city.acted.append((self.address, request.alarm_id, request.idempotency_key))
        return operations_pb2.Alarm(
            alarm_id=request.alarm_id,
            state=operations_pb2.ACTIVE_ACK,
            acknowledged_by=self.address,
        )


class _Admin(admin_pb2_grpc.PostAdminServicer):
    def __init__(self, city: City, address: str) -> None:
        self.city = city
        self.address = address

    async def GetStatus(self, request: Any, context: Any) -> admin_pb2.PostStatus:
        role = "leader" if self.city.leader == self.address else "standby"
        return admin_pb2.PostStatus(post=self.address, role=role)


@dataclass
class Posts:
    city: City
    primary: str
    backup: str
    servers: dict[str, grpc.aio.Server]

    async def stop(self, address: str) -> None:
        await self.servers.pop(address).stop(grace=None)


async def _serve(city: City) -> tuple[str, grpc.aio.Server]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    operator = _Operator(city, address)  # type: ignore[abstract]
    admin = _Admin(city, address)  # type: ignore[abstract]
    server, _ = await start_server(
        [
            Service(OPERATOR, operator_pb2_grpc.add_OperatorServiceServicer_to_server, operator),
            Service(ADMIN, admin_pb2_grpc.add_PostAdminServicer_to_server, admin),
        ],
        port=port,
    )
    return address, server


@pytest.fixture
async def posts() -> AsyncIterator[Posts]:
    city = City()
    servers: dict[str, grpc.aio.Server] = {}
    try:
        primary, server = await _serve(city)
        servers[primary] = server
        backup, server = await _serve(city)
        servers[backup] = server
        city.leader = primary
        yield Posts(city, primary, backup, servers)
    finally:
        for server in servers.values():
            await server.stop(grace=None)


def _ack(alarm_id: str, key: str = "") -> operator_pb2.AlarmActionRequest:
    return operator_pb2.AlarmActionRequest(alarm_id=alarm_id, idempotency_key=key)


@pytest.mark.timeout(30)
async def test_a_write_sent_to_the_standby_lands_on_the_leader_with_its_key(
    posts: Posts,
) -> None:
    async with LeaderFollowingChannel([posts.backup, posts.primary], retry=FAST) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        alarm = await stub.AcknowledgeAlarm(_ack("a-1", key="k-1"))
        assert alarm.acknowledged_by == posts.primary
        assert posts.city.refused == [(posts.backup, "k-1")]
        assert posts.city.acted == [(posts.primary, "a-1", "k-1")]
        assert channel.directory.leader == posts.primary

        # The next write goes straight to the leader; a write without a key gets one.
        await stub.AcknowledgeAlarm(_ack("a-2"))
        assert len(posts.city.refused) == 1
        _, alarm_id, key = posts.city.acted[-1]
        assert alarm_id == "a-2" and key


@pytest.mark.timeout(30)
async def test_reads_are_answered_by_either_post_and_stick_to_it(posts: Posts) -> None:
    for first in (posts.backup, posts.primary):
        others = [p for p in (posts.primary, posts.backup) if p != first]
        async with LeaderFollowingChannel([first, *others], retry=FAST) as channel:
            stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
            for _ in range(2):
                reply = await stub.ListAlarms(operator_pb2.ListAlarmsRequest())
                assert reply.alarms[0].detail == f"from {first}"

    # The post that answered goes down: reads fail over to the other.
    async with LeaderFollowingChannel([posts.backup, posts.primary], retry=FAST) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        await stub.ListAlarms(operator_pb2.ListAlarmsRequest())
        await posts.stop(posts.backup)
        reply = await stub.ListAlarms(operator_pb2.ListAlarmsRequest())
        assert reply.alarms[0].detail == f"from {posts.primary}"


@pytest.mark.timeout(30)
async def test_a_write_during_a_failover_lands_on_the_new_leader_once(posts: Posts) -> None:
    async with LeaderFollowingChannel([posts.primary, posts.backup], retry=FAST) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        await stub.AcknowledgeAlarm(_ack("a-1"))
        assert channel.directory.leader == posts.primary

        # The leader dies; the standby still names it, then nobody (its lease expired,
        # an election), then leads.
        await posts.stop(posts.primary)

        async def elect() -> None:
            await asyncio.sleep(0.4)
            posts.city.leader = None
            await asyncio.sleep(0.4)
            posts.city.leader = posts.backup

        election = asyncio.create_task(elect())
        alarm = await stub.AcknowledgeAlarm(_ack("a-2", key="k-2"))
        await election
        assert alarm.acknowledged_by == posts.backup
        assert posts.city.acted[-1] == (posts.backup, "a-2", "k-2")
        assert [a for a in posts.city.acted if a[1] == "a-2"] == [(posts.backup, "a-2", "k-2")]
        # It was refused while the standby did not lead, always with the same key.
        assert posts.city.refused and {key for _, key in posts.city.refused} == {"k-2"}
        assert channel.directory.leader == posts.backup


@pytest.mark.timeout(30)
async def test_errors_not_about_leadership_come_back_unchanged_at_once(posts: Posts) -> None:
    async with LeaderFollowingChannel([posts.backup, posts.primary], retry=FAST) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AcknowledgeAlarm(_ack("missing-1"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "no alarm missing-1"

        # The leader's own FAILED_PRECONDITION: its role says it leads, so it is final
        # (tried once on the leader, not retried for the whole window).
        refused = len(posts.city.refused)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AcknowledgeAlarm(_ack("cleared"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already cleared" in (caught.value.details() or "")
        assert len(posts.city.refused) == refused  # straight to the known leader


@pytest.mark.timeout(30)
async def test_a_write_with_no_leader_at_all_gives_the_refusal_after_the_window(
    posts: Posts,
) -> None:
    posts.city.leader = None  # an election that never ends
    short = RetryPolicy(initial_wait_s=0.05, max_wait_s=0.2, write_window_s=1.0)
    async with LeaderFollowingChannel([posts.primary, posts.backup], retry=short) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AcknowledgeAlarm(_ack("a-1", key="k-9"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not lead" in (caught.value.details() or "")
    tried = {post for post, _ in posts.city.refused}
    assert tried == {posts.primary, posts.backup} and len(posts.city.refused) > 2
    assert posts.city.acted == []


@pytest.mark.timeout(30)
async def test_with_no_post_reachable_the_error_names_every_address() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    short = RetryPolicy(initial_wait_s=0.05, max_wait_s=0.1, write_window_s=0.5)
    async with LeaderFollowingChannel(dead, retry=short) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        with pytest.raises(PostUnreachableError) as read:
            await stub.ListAlarms(operator_pb2.ListAlarmsRequest())
        with pytest.raises(PostUnreachableError) as write:
            await stub.AcknowledgeAlarm(_ack("a-1"))
    for caught in (read, write):
        assert caught.value.addresses == tuple(dead)
        assert f"no post answers at {dead[0]}, {dead[1]}" in caught.value.message


# --- the console ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_the_console_given_both_posts_follows_the_leader(
    posts: Posts, capsys: pytest.CaptureFixture[str]
) -> None:
    both = f"{posts.backup},{posts.primary}"
    code = await asyncio.to_thread(
        run, ["--insecure", "--post", both, "alarm", "ack", "a-1", "--json"]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["acknowledgedBy"] == posts.primary
    (_, key), (post, _, acted_key) = posts.city.refused[0], posts.city.acted[0]
    assert post == posts.primary and key == acted_key != ""

    # Repeated --post works the same; reads come from the first post that answers.
    argv = ["--insecure", "--post", posts.backup, "--post", posts.primary, "alarms", "--json"]
    assert await asyncio.to_thread(run, argv) == 0
    assert json.loads(capsys.readouterr().out)[0]["detail"] == f"from {posts.backup}"


@pytest.mark.timeout(30)
async def test_a_console_write_during_a_failover_succeeds_on_the_new_leader(
    posts: Posts, capsys: pytest.CaptureFixture[str]
) -> None:
    await posts.stop(posts.primary)  # the leader dies; the standby names it for a while

    async def elect() -> None:
        await asyncio.sleep(0.5)
        posts.city.leader = posts.backup

    election = asyncio.create_task(elect())
    argv = [
        "--insecure",
        "--post",
        posts.primary,
        "--post",
        posts.backup,
        "alarm",
        "ack",
        "a-3",
        "--json",
    ]
    assert await asyncio.to_thread(run, argv) == 0, capsys.readouterr().err
    await election
    assert json.loads(capsys.readouterr().out)["acknowledgedBy"] == posts.backup
    keys = {key for _, key in posts.city.refused} | {key for *_, key in posts.city.acted}
    assert len(posts.city.acted) == 1 and len(keys) == 1 and posts.city.refused


@pytest.mark.timeout(30)
async def test_the_console_finds_the_posts_in_the_environment(
    posts: Posts, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POSTS_ENV, f"{posts.backup},{posts.primary}")
    await posts.stop(posts.backup)
    assert await asyncio.to_thread(run, ["--insecure", "alarm", "ack", "a-7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["acknowledgedBy"] == posts.primary

    monkeypatch.setenv(POSTS_ENV, "primary")
    assert await asyncio.to_thread(run, ["--insecure", "alarms"]) == 2
    assert "CITYPOST_POSTS" in capsys.readouterr().err


@pytest.mark.timeout(30)
async def test_the_console_names_every_post_it_could_not_reach(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    assert await asyncio.to_thread(run, ["--insecure", "--post", ",".join(dead), "alarms"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"no post answers at {dead[0]}, {dead[1]}" in err


# --- a frozen leader ----------------------------------------------------------------------------

PROBING = RetryPolicy(
    initial_wait_s=0.05, max_wait_s=0.3, write_window_s=10.0, write_probe_after_s=0.5
)


@pytest.fixture
def frozen() -> Iterator[str]:
    """The address of a post that is frozen (SIGSTOP) as the network sees it: the kernel
    takes connections into its backlog, nothing ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.timeout(30)
async def test_a_write_leaves_a_post_that_answers_nothing_for_the_next_one(
    posts: Posts, frozen: str
) -> None:
    posts.city.leader = posts.backup  # the standby has taken over from the frozen leader
    async with LeaderFollowingChannel([frozen, posts.backup], retry=PROBING) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        alarm = await stub.AcknowledgeAlarm(_ack("a-1", key="k-1"))
        assert alarm.acknowledged_by == posts.backup
        assert posts.city.acted == [(posts.backup, "a-1", "k-1")]
        assert channel.directory.is_silent(frozen)
        assert channel.directory.order(Kind.WRITE) == [posts.backup]


@pytest.mark.timeout(30)
async def test_a_slow_post_that_answers_its_health_checks_is_waited_for(posts: Posts) -> None:
    posts.city.write_delay_s = 1.6  # three probes' worth
    async with LeaderFollowingChannel([posts.primary, posts.backup], retry=PROBING) as channel:
        stub = channel.stub(operator_pb2_grpc.OperatorServiceStub)
        alarm = await stub.AcknowledgeAlarm(_ack("a-1", key="k-1"))
        assert alarm.acknowledged_by == posts.primary
        assert posts.city.acted == [(posts.primary, "a-1", "k-1")]
        assert posts.city.refused == []  # never sent elsewhere
        assert not channel.directory.is_silent(posts.primary)


@pytest.mark.timeout(30)
async def test_the_console_client_too_leaves_a_post_that_answers_nothing(
    posts: Posts, frozen: str
) -> None:
    posts.city.leader = posts.backup
    client = PostClient([frozen, posts.backup], operator="op-1", timeout_s=10.0, retry=PROBING)
    try:
        alarm = await asyncio.to_thread(client.write, "AcknowledgeAlarm", _ack("a-1", key="k-1"))
        assert alarm.acknowledged_by == posts.backup
        posts.city.write_delay_s = 1.6  # and waits for a slow one that answers
        alarm = await asyncio.to_thread(client.write, "AcknowledgeAlarm", _ack("a-2", key="k-2"))
        assert alarm.acknowledged_by == posts.backup
    finally:
        client.close()
    assert posts.city.acted == [(posts.backup, "a-1", "k-1"), (posts.backup, "a-2", "k-2")]
    assert posts.city.refused == []
