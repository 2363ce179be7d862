"""Defragmenting a real 3-member etcd: the space compaction freed goes back to the disk."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.etcd_local import LocalEtcd
from cluster.ports import free_port
from failover.etcd_client import etcd_client
from failover.etcd_defrag import MemberSize, defragment_members, member_size

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MB = 1_000_000


async def _fill_then_free(endpoints: list[str]) -> None:
    """About 12 MB written (overwritten twice), then deleted and compacted away."""
    value = b"x" * 20_000
    async with etcd_client(endpoints, timeout=30) as client:
        for _ in range(3):
            for i in range(200):
                await client.put(f"/defrag-test/{i}".encode(), value)
        await client.delete_prefix(b"/defrag-test/")
        # Compacted up to now: the history of the deleted keys is gone too.
        current = (await client.put(b"/defrag-test-marker", b"1")).header.revision
        await client.compact(current, physical=True)


async def _sizes_once_freed(endpoints: list[str]) -> list[MemberSize]:
    """The members' sizes once their backends committed the compaction's frees (a write
    after the compaction commits them)."""
    deadline = time.monotonic() + 30
    while True:
        async with etcd_client(endpoints) as client:
            await client.put(b"/defrag-test-marker", b"1")
        sizes = [await member_size(e) for e in endpoints]
        if all(s.free > 8 * MB for s in sizes) or time.monotonic() > deadline:
            return sizes
        await asyncio.sleep(0.2)


async def test_members_with_mostly_free_space_are_defragmented_one_by_one(
    etcd3: LocalEtcd,
) -> None:
    endpoints = etcd3.endpoints
    await _fill_then_free(endpoints)
    before = await _sizes_once_freed(endpoints)
    assert all(s.db_size > 8 * MB and s.free > 8 * MB for s in before), before

    done = await defragment_members(endpoints, min_free_bytes=4 * MB, min_free_ratio=0.5)

    assert [d.before.endpoint for d in done] == endpoints
    for d in done:
        assert d.after.db_size < d.before.db_size - 8 * MB, d
    after = [await member_size(e) for e in endpoints]
    assert all(s.db_size < 4 * MB for s in after), after
    # Nothing is worth it any more: a second round leaves every member alone.
    assert await defragment_members(endpoints, min_free_bytes=4 * MB, min_free_ratio=0.5) == []
    async with etcd_client(endpoints) as client:  # and the data is still there
        marker = await client.get(b"/defrag-test-marker")
        assert marker is not None and marker.value == b"1"


async def test_an_unreachable_member_is_skipped_and_the_others_done(
    etcd3: LocalEtcd,
) -> None:
    endpoints = etcd3.endpoints
    await _fill_then_free(endpoints)
    await _sizes_once_freed(endpoints)
    nobody = f"127.0.0.1:{free_port()}"
    done = await defragment_members(
        [nobody, endpoints[0]], min_free_bytes=4 * MB, min_free_ratio=0.5, timeout=5
    )
    assert [d.before.endpoint for d in done] == [endpoints[0]]
