"""InMemoryControlState: the etcd-shaped seam (revisions, pages, watch, fencing, compaction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from failover import control_state as cs
from failover.control_state import (
    Change,
    ControlState,
    FencedError,
    InMemoryControlState,
    RevisionCompactedError,
)
from protos.citypost.v1 import control_state_pb2, operations_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

EPOCH = 7


def alarm(alarm_id: str, detail: str = "") -> operations_pb2.Alarm:
    return operations_pb2.Alarm(alarm_id=alarm_id, type="lamp_fault", detail=detail)


def task(task_id: str) -> operations_pb2.Task:
    return operations_pb2.Task(task_id=task_id, kind="repair_lamp")


@pytest.fixture
def state() -> InMemoryControlState:
    return InMemoryControlState(epoch=EPOCH)


async def take(iterator: AsyncIterator[Change], n: int) -> list[Change]:
    return [await anext(iterator) for _ in range(n)]


def test_in_memory_state_is_a_control_state() -> None:
    # Checked by mypy: the in-memory state satisfies the protocol the etcd one will.
    seam: ControlState = InMemoryControlState(epoch=1)
    assert seam is not None


# --- keys


def test_key_helpers_build_namespaced_escaped_keys() -> None:
    assert cs.ledger_key("c-1") == "ledger/c-1"
    assert cs.alarm_key("a1") == "state/alarms/a1"
    assert cs.override_key("o1").startswith(cs.OVERRIDES)
    assert cs.task_key("t1").startswith(cs.TASKS)
    assert cs.incident_key("i1").startswith(cs.INCIDENTS)
    assert cs.notification_key("n1").startswith(cs.NOTIFICATIONS)
    assert cs.config_key("lighting").startswith(cs.CONFIG)
    # An id with a slash stays one segment and comes back intact.
    key = cs.alarm_key("street_lamp/talant")
    assert key.count("/") == 2
    assert cs.key_id(key) == "street_lamp/talant"
    assert (
        cs.record_type_for(cs.idempotency_index_key("k/1")) is control_state_pb2.IdempotencyRecord
    )


def test_audit_keys_sort_by_time() -> None:
    keys = [cs.audit_key(at, "x") for at in (1_000, 20, 300)]
    assert sorted(keys) == [cs.audit_key(20, "x"), cs.audit_key(300, "x"), cs.audit_key(1_000, "x")]


@pytest.mark.parametrize("build", [cs.ledger_key, cs.alarm_key, cs.task_key, cs.config_key])
def test_empty_ids_are_refused(build: Callable[[str], str]) -> None:
    with pytest.raises(InvalidArgumentError):
        build("")


def test_keys_outside_the_namespaces_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        cs.namespace_of("elsewhere/x")
    with pytest.raises(InvalidArgumentError):
        cs.namespace_of("state/alarms/")  # a namespace alone is not a key


# --- revisions, reads, writes


async def test_revisions_rise_by_one_per_transaction(state: InMemoryControlState) -> None:
    assert await state.revision() == 1  # like an empty etcd
    r1 = await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    r2 = await state.put_many(
        [(cs.alarm_key("b"), alarm("b")), (cs.task_key("t"), task("t"))], epoch=EPOCH
    )
    r3 = await state.put(cs.alarm_key("a"), alarm("a", "again"), epoch=EPOCH)
    assert (r1, r2, r3) == (2, 3, 4)
    assert await state.revision() == 4
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "again"


async def test_get_of_a_missing_key_is_none(state: InMemoryControlState) -> None:
    assert await state.get(cs.alarm_key("nope"), operations_pb2.Alarm) is None


async def test_delete_removes_and_deleting_nothing_changes_nothing(
    state: InMemoryControlState,
) -> None:
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    r = await state.delete(cs.alarm_key("a"), epoch=EPOCH)
    assert r == 3
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None
    assert await state.delete(cs.alarm_key("a"), epoch=EPOCH) == 3
    assert await state.revision() == 3


async def test_a_record_of_the_wrong_type_for_its_namespace_is_refused(
    state: InMemoryControlState,
) -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected a citypost\.v1\.Alarm"):
        await state.put(cs.alarm_key("a"), task("t"), epoch=EPOCH)
    assert await state.revision() == 1


async def test_put_many_is_all_or_none(state: InMemoryControlState) -> None:
    await state.put(cs.alarm_key("a"), alarm("a", "before"), epoch=EPOCH)
    with pytest.raises(InvalidArgumentError):
        await state.put_many(
            [(cs.alarm_key("a"), alarm("a", "after")), ("nowhere/x", alarm("x"))], epoch=EPOCH
        )
    with pytest.raises(InvalidArgumentError, match="duplicate"):
        await state.put_many(
            [(cs.alarm_key("b"), alarm("b")), (cs.alarm_key("b"), alarm("b"))], epoch=EPOCH
        )
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "before"
    assert await state.get(cs.alarm_key("b"), operations_pb2.Alarm) is None
    assert await state.revision() == 2


async def test_put_many_mixes_puts_and_deletes_under_one_revision(
    state: InMemoryControlState,
) -> None:
    await state.put(cs.alarm_key("old"), alarm("old"), epoch=EPOCH)
    r = await state.put_many(
        [(cs.alarm_key("old"), None), (cs.alarm_key("new"), alarm("new"))], epoch=EPOCH
    )
    changes = await take(state.watch(r), 2)
    assert [(c.revision, c.key, c.deleted) for c in changes] == [
        (r, cs.alarm_key("old"), True),
        (r, cs.alarm_key("new"), False),
    ]


# --- fencing


async def test_a_write_from_another_epoch_is_fenced(state: InMemoryControlState) -> None:
    for epoch in (EPOCH - 1, EPOCH + 1):
        with pytest.raises(FencedError, match=f"fenced: epoch {epoch} is not the leader's"):
            await state.put(cs.alarm_key("a"), alarm("a"), epoch=epoch)
    with pytest.raises(FailedPreconditionError):
        await state.delete(cs.alarm_key("a"), epoch=EPOCH - 1)
    with pytest.raises(FailedPreconditionError):
        await state.put_many([(cs.alarm_key("a"), alarm("a"))], epoch=EPOCH - 1)
    assert await state.revision() == 1


async def test_a_new_epoch_fences_the_deposed_leader(state: InMemoryControlState) -> None:
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    state.set_epoch(EPOCH + 5)
    with pytest.raises(FencedError) as raised:
        await state.put(cs.alarm_key("a"), alarm("a", "stale"), epoch=EPOCH)
    assert raised.value.leader_epoch == EPOCH + 5
    await state.put(cs.alarm_key("a"), alarm("a", "new"), epoch=EPOCH + 5)
    got = await state.get(cs.alarm_key("a"), operations_pb2.Alarm)
    assert got is not None and got.detail == "new"


async def test_with_no_leader_every_write_is_fenced() -> None:
    state = InMemoryControlState()
    with pytest.raises(FencedError):
        await state.put(cs.alarm_key("a"), alarm("a"), epoch=0)


def test_epoch_only_grows(state: InMemoryControlState) -> None:
    with pytest.raises(FailedPreconditionError, match="only grows"):
        state.set_epoch(EPOCH - 1)
    state.set_epoch(EPOCH)
    assert state.epoch == EPOCH


# --- pagination


async def fill_alarms(state: InMemoryControlState, n: int) -> list[str]:
    keys = [cs.alarm_key(f"a{i:02d}") for i in range(n)]
    await state.put_many([(k, alarm(cs.key_id(k))) for k in keys], epoch=EPOCH)
    await state.put(cs.task_key("t"), task("t"), epoch=EPOCH)  # another namespace, never listed
    return keys


async def test_list_pages_in_key_order(state: InMemoryControlState) -> None:
    keys = await fill_alarms(state, 7)
    seen: list[str] = []
    start_after = ""
    pages = 0
    while True:
        page = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=3, start_after=start_after)
        pages += 1
        assert len(page.entries) <= 3
        seen.extend(e.key for e in page.entries)
        assert all(e.value.alarm_id == cs.key_id(e.key) for e in page.entries)
        if page.next_start_after is None:
            break
        start_after = page.next_start_after
    assert seen == keys
    assert pages == 3


async def test_a_page_that_ends_exactly_says_there_is_no_more(state: InMemoryControlState) -> None:
    await fill_alarms(state, 3)
    page = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=3)
    assert len(page.entries) == 3
    assert page.next_start_after is None


async def test_start_after_skips_to_the_next_key(state: InMemoryControlState) -> None:
    keys = await fill_alarms(state, 5)
    page = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=10, start_after=keys[1])
    assert [e.key for e in page.entries] == keys[2:]


@pytest.mark.parametrize("limit", [0, -1, cs.MAX_PAGE + 1])
async def test_a_bad_page_size_is_refused(state: InMemoryControlState, limit: int) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        await state.list(cs.ALARMS, operations_pb2.Alarm, limit=limit)


async def test_pages_read_at_one_revision_ignore_later_writes(state: InMemoryControlState) -> None:
    keys = await fill_alarms(state, 4)
    first = await state.list(cs.ALARMS, operations_pb2.Alarm, limit=2)
    # Writes between pages: a delete, a change and a new key.
    await state.delete(keys[3], epoch=EPOCH)
    await state.put(keys[2], alarm("a02", "changed"), epoch=EPOCH)
    await state.put(cs.alarm_key("a99"), alarm("a99"), epoch=EPOCH)
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


# --- watch


async def test_watch_from_a_past_revision_replays_then_follows(state: InMemoryControlState) -> None:
    r_a = await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    r_b = await state.put(cs.alarm_key("b"), alarm("b"), epoch=EPOCH)
    await state.delete(cs.alarm_key("a"), epoch=EPOCH)
    watch = state.watch(r_b)
    replayed = await take(watch, 2)
    assert [(c.revision, c.key, c.deleted) for c in replayed] == [
        (r_b, cs.alarm_key("b"), False),
        (r_b + 1, cs.alarm_key("a"), True),
    ]
    assert r_a < r_b

    async def write_later() -> None:
        await asyncio.sleep(0.01)
        await state.put(cs.task_key("t"), task("t"), epoch=EPOCH)

    writer = asyncio.create_task(write_later())
    live = await asyncio.wait_for(anext(watch), timeout=5)
    await writer
    assert (live.revision, live.key) == (r_b + 2, cs.task_key("t"))
    decoded = live.decode(operations_pb2.Task)
    assert decoded is not None and decoded.task_id == "t"
    await watch.aclose()


async def test_watch_filters_by_prefix(state: InMemoryControlState) -> None:
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    await state.put(cs.task_key("t"), task("t"), epoch=EPOCH)
    await state.put(cs.alarm_key("b"), alarm("b"), epoch=EPOCH)
    changes = await take(state.watch(1, prefix=cs.ALARMS), 2)
    assert [c.key for c in changes] == [cs.alarm_key("a"), cs.alarm_key("b")]


async def test_two_watchers_see_the_same_live_order(state: InMemoryControlState) -> None:
    first, second = state.watch(2), state.watch(2)
    readers = [asyncio.create_task(take(w, 3)) for w in (first, second)]
    await asyncio.sleep(0)
    for i in range(3):
        await state.put(cs.alarm_key(f"a{i}"), alarm(f"a{i}"), epoch=EPOCH)
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=5)
    assert [c.revision for c in results[0]] == [2, 3, 4]
    assert results[0] == results[1]


async def test_close_ends_the_watches(state: InMemoryControlState) -> None:
    async def drain() -> list[Change]:
        return [c async for c in state.watch(1)]

    reader = asyncio.create_task(drain())
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    await asyncio.sleep(0)
    await state.close()
    assert [c.key for c in await asyncio.wait_for(reader, timeout=5)] == [cs.alarm_key("a")]


# --- compaction and snapshots


async def test_reads_and_watches_before_a_compaction_are_refused(
    state: InMemoryControlState,
) -> None:
    for i in range(5):
        await state.put(cs.alarm_key("a"), alarm("a", str(i)), epoch=EPOCH)
    state.compact(4)
    with pytest.raises(RevisionCompactedError) as raised:
        await anext(state.watch(3))
    assert raised.value.compact_revision == 4
    with pytest.raises(RevisionCompactedError):
        await state.list(cs.ALARMS, operations_pb2.Alarm, revision=3)
    # At and after the compaction point history is intact.
    page = await state.list(cs.ALARMS, operations_pb2.Alarm, revision=4)
    assert page.entries[0].value.detail == "2"
    assert [c.revision for c in await take(state.watch(4), 3)] == [4, 5, 6]


async def test_history_is_compacted_automatically(state: InMemoryControlState) -> None:
    small = InMemoryControlState(epoch=1, history_limit=3)
    for i in range(10):
        await small.put(cs.alarm_key(f"a{i}"), alarm(f"a{i}"), epoch=1)
    assert small.compact_revision > 1
    with pytest.raises(RevisionCompactedError):
        await anext(small.watch(1))
    page = await small.list(cs.ALARMS, operations_pb2.Alarm, limit=100)
    assert len(page.entries) == 10  # compaction drops history, never live records


async def test_a_deleted_key_compacted_away_leaves_no_trace(state: InMemoryControlState) -> None:
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    await state.delete(cs.alarm_key("a"), epoch=EPOCH)
    state.compact(await state.revision())
    assert (await state.list(cs.ALARMS, operations_pb2.Alarm)).entries == ()
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None


async def test_a_snapshot_plus_watch_rebuilds_the_state(state: InMemoryControlState) -> None:
    """The standby's path after a compaction: reload, then follow from the next revision."""
    await state.put(cs.alarm_key("a"), alarm("a"), epoch=EPOCH)
    await state.put(cs.task_key("t"), task("t"), epoch=EPOCH)
    await state.put(cs.config_key("lighting"), alarm("cfg"), epoch=EPOCH)  # config: any type
    state.compact(await state.revision())
    snapshot = await cs.read_snapshot(state, page_size=1)
    assert set(snapshot.records) == {cs.alarm_key("a"), cs.task_key("t"), cs.config_key("lighting")}
    await state.delete(cs.alarm_key("a"), epoch=EPOCH)
    mirror = dict(snapshot.records)
    (change,) = await take(state.watch(snapshot.revision + 1), 1)
    if change.value is None:
        mirror.pop(change.key)
    else:
        mirror[change.key] = change.value
    assert set(mirror) == {cs.task_key("t"), cs.config_key("lighting")}


