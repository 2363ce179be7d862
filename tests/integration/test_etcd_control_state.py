"""EtcdControlState against real etcd: the seam's contract, fencing, watch across member loss,
compaction and snapshot reload.

Each test works under its own city, so the session etcd's other keys never show.
Compaction is store-wide, so it runs on a private etcd; so does the 3-member test.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aetcd
import pytest

from citypost.errors import FailedPreconditionError, InfrastructureError, InvalidArgumentError
from cluster.etcd_local import LocalEtcd
from cluster.ports import free_ports
from failover import control_state as cs
from failover.control_state import (
    Change,
    ControlState,
    FencedError,
    RevisionCompactedError,
    read_snapshot,
)
from failover.etcd_control_state import EtcdControlState
from protos.citypost.v1 import control_state_pb2, operations_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def alarm(alarm_id: str, detail: str = "") -> operations_pb2.Alarm:
    return operations_pb2.Alarm(alarm_id=alarm_id, type="lamp_fault", detail=detail)


def task(task_id: str) -> operations_pb2.Task:
    return operations_pb2.Task(task_id=task_id, kind="repair_lamp")


def new_city() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def take_leadership(client: aetcd.Client, city: str, lease: int | None = None) -> int:
    """Put the city's leader key (as an election would) and return its epoch."""
    key = (cs.city_root(city) + cs.LEADER_KEY).encode()
    await client.put(key, b"holder", lease=lease)
    got = await client.get(key)
    assert got is not None
    return int(got.create_revision)


