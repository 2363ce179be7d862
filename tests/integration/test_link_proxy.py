"""The drills' link proxy between an aetcd client and a real etcd: forwarding, a partition
that holds the traffic (and lets it through after the heal), latency, and its life cycle."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aetcd
import pytest

from chaos.link_proxy import LinkProxy, LinkState
from cluster.etcd_local import LocalEtcd
from failover.etcd_client import etcd_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

# What a call through a partitioned link may raise: our own deadline or the client's.
PARTITION_ERRORS = (TimeoutError, aetcd.ClientError)


def new_key() -> bytes:
    return f"/link-proxy-test/{uuid.uuid4().hex}".encode()


@pytest.fixture
def proxy(etcd: LocalEtcd) -> Iterator[LinkProxy]:
    with LinkProxy(etcd.endpoints, name="test", seed=1) as p:
        yield p


async def put_until_it_works(
    client: aetcd.Client, key: bytes, value: bytes, within_s: float
) -> None:
    """The proxied client reconnects or retries after a heal: poll until a put succeeds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await asyncio.wait_for(client.put(key, value), 2.0)
            return
        except PARTITION_ERRORS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def timed_get(client: aetcd.Client, key: bytes) -> float:
    start = time.monotonic()
    await client.get(key)
    return time.monotonic() - start


async def test_a_client_reads_and_writes_through_the_proxy(proxy: LinkProxy) -> None:
    key = new_key()
    assert proxy.state is LinkState.OPEN
    assert len(proxy.endpoints) == 1
    assert proxy.endpoints[0].startswith("127.0.0.1:")
    async with etcd_client(proxy.endpoints) as client:
        await client.put(key, b"v1")
        got = await client.get(key)
    assert got is not None and got.value == b"v1"
    stats = proxy.stats()
    assert stats.connections_total >= 1
    assert stats.bytes_to_upstream > 0 and stats.bytes_from_upstream > 0
    assert stats.chunks_delayed == 0


async def test_one_listener_per_upstream_in_order(etcd: LocalEtcd) -> None:
    key = new_key()
    member = etcd.endpoints[0]
    with LinkProxy([member, member], name="two") as proxy:
        first, second = proxy.endpoints
        assert first != second
        async with etcd_client([first]) as a, etcd_client([second]) as b:
            await a.put(key, b"via-first")
            got = await b.get(key)
    assert got is not None and got.value == b"via-first"


async def test_a_partition_cuts_the_proxied_client_only_and_heals(
    proxy: LinkProxy, etcd: LocalEtcd
) -> None:
    key = new_key()
    async with etcd_client(proxy.endpoints) as proxied, etcd.client() as direct:
        await proxied.put(key, b"before")  # the connection is up before the cut

        proxy.partition()
        assert proxy.state is LinkState.PARTITIONED
        with pytest.raises(PARTITION_ERRORS):
            await asyncio.wait_for(proxied.put(key, b"during"), 1.0)
        # The connection is held, not closed; etcd itself is fine.
        assert proxy.stats().connections_open >= 1
        await direct.put(key, b"direct")
        got = await direct.get(key)
        assert got is not None and got.value == b"direct"

        proxy.heal()
        assert proxy.state is LinkState.OPEN
        # A fresh key: the write held during the cut is delivered after the heal (as on a
        # real link), possibly after this one on another connection.
        healed = new_key()
        await put_until_it_works(proxied, healed, b"after", within_s=10.0)
        got = await direct.get(healed)
        assert got is not None and got.value == b"after"


async def test_a_connection_opened_during_a_partition_is_answered_after_the_heal(
    proxy: LinkProxy, etcd: LocalEtcd
) -> None:
    key = new_key()
    async with etcd.client() as direct:
        await direct.put(key, b"value")
    before = proxy.stats().connections_total
    proxy.partition()
    async with etcd_client(proxy.endpoints, timeout=15.0) as client:
        pending = asyncio.create_task(client.get(key))
        try:
            deadline = time.monotonic() + 5.0
            while proxy.stats().connections_total == before:  # the kernel accepted it
                assert time.monotonic() < deadline, "no connection reached the proxy"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert not pending.done()  # no answer while partitioned
            proxy.heal()
            got = await asyncio.wait_for(pending, 10.0)
        finally:
            pending.cancel()
    assert got is not None and got.value == b"value"


async def test_latency_slows_each_round_trip_and_the_heal_removes_it(proxy: LinkProxy) -> None:
    key = new_key()
    async with etcd_client(proxy.endpoints) as client:
        await client.put(key, b"v")
        proxy.degrade(200, 0.0)
        assert proxy.state is LinkState.DEGRADED
        # 200 ms each way: a request and its answer cannot take less than 400 ms.
        assert await timed_get(client, key) >= 0.4
        assert proxy.stats().chunks_delayed >= 2
        proxy.heal()
        delayed = proxy.stats().chunks_delayed
        for _ in range(5):
            await client.get(key)
        # After the heal no chunk is delayed any more (counted, not timed: a loaded machine
        # may be slow for its own reasons).
        assert proxy.stats().chunks_delayed == delayed
        assert proxy.state is LinkState.OPEN


async def test_loss_delays_chunks_but_loses_no_byte(proxy: LinkProxy) -> None:
    prefix = new_key()
    values = {prefix + f"/{i}".encode(): f"value-{i}".encode() * 50 for i in range(10)}
    async with etcd_client(proxy.endpoints, timeout=30.0) as client:
        proxy.degrade(10, 0.3)
        await asyncio.gather(*(client.put(k, v) for k, v in values.items()))
        got = {kv.key: kv.value for kv in await client.get_prefix(prefix + b"/")}
        proxy.heal()
    assert got == values
    assert proxy.stats().chunks_delayed > 0


async def test_stop_closes_every_connection_and_is_idempotent(etcd: LocalEtcd) -> None:
    proxy = LinkProxy(etcd.endpoints, name="stopped").start()
    try:
        async with etcd_client(proxy.endpoints, timeout=2.0) as client:
            await client.put(new_key(), b"v")
            assert proxy.stats().connections_open >= 1
            proxy.partition()  # stop must not wait for held traffic
            proxy.stop()
            assert proxy.stats().connections_open == 0
            with pytest.raises(PARTITION_ERRORS):
                await asyncio.wait_for(client.get(new_key()), 2.0)
    finally:
        proxy.stop()
    proxy.stop()
