"""Leader election of two posts on a real 3-member etcd (1 s leases)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aetcd import rpc

from chaos.link_proxy import LinkProxy
from citypost.config import FailoverConfig
from citypost.errors import ConfigError, NotLeaderError
from cluster.etcd_local import LocalEtcd
from failover.election import Election, Role, RoleChange, leader_key
from failover.etcd_client import etcd_client
from failover.leadership import Action, LeaderValue

pytestmark = pytest.mark.integration

CONFIG = FailoverConfig(lease_ttl_s=1.0, keepalive_interval_s=0.2, safety_margin_s=0.3)
ElectionFactory = Callable[..., Awaitable[Election]]


@pytest.fixture
async def elections(etcd3: LocalEtcd) -> AsyncIterator[ElectionFactory]:
    """Starts elections for a city of this test only; closes them (and revives members) after."""
    city = f"elect-{uuid.uuid4().hex[:8]}"
    started: list[Election] = []

    async def make(name: str, **kwargs: object) -> Election:
        election = Election(
            etcd3.endpoints,
            city=city,
            name=name,
            address=f"127.0.0.1:{50051 + len(started)}",
            config=CONFIG,
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(election)
        return await election.start()

    try:
        yield make
    finally:
        for election in started:
            await election.close()
        for i in range(etcd3.member_count):
            if not etcd3.member_alive(i):
                etcd3.restart_member(i)


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until `check()`; returns the seconds it took. Generous bounds only."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def leaders(*posts: Election) -> list[Election]:
    return [p for p in posts if p.may_command()]


async def two_posts(make: ElectionFactory) -> tuple[Election, Election]:
    """Primary and backup started, one of them leading; returns (leader, standby)."""
    primary = await make("primary")
    backup = await make("backup")
    await eventually(lambda: len(leaders(primary, backup)) == 1, 5, "one post leads")
    leader = leaders(primary, backup)[0]
    standby = backup if leader is primary else primary
    await eventually(
        lambda: standby.status().epoch == leader.status().epoch, 5, "the standby sees the leader"
    )
    return leader, standby


async def key_in_etcd(etcd: LocalEtcd, city: str) -> tuple[LeaderValue, int, int] | None:
    """The leader key read by an independent client: (value, create_revision, lease)."""
    async with etcd_client(etcd.endpoints) as client:
        got = await client.get(leader_key(city))
    if got is None:
        return None
    return LeaderValue.from_json(got.value), got.create_revision, got.lease


async def collect(election: Election, into: list[RoleChange]) -> None:
    async for change in election.role_changes():
        into.append(change)


@pytest.mark.timeout(30)
async def test_exactly_one_leads_and_its_epoch_is_the_keys_create_revision(
    elections: ElectionFactory, etcd3: LocalEtcd
) -> None:
    leader, standby = await two_posts(elections)
    assert not standby.may_command()
    seen = await key_in_etcd(etcd3, leader.city)
    assert seen is not None
    value, create_revision, lease = seen
    assert value == leader.value
    status = leader.status()
    assert status.role is Role.LEADER and status.action is Action.LEAD
    assert leader.command_epoch() == status.epoch == create_revision
    assert status.lease_id == lease
    assert status.lease_remaining_s is not None and 0 < status.lease_remaining_s <= 1.0
    # The standby knows who leads, where, and under which epoch, and holds a lease too.
    other = standby.status()
    assert other.role is Role.STANDBY and other.action is Action.STAND_BY
    assert other.leader == leader.value and other.epoch == create_revision
    assert other.lease_remaining_s is not None and other.lease_remaining_s > 0
    # A campaign while the key is held changes nothing and names the holder.
    result = await standby.campaign()
    assert not result.won and result.leader.holder == leader.name
    assert result.epoch == create_revision


@pytest.mark.timeout(30)
async def test_resign_hands_over_within_a_second_with_a_higher_epoch(
    elections: ElectionFactory,
) -> None:
    leader, standby = await two_posts(elections)
    old_epoch = leader.command_epoch()
    holders: list[str | None] = []

    async def follow() -> None:
        async for record in leader.observe():
            holders.append(None if record is None else record.holder)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await leader.resign()
    assert not leader.may_command()  # at once, before anybody else leads
    took = await eventually(standby.may_command, 1.0, "the standby leads after a resign")
    assert standby.command_epoch() > old_epoch
    # observe() saw every step: my key, its deletion by the revoke, the new leader's key.
    await eventually(lambda: len(holders) == 3, 1.0, "observe() sees the handover")
    assert holders == [leader.name, None, standby.name]
    follower.cancel()
    # The resigned post holds off and follows the new leader.
    await eventually(
        lambda: leader.status().leader == standby.value, 1.0, "the old leader sees the new"
    )
    assert not leader.may_command()
    assert took < 1.0


@pytest.mark.timeout(30)
async def test_frozen_leader_stops_commanding_before_its_lease_expires(
    elections: ElectionFactory, etcd3: LocalEtcd
) -> None:
    leader, standby = await two_posts(elections)
    old_epoch = leader.command_epoch()
    changes: list[RoleChange] = []
    watcher = asyncio.create_task(collect(leader, changes))
    try:
        leader.pause_keepalives()
        await eventually(lambda: not leader.may_command(), 2.0, "the frozen leader demotes")
        # At that instant etcd still holds its key: the lease has not expired yet,
        # and nobody else can have been elected.
        seen = await key_in_etcd(etcd3, leader.city)
        assert seen is not None and seen[0] == leader.value and seen[1] == old_epoch
        assert not standby.may_command()
        assert leader.status().action is Action.DEMOTE
        # Its refusal does not send a writer back to itself, though the key still names it.
        with pytest.raises(NotLeaderError) as refused:
            leader.command_epoch()
        assert refused.value.leader_name == "" and "nobody leads now" in refused.value.message
        # The role loop published the demotion without any etcd event.
        await eventually(
            lambda: any(c.role is Role.STANDBY and c.action is Action.DEMOTE for c in changes),
            1.0,
            "the demotion is published",
        )
        # After the lease expires in etcd, the standby leads under a higher epoch.
        await eventually(standby.may_command, 10.0, "the standby leads after expiry")
        assert standby.command_epoch() > old_epoch
        # Waking up, the old leader finds its lease gone and follows the new leader.
        leader.resume_keepalives()
        await eventually(
            lambda: leader.status().leader == standby.value, 5.0, "the old leader follows"
        )
        assert not leader.may_command()
        await asyncio.sleep(0.5)
        assert leaders(leader, standby) == [standby]
    finally:
        watcher.cancel()


async def _follower_indexes(etcd: LocalEtcd) -> list[int]:
    async with etcd_client(etcd.endpoints) as client:
        status = await client.status()
    assert status.leader is not None, "etcd has no raft leader"
    return [m.index for m in etcd.members if m.name != status.leader.name]


@pytest.mark.timeout(60)
async def test_losing_one_etcd_member_changes_no_role(
    elections: ElectionFactory, etcd3: LocalEtcd
) -> None:
    leader, standby = await two_posts(elections)
    epoch = leader.command_epoch()
    changes: list[RoleChange] = []
    watchers = [asyncio.create_task(collect(p, changes)) for p in (leader, standby)]
    try:
        await asyncio.sleep(0.3)
        assert {(c.role, c.epoch) for c in changes} == {(Role.LEADER, epoch), (Role.STANDBY, epoch)}
        before = len(changes)
        # Each etcd follower in turn (the raft leader's loss is an election of its own):
        # the streams on it die, keepalives and watches move to the others.
        for index in await _follower_indexes(etcd3):
            # In a thread: a blocked event loop would stop the keepalives itself.
            await asyncio.to_thread(etcd3.kill_member, index)
            await asyncio.sleep(1.5)  # more than the lease TTL
            assert leader.may_command() and leader.command_epoch() == epoch
            assert not standby.may_command()
            await asyncio.to_thread(etcd3.restart_member, index)
        assert len(changes) == before, f"roles changed: {changes[before:]}"
        # The standby's watch survived: it takes over at once when the leader resigns.
        await leader.resign()
        await eventually(standby.may_command, 1.0, "the standby leads after a resign")
    finally:
        for task in watchers:
            task.cancel()


@pytest.mark.timeout(60)
async def test_quorum_loss_demotes_the_leader_and_one_leads_again_after(
    elections: ElectionFactory, etcd3: LocalEtcd
) -> None:
    leader, standby = await two_posts(elections)
    epoch = leader.command_epoch()
    survivor = 0
    for index in range(1, etcd3.member_count):
        await asyncio.to_thread(etcd3.kill_member, index)
    await eventually(lambda: not leader.may_command(), 3.0, "the leader demotes without quorum")
    assert not standby.may_command()
    await asyncio.to_thread(etcd3.restart_member, 1, wait_healthy=False)
    await asyncio.to_thread(etcd3.restart_member, 2)
    assert etcd3.member_healthy(survivor)
    await eventually(lambda: len(leaders(leader, standby)) == 1, 10.0, "one post leads again")
    assert leaders(leader, standby)[0].command_epoch() >= epoch
    await asyncio.sleep(0.5)
    assert len(leaders(leader, standby)) == 1


@pytest.mark.timeout(60)
async def test_a_ttl_etcd_does_not_grant_is_a_config_error(tmp_path: Path) -> None:
    # 100 ms / 1000 ms: etcd's minimum lease is 1.5 x 1 s, rounded up to 2 s.
    with LocalEtcd(
        tmp_path / "etcd", members=1, heartbeat_interval_ms=100, election_timeout_ms=1000
    ) as slow:
        election = Election(
            slow.endpoints, city="dijon", name="primary", address="127.0.0.1:1", config=CONFIG
        )
        with pytest.raises(ConfigError, match=r"lease_ttl_s >= 2"):
            await election.start()
        # The refused lease was revoked, and no key was written.
        async with etcd_client(slow.endpoints) as client:
            assert await client.get(leader_key("dijon")) is None
            leases = await client.leasestub.LeaseLeases(rpc.LeaseLeasesRequest())
            assert list(leases.leases) == []


@pytest.mark.timeout(40)
async def test_a_round_trip_near_the_leases_margin_never_fences_the_leader(
    etcd3: LocalEtcd,
) -> None:
    # 400 ms each way: a keepalive answered 0.8 s after it was sent leaves 0.7 s of
    # trust (TTL 2 s, margin 0.5 s). Keepalives that waited for each other's answers
    # would renew every 0.8 s and fence the leader for 0.1 s each cycle; sent every
    # 0.25 s regardless, the answers keep coming faster than the trust runs out.
    config = FailoverConfig(lease_ttl_s=2.0, keepalive_interval_s=0.25, safety_margin_s=0.5)
    with LinkProxy(etcd3.endpoints, name="slow-election", seed=3) as proxy:
        election = Election(
            proxy.endpoints,
            city=f"slow-{uuid.uuid4().hex[:8]}",
            name="primary",
            address="127.0.0.1:50051",
            config=config,
        )
        await election.start()
        try:
            await eventually(election.may_command, 5.0, "the post leads")
            epoch = election.command_epoch()
            proxy.degrade(400, 0.0)
            await asyncio.sleep(1.0)  # the keepalives sent before the slowdown are answered
            fenced = 0
            watched_until = time.monotonic() + 5.0
            while time.monotonic() < watched_until:
                fenced += not election.may_command()
                await asyncio.sleep(0.01)
            assert fenced == 0, f"the leader fenced itself in {fenced} samples of 10 ms"
            assert election.command_epoch() == epoch
        finally:
            await election.close()