async def take(iterator: AsyncIterator[Change], n: int, timeout: float = 10) -> list[Change]:
    async def collect() -> list[Change]:
        return [await anext(iterator) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


class Leader:
    """A city in etcd with a leader key held by the test, and a state that writes as it."""

    def __init__(self, state: EtcdControlState, client: aetcd.Client, epoch: int) -> None:
        self.state = state
        self.client = client
        self.epoch = epoch


@pytest.fixture
async def leader(etcd: LocalEtcd) -> AsyncIterator[Leader]:
    city = new_city()
    state = EtcdControlState.from_endpoints(etcd.endpoints, city)
    async with etcd.client() as client:
        epoch = await take_leadership(client, city)
        try:
            yield Leader(state, client, epoch)
        finally:
            await state.close()
            await client.delete_prefix(cs.city_root(city).encode())


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[LocalEtcd]:
    cluster = LocalEtcd(tmp_path / "etcd1", members=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# --- reads and writes


async def test_writes_return_rising_revisions_and_reads_see_them(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    seam: ControlState = state  # mypy: the etcd state satisfies the seam
    r1 = await seam.put(cs.alarm_key("a"), alarm("a"), epoch=epoch)
    r2 = await state.put_many(
        [(cs.alarm_key("b"), alarm("b")), (cs.task_key("t"), task("t"))], epoch=epoch
    )
    r3 = await state.put(cs.alarm_key("a"), alarm("a", "again"), epoch=epoch)
    assert epoch < r1 < r2 < r3
    assert await state.revision() >= r3
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "again"
    assert await state.get(cs.alarm_key("nope"), operations_pb2.Alarm) is None
    # Values are the serialized records, under the city's root.
    raw = await leader.client.get((state.root + cs.task_key("t")).encode())
    assert raw is not None and operations_pb2.Task.FromString(raw.value) == task("t")


async def test_delete_removes_and_deleting_nothing_changes_nothing(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=epoch)
    r = await state.delete(cs.alarm_key("a"), epoch=epoch)
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None
    assert await state.revision() == r
    assert await state.delete(cs.alarm_key("a"), epoch=epoch) == r
    assert await state.revision() == r


async def test_bad_writes_are_refused_whole(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    await state.put(cs.alarm_key("a"), alarm("a", "before"), epoch=epoch)
    before = await state.revision()
    with pytest.raises(InvalidArgumentError, match=r"expected a citypost\.v1\.Alarm"):
        await state.put(cs.alarm_key("a"), task("t"), epoch=epoch)
    with pytest.raises(InvalidArgumentError):
        await state.put_many(
            [(cs.alarm_key("a"), alarm("a", "after")), ("nowhere/x", alarm("x"))], epoch=epoch
        )
    with pytest.raises(InvalidArgumentError, match="duplicate"):
        await state.put_many(
            [(cs.alarm_key("b"), alarm("b")), (cs.alarm_key("b"), alarm("b"))], epoch=epoch
        )
    too_many = [(cs.alarm_key(f"m{i}"), alarm(f"m{i}")) for i in range(state.max_txn_ops + 1)]
    with pytest.raises(InvalidArgumentError, match="max-txn-ops"):
        await state.put_many(too_many, epoch=epoch)
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "before"
    assert await state.get(cs.alarm_key("b"), operations_pb2.Alarm) is None
    assert await state.revision() == before


async def test_a_full_transaction_commits_at_one_revision(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    items = [(cs.alarm_key(f"m{i:03d}"), alarm(f"m{i}")) for i in range(state.max_txn_ops)]
    r = await state.put_many(items, epoch=epoch)
    page = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=cs.MAX_PAGE)
    assert len(page.entries) == state.max_txn_ops
    assert {e.mod_revision for e in page.entries} == {r}


async def test_put_many_mixes_puts_and_deletes_under_one_revision(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    await state.put(cs.alarm_key("old"), alarm("old"), epoch=epoch)
    r = await state.put_many(
        [(cs.alarm_key("old"), None), (cs.alarm_key("new"), alarm("new"))], epoch=epoch
    )
    watch = state.watch(r)
    changes = await take(watch, 2)
    await watch.aclose()
    assert [(c.revision, c.key, c.deleted) for c in changes] == [
        (r, cs.alarm_key("old"), True),
        (r, cs.alarm_key("new"), False),
    ]


# --- fencing


async def test_a_write_from_another_epoch_is_fenced_with_the_real_epoch(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    before = await state.revision()
    for wrong in (epoch - 1, epoch + 1, 0):
        with pytest.raises(FencedError, match=f"fenced: epoch {wrong} is not the leader's") as e:
            await state.put(cs.alarm_key("a"), alarm("a"), epoch=wrong)
        assert e.value.leader_epoch == epoch
    with pytest.raises(FailedPreconditionError):
        await state.delete(cs.alarm_key("a"), epoch=epoch - 1)
    # The fence comes before validation, as in memory: a deposed writer learns it first.
    with pytest.raises(FencedError):
        await state.put(cs.alarm_key("a"), task("t"), epoch=epoch - 1)
    assert await state.revision() == before
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None


async def test_a_deposed_leader_cannot_write_even_all_or_none(
    leader: Leader, etcd: LocalEtcd
) -> None:
    state, old_epoch = leader.state, leader.epoch
    await state.put(cs.alarm_key("a"), alarm("a", "old leader"), epoch=old_epoch)
    # The old holder's key goes (lease expiry, resignation); another holder campaigns.
    await leader.client.delete((state.root + cs.LEADER_KEY).encode())
    lease = await leader.client.lease(5)
    new_epoch = await take_leadership(leader.client, state.city, lease=lease.id)
    assert new_epoch > old_epoch
    before = await state.revision()
    with pytest.raises(FencedError) as raised:
        await state.put_many(
            [(cs.alarm_key("a"), alarm("a", "stale")), (cs.alarm_key("b"), alarm("b"))],
            epoch=old_epoch,
        )
    assert (raised.value.epoch, raised.value.leader_epoch) == (old_epoch, new_epoch)
    assert await state.revision() == before
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "old leader"
    assert await state.get(cs.alarm_key("b"), operations_pb2.Alarm) is None
    # The new leader, through its own client, writes.
    new_state = EtcdControlState.from_endpoints(etcd.endpoints, state.city)
    try:
        await new_state.put(cs.alarm_key("a"), alarm("a", "new leader"), epoch=new_epoch)
    finally:
        await new_state.close()
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "new leader"
    await lease.revoke()
    with pytest.raises(FencedError) as raised:
        await state.put(cs.alarm_key("a"), alarm("a"), epoch=new_epoch)
    assert raised.value.leader_epoch == 0  # no leader at all once its lease is gone


# --- pagination


async def fill_alarms(leader: Leader, n: int) -> list[str]:
    keys = [cs.alarm_key(f"a{i:02d}") for i in range(n)]
    await leader.state.put_many([(k, alarm(cs.key_id(k))) for k in keys], epoch=leader.epoch)
    await leader.state.put(cs.task_key("t"), task("t"), epoch=leader.epoch)
    return keys


async def test_list_pages_in_key_order(leader: Leader) -> None:
    state = leader.state
    keys = await fill_alarms(leader, 7)
    seen: list[str] = []
    start_after = ""
    pages = 0
    while True:
        page = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=3, start_after=start_after)
        pages += 1
        seen.extend(e.key for e in page.entries)
        assert all(e.value.alarm_id == cs.key_id(e.key) for e in page.entries)
        if page.next_start_after is None:
            break
        start_after = page.next_start_after
    assert (seen, pages) == (keys, 3)
    exact = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=7)
    assert len(exact.entries) == 7 and exact.next_start_after is None
    after = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=10, start_after=keys[1])
    assert [e.key for e in after.entries] == keys[2:]
    for limit in (0, cs.MAX_PAGE + 1):
        with pytest.raises(InvalidArgumentError, match="limit"):
            await state.list(cs.ALARMS, operations_pb2.Alarm, limit=limit)


async def test_pages_read_at_one_revision_ignore_later_writes(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    keys = await fill_alarms(leader, 4)
    first = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=2)
    await state.delete(keys[3], epoch=epoch)
    await state.put(keys[2], alarm("a02", "changed"), epoch=epoch)
    await state.put(cs.alarm_key("a99"), alarm("a99"), epoch=epoch)
    assert first.next_start_after is not None
    second = await state.list(
        cs.ALARMS,
        operations_pb2.Alarm,
        limit=10,
        start_after=first.next_start_after,
        revision=first.revision,
    )
    assert [e.key for e in second.entries] == keys[2:]
    assert second.entries[0].value.detail == ""
    latest = await state.list(cs.ALARMS, operations_pb2.Alarm, start_after=first.next_start_after)
    assert [e.key for e in latest.entries] == [keys[2], cs.alarm_key("a99")]
    with pytest.raises(InvalidArgumentError, match="future"):
        await state.list(cs.ALARMS, operations_pb2.Alarm, revision=await state.revision() + 1000)


async def test_listing_everything_pages_past_the_leader_key(leader: Leader) -> None:
    """Under prefix "" the leader key sits among the records; it is never listed."""
    state, epoch = leader.state, leader.epoch
    records = [
        cs.audit_key(5, "e"),
        cs.config_key("lighting"),
        cs.idempotency_index_key("k"),
        cs.ledger_key("c1"),
        cs.alarm_key("a"),
    ]
    await state.put_many(
        [
            (cs.audit_key(5, "e"), None),  # an absent key deleted: no change
            (cs.config_key("lighting"), alarm("cfg")),
            (cs.ledger_key("c1"), None),
            (cs.alarm_key("a"), alarm("a")),
        ],
        epoch=epoch,
    )
    await state.put_many(
        [
            (cs.audit_key(5, "e"), cs.RECORD_TYPES[cs.AUDIT]()),
            (cs.idempotency_index_key("k"), cs.RECORD_TYPES[cs.IDEMPOTENCY]()),
            (cs.ledger_key("c1"), cs.RECORD_TYPES[cs.LEDGER]()),
        ],
        epoch=epoch,
    )
    for limit in (1, 2, 100):
        seen: list[str] = []
        start_after = ""
        while True:
            page = await state.list_raw("", limit=limit, start_after=start_after)
            assert 0 < len(page.entries) <= limit
            seen.extend(e.key for e in page.entries)
            if page.next_start_after is None:
                break
            start_after = page.next_start_after
        assert seen == sorted(records)
    snapshot = await read_snapshot(state, page_size=2)
    assert set(snapshot.records) == set(records)


# --- watch


async def test_watch_replays_in_order_then_follows_live_writes(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    r_a = await state.put(cs.alarm_key("a"), alarm("a"), epoch=epoch)
    r_b = await state.put(cs.alarm_key("b"), alarm("b"), epoch=epoch)
    r_del = await state.delete(cs.alarm_key("a"), epoch=epoch)
    watch = state.watch(r_b)
    replayed = await take(watch, 2)
    assert [(c.revision, c.key, c.deleted) for c in replayed] == [
        (r_b, cs.alarm_key("b"), False),
        (r_del, cs.alarm_key("a"), True),
    ]
    assert r_a < r_b
    # The leader key is no record: re-putting it (a keepalive-free refresh) is not a change.
    await leader.client.put((state.root + cs.LEADER_KEY).encode(), b"holder")

    async def write_later() -> int:
        await asyncio.sleep(0.05)
        return await state.put(cs.task_key("t"), task("t"), epoch=epoch)

    writer = asyncio.create_task(write_later())
    live = await asyncio.wait_for(anext(watch), timeout=5)
    assert (live.revision, live.key) == (await writer, cs.task_key("t"))
    decoded = live.decode(operations_pb2.Task)
    assert decoded is not None and decoded.task_id == "t"
    await watch.aclose()


async def test_watch_filters_by_prefix_and_two_watchers_agree(leader: Leader) -> None:
    state, epoch = leader.state, leader.epoch
    start = await state.revision() + 1
    first, second = state.watch(start), state.watch(start, prefix=cs.ALARMS)
    readers = [asyncio.create_task(take(first, 3)), asyncio.create_task(take(second, 2))]
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=epoch)
    await state.put(cs.task_key("t"), task("t"), epoch=epoch)
    await state.put(cs.alarm_key("b"), alarm("b"), epoch=epoch)
    everything, alarms = await asyncio.gather(*readers)
    assert [c.key for c in everything] == [cs.alarm_key("a"), cs.task_key("t"), cs.alarm_key("b")]
    assert alarms == [everything[0], everything[2]]
    await first.aclose()
    await second.aclose()


async def test_close_ends_the_watches(leader: Leader) -> None:
    state = leader.state

    async def drain() -> list[Change]:
        return [c async for c in state.watch(leader.epoch)]

    reader = asyncio.create_task(drain())
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=leader.epoch)
    await asyncio.sleep(0.2)
    await state.close()
    assert [c.key for c in await asyncio.wait_for(reader, timeout=5)] == [cs.alarm_key("a")]


# --- compaction and snapshots


async def test_compaction_then_snapshot_and_watch_resume(private_etcd: LocalEtcd) -> None:
    city = new_city()
    state = EtcdControlState.from_endpoints(private_etcd.endpoints, city)
    async with private_etcd.client() as client:
        epoch = await take_leadership(client, city)
        try:
            old = await state.put(cs.alarm_key("a"), alarm("a", "0"), epoch=epoch)
            for i in range(1, 4):
                await state.put(cs.alarm_key("a"), alarm("a", str(i)), epoch=epoch)
            await state.put(cs.task_key("t"), task("t"), epoch=epoch)
            await state.put(cs.config_key("lighting"), alarm("cfg"), epoch=epoch)
            compact_at = await state.revision()
            await client.compact(compact_at, physical=True)

            with pytest.raises(RevisionCompactedError) as raised:
                await anext(state.watch(old))
            assert (raised.value.revision, raised.value.compact_revision) == (old, compact_at)
            with pytest.raises(RevisionCompactedError) as listed:
                await state.list(cs.ALARMS, operations_pb2.Alarm, revision=old)
            assert listed.value.compact_revision == compact_at

            # The standby's way back: a snapshot, then a watch from just after it.
            snapshot = await read_snapshot(state, page_size=1)
            assert set(snapshot.records) == {
                cs.alarm_key("a"),
                cs.task_key("t"),
                cs.config_key("lighting"),
            }
            assert (
                operations_pb2.Alarm.FromString(snapshot.records[cs.alarm_key("a")]).detail == "3"
            )
            r_del = await state.delete(cs.alarm_key("a"), epoch=epoch)
            watch = state.watch(snapshot.revision + 1)
            (change,) = await take(watch, 1)
            await watch.aclose()
            assert (change.revision, change.key, change.deleted) == (r_del, cs.alarm_key("a"), True)
        finally:
            await state.close()


# --- failures


def watchers_per_member(cluster: LocalEtcd) -> list[int]:
    """How many watchers each live member serves, from its Prometheus metrics."""
    counts = []
    for i, url in enumerate(cluster.client_urls):
        if not cluster.member_alive(i):
            counts.append(0)
            continue
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
            body = resp.read().decode()
        found = re.search(r"^etcd_debugging_mvcc_watcher_total (\d+)", body, re.MULTILINE)
        assert found is not None
        counts.append(int(found.group(1)))
    return counts


@pytest.mark.timeout(60)
async def test_watch_survives_losing_its_member_without_loss_or_duplicate(
    tmp_path: Path,
) -> None:
    cluster = LocalEtcd(tmp_path / "etcd3", members=3)
    cluster.start()
    city = new_city()
    writer = EtcdControlState.from_endpoints(cluster.endpoints, city)
    reader = EtcdControlState.from_endpoints(cluster.endpoints, city)
    try:
        async with cluster.client() as client:
            epoch = await take_leadership(client, city)
        written: list[tuple[int, str]] = []
        for i in range(5):
            key = cs.alarm_key(f"before{i}")
            written.append((await writer.put(key, alarm(key), epoch=epoch), key))
        watch = reader.watch(written[0][0])
        got = await take(watch, 3)  # mid-replay: the stream is up
        serving = [i for i, n in enumerate(watchers_per_member(cluster)) if n > 0]
        assert len(serving) == 1, serving
        cluster.kill_member(serving[0])

        async def write_more() -> None:
            for i in range(10):
                key = cs.alarm_key(f"after{i}")
                written.append((await writer.put(key, alarm(key), epoch=epoch), key))

        writing = asyncio.create_task(write_more())
        got += await take(watch, 5 + 10 - len(got), timeout=30)
        await writing
        assert [(c.revision, c.key) for c in got] == written
        # The watch now lives on another member.
        assert sum(watchers_per_member(cluster)) == 1
        await watch.aclose()
    finally:
        await reader.close()
        await writer.close()
        cluster.stop()


@pytest.mark.timeout(20)
async def test_unreachable_etcd_raises_infrastructure_error_naming_it() -> None:
    (port,) = free_ports(1)
    endpoint = f"127.0.0.1:{port}"
    state = EtcdControlState.from_endpoints(
        [endpoint], "dijon", retry_for_s=0.5, call_timeout_s=0.5
    )
    try:
        with pytest.raises(InfrastructureError, match=re.escape(endpoint)):
            await state.revision()
        with pytest.raises(InfrastructureError, match=re.escape(endpoint)):
            await state.put(cs.alarm_key("a"), alarm("a"), epoch=3)
        with pytest.raises(InfrastructureError, match=re.escape(endpoint)):
            await anext(state.watch(1))
    finally:
        await state.close()


async def test_a_write_on_condition_of_absent_keys_is_refused_whole_when_one_exists(
    leader: Leader,
) -> None:
    state, epoch = leader.state, leader.epoch
    used = cs.idempotency_index_key("k-1")
    record = control_state_pb2.IdempotencyRecord(idempotency_key="k-1", result_key="ledger/x")
    await state.put(used, record, epoch=epoch)
    before = await state.revision()
    with pytest.raises(cs.KeyExistsError) as exists:
        await state.put_many(
            [(cs.alarm_key("a"), alarm("a")), (used, record)], epoch=epoch, absent=[used]
        )
    assert exists.value.key == used
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None
    assert await state.revision() == before
    with pytest.raises(FencedError):
        await state.put_many([(cs.alarm_key("a"), alarm("a"))], epoch=epoch + 1, absent=[used])
    fresh = cs.idempotency_index_key("k-2")
    assert await state.put_many([(fresh, record)], epoch=epoch, absent=[fresh]) > before
    assert await state.get(fresh, control_state_pb2.IdempotencyRecord) == record
