"""Ended sessions on real etcd: what one post revokes, the other holds within moments
(its watch), a post started later reads it, and etcd forgets it when its lease ends.

Each test works under its own city, so the session etcd's other keys never show.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from cluster.etcd_local import LocalEtcd
from failover.control_state import city_root
from failover.revoked_sessions import EtcdRevocations, revocation_key
from protos.citypost.v1 import auth_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _city() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


def _logout(sid: str, user: str = "claire") -> auth_pb2.SessionRevocation:
    return auth_pb2.SessionRevocation(
        session_id=sid, user=user, by=user, revoked_at_ms=int(time.time() * 1000)
    )


async def test_a_revocation_at_one_post_holds_at_the_other(etcd: LocalEtcd) -> None:
    city = _city()
    primary = EtcdRevocations.from_endpoints(etcd.endpoints, city, keep_s=60)
    backup = EtcdRevocations.from_endpoints(etcd.endpoints, city, keep_s=60)
    await primary.start()
    await backup.start()
    try:
        await primary.revoke(_logout("s-1"))
        assert primary.refusal("s-1", "claire", time.time()) is not None  # at once
        await _until(lambda: backup.refusal("s-1", "claire", time.time()) is not None)
        admin = auth_pb2.SessionRevocation(
            user="bob", by="admin", reason="left", revoked_at_ms=int(time.time() * 1000)
        )
        await backup.revoke(admin)
        await _until(lambda: primary.refusal("s-9", "bob", time.time() - 1) is not None)
        # A post started afterwards (a restart, the new standby) reads both.
        late = EtcdRevocations.from_endpoints(etcd.endpoints, city, keep_s=60)
        await late.start()
        try:
            assert len(late) == 2
            assert late.refusal("s-1", "claire", time.time()) is not None
        finally:
            await late.close()
        # Under the city's prefix, outside the control state's namespaces.
        async with etcd.client() as client:
            key = (city_root(city) + revocation_key(_logout("s-1"))).encode()
            stored = await client.get(key)
            assert stored is not None and stored.lease != 0
    finally:
        await primary.close()
        await backup.close()


async def test_etcd_forgets_a_revocation_when_its_lease_ends(etcd: LocalEtcd) -> None:
    city = _city()
    primary = EtcdRevocations.from_endpoints(etcd.endpoints, city, keep_s=2)
    backup = EtcdRevocations.from_endpoints(etcd.endpoints, city, keep_s=2)
    await primary.start()
    await backup.start()
    try:
        await primary.revoke(_logout("s-short"))
        await _until(lambda: len(backup) == 1)
        # The lease's TTL (2 s) and etcd's expiry pass: the delete reaches both posts.
        await _until(lambda: len(backup) == 0 and len(primary) == 0, timeout_s=15)
    finally:
        await primary.close()
        await backup.close()
