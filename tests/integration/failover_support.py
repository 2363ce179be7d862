"""Helpers of the failover scenarios (tests/integration/test_failover.py).

The evidence they gather is independent of the posts' own word: the network
server's execution log (what devices did), the leader key in etcd, and what
the operator API acknowledged. The posts' PostAdmin is asked only for what
only a post knows (its role, its applied revision).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aetcd
import grpc

from chaos.evidence import executions_from_log
from chaos.invariants import executed_once, single_commander
from chaos.operator_load import Acked, send
from cluster.system import CitySystem, LeaderNow
from console.client import PostClient
from fleet.network_server import Execution, NetworkServer
from protos.citypost.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    operator_pb2,
    operator_pb2_grpc,
)

# Lamp groups of the city at scale 0.005 (9 and 6 lamps): every command is one multicast.
GROUPS = ("chenove", "fontaine-les-dijon")
TAKEOVER_BOUND_S = 10.0  # generous: the lease is 2 s
EXECUTION_BOUND_S = 45.0  # a command sent is executed by every device of its group within this
OPERATOR = "op-failover"


async def send_some(system: CitySystem, prefix: str, n: int, pct: float) -> list[Acked]:
    """`n` commands through a leader-following client, one after the other."""
    client = PostClient(
        system.addresses(),
        operator=OPERATOR,
        timeout_s=5.0,
        channel_factory=system.channel_factory(),
        token=system.operator(),
    )
    try:
        return [
            await asyncio.to_thread(send, client, f"{prefix}-{i}", GROUPS[i % 2], pct + i)
            for i in range(n)
        ]
    finally:
        client.close()


# --- the leader, from etcd ------------------------------------------------------------------


async def read_leader(system: CitySystem, client: aetcd.Client) -> LeaderNow | None:
    with contextlib.suppress(aetcd.ClientError, TimeoutError):
        return await system.leader(client)
    return None


async def wait_leader(
    system: CitySystem, client: aetcd.Client, timeout_s: float, *, newer_than: int = 0
) -> tuple[LeaderNow, float]:
    """The leader once one holds the key with an epoch above `newer_than`, and when seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        leader = await read_leader(system, client)
        if leader is not None and leader.epoch > newer_than:
            return leader, time.monotonic()
        if time.monotonic() >= deadline:
            raise AssertionError(f"no post leads with an epoch above {newer_than} in {timeout_s} s")
        await asyncio.sleep(0.05)


# --- what the posts say ---------------------------------------------------------------------


def failover_status(
    system: CitySystem, address: str, timeout_s: float = 3.0
) -> admin_pb2.FailoverStatus:
    with system.channel(address) as channel:
        stub = admin_pb2_grpc.PostAdminStub(channel)
        status: admin_pb2.FailoverStatus = stub.GetFailoverStatus(
            admin_pb2.GetFailoverStatusRequest(), timeout=timeout_s
        )
        return status