async def test_a_future_revision_is_refused(state: InMemoryControlState) -> None:
    with pytest.raises(InvalidArgumentError, match="future"):
        await state.list(cs.ALARMS, operations_pb2.Alarm, revision=99)


async def test_a_write_on_condition_of_absent_keys_is_refused_whole_when_one_exists(
    state: InMemoryControlState,
) -> None:
    used = cs.idempotency_index_key("k-1")
    record = control_state_pb2.IdempotencyRecord(idempotency_key="k-1", result_key="ledger/x")
    await state.put(used, record, epoch=EPOCH)
    before = await state.revision()
    with pytest.raises(cs.KeyExistsError) as exists:
        await state.put_many(
            [(cs.alarm_key("a"), alarm("a")), (used, record)], epoch=EPOCH, absent=[used]
        )
    assert exists.value.key == used
    assert await state.get(cs.alarm_key("a"), operations_pb2.Alarm) is None
    assert await state.revision() == before
    # The fence is checked first: a deposed writer hears that it is deposed.
    with pytest.raises(FencedError):
        await state.put_many([(cs.alarm_key("a"), alarm("a"))], epoch=EPOCH - 1, absent=[used])
    fresh = cs.idempotency_index_key("k-2")
    r = await state.put_many([(fresh, record)], epoch=EPOCH, absent=[fresh])
    assert r == before + 1