async def wait_role(
    system: CitySystem, address: str, role: int, timeout_s: float
) -> admin_pb2.FailoverStatus:
    """The post's status once it reports `role` (PostRole)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            status = await asyncio.to_thread(failover_status, system, address)
            if status.role == role:
                return status
            last = status
        except grpc.RpcError as exc:
            last = exc
        if time.monotonic() >= deadline:
            name = admin_pb2.PostRole.Name(role)  # type: ignore[arg-type]
            raise AssertionError(f"{address} not {name} within {timeout_s} s; last: {last}")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class RoleSample:
    at: float  # monotonic, when the round started
    statuses: dict[str, admin_pb2.FailoverStatus]  # post name -> its answer, if it answered

    @property
    def roles(self) -> dict[str, int]:
        return {name: status.role for name, status in self.statuses.items()}

    def split_brain(self) -> bool:
        """Two posts lead under one epoch, or the older epoch's leader still said it led
        after the newer one said so (answer times, `at_ms`): a handover, even a planned one,
        has the old leader stop before the new one starts."""
        leaders = sorted(
            (s for s in self.statuses.values() if s.role == admin_pb2.POST_ROLE_LEADER),
            key=lambda s: s.epoch,
        )
        for older, newer in itertools.pairwise(leaders):
            if older.epoch == newer.epoch or older.at_ms >= newer.at_ms:
                return True
        return False


@dataclass
class RolePoller:
    """Asks every post its role in rounds on a thread, alternating the order, so that a
    leader still claiming to lead after its successor started shows up in a round."""

    system: CitySystem
    interval_s: float = 0.2
    # GetFailoverStatus waits up to 2 s for etcd (api.admin.STATE_TIMEOUT_S) before answering.
    call_timeout_s: float = 3.0
    samples: list[RoleSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RolePoller:
        self._thread = threading.Thread(target=self._run, name="role-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def split_brains(self, since: float = 0.0) -> list[RoleSample]:
        return [s for s in list(self.samples) if s.at >= since and s.split_brain()]

    def _run(self) -> None:
        channels: dict[str, grpc.Channel] = {}
        turn = 0
        try:
            while not self._stop.is_set():
                statuses: dict[str, admin_pb2.FailoverStatus] = {}
                at = time.monotonic()
                posts = list(self.system.posts.items())
                if turn % 2:
                    posts.reverse()
                turn += 1
                for name, post in posts:
                    if not post.address:
                        continue
                    channel = channels.get(post.address)
                    if channel is None:
                        channel = channels[post.address] = self.system.channel(post.address)
                    stub = admin_pb2_grpc.PostAdminStub(channel)
                    try:
                        statuses[name] = stub.GetFailoverStatus(
                            admin_pb2.GetFailoverStatusRequest(), timeout=self.call_timeout_s
                        )
                    except grpc.RpcError:
                        continue  # crashed, frozen or restarting: no word
                self.samples.append(RoleSample(at, statuses))
                self._stop.wait(self.interval_s)
        finally:
            for channel in channels.values():
                channel.close()


# --- what the devices did -------------------------------------------------------------------


def executed_by(executions: Sequence[Execution], command_id: str) -> set[str]:
    return {e.dev_eui for e in executions if e.command_id == command_id}


def group_sizes(network_server: NetworkServer) -> dict[str, int]:
    groups = network_server.city.registry.groups()
    return {g: len(groups[(assets_pb2.STREET_LAMP, g)]) for g in GROUPS}


async def wait_executed(network_server: NetworkServer, commands: Sequence[Acked]) -> list[Acked]:
    """Wait until every command was executed by every lamp of its group; return the rest."""
    size = group_sizes(network_server)
    deadline = time.monotonic() + EXECUTION_BOUND_S
    while True:
        log = network_server.executions()
        missing = [c for c in commands if len(executed_by(log, c.command_id)) < size[c.group]]
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(0.2)


def check_execution_log(log: Sequence[Execution]) -> None:
    """The drills' own invariants over the devices' log: none executed twice, and no
    older epoch executed after a newer one's first (ordered by the devices' clock)."""
    events = executions_from_log(log)
    broken = single_commander(events) + executed_once(events)
    assert not broken, "\n".join(f"{v.invariant}: {v.detail}" for v in broken[:20])


def lost_commands(
    system: CitySystem, address: str, acked: Sequence[Acked]
) -> list[tuple[Acked, str]]:
    """The acknowledged commands the post at `address` does not know (GetCommand)."""
    lost = []
    with system.channel(address) as channel:
        operator = operator_pb2_grpc.OperatorServiceStub(channel)
        for command in acked:
            try:
                operator.GetCommand(
                    operator_pb2.GetCommandRequest(command_id=command.command_id), timeout=5
                )
            except grpc.RpcError as exc:
                lost.append((command, exc.code().name))
    return lost


# --- ports ----------------------------------------------------------------------------------
