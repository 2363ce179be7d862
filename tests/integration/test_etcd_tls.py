"""etcd with mutual TLS, certificate authentication and RBAC, on real 1- and 3-member clusters.

Each cluster has its own PKI. Who may do what comes from security/etcd_access.py:
a post reads and writes the city, the gate reads the leader key and owns
`gate/`, chaos only reads; a certificate without an etcd user, from another CA,
revoked, or none at all is refused.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aetcd
import grpc
import pytest
from aetcd import rpc

from citypost.errors import InvalidArgumentError
from cluster.etcd_local import EtcdSecurity, LocalEtcd, member_is_healthy
from failover.election import leader_key, watch_leader
from failover.etcd_client import etcd_client, tls_target_name
from failover.etcd_defrag import defragment_members, member_size
from failover.leadership import LeaderValue
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CITY = "dijon"
ROOT = f"/citypost/{CITY}/"
POST = Principal(CITY, Kind.POST, "primary")
GATE = Principal(CITY, Kind.GATE, "gate")
CHAOS = Principal(CITY, Kind.CHAOS, "drill")
TO_REVOKE = Principal(CITY, Kind.CHAOS, "revoked")
NO_USER = Principal(CITY, Kind.CONSOLE, "ws-1")  # a console has no etcd user
GRANTED = (POST, GATE, CHAOS, TO_REVOKE)


@dataclass
class SecuredCity:
    etcd: LocalEtcd
    store: PkiStore
    stranger: PkiStore  # another CA: its certificates name the same principals

    def client(self, principal: Principal, *, timeout: float = 5.0) -> aetcd.Client:
        return etcd_client(self.etcd.endpoints, timeout=timeout, tls=self.store.ensure(principal))


@pytest.fixture(scope="module", params=[1, 3], ids=["1-member", "3-member"])
def city(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredCity]:
    base = tmp_path_factory.mktemp(f"etcd-tls-{request.param}")
    store = PkiStore(base / "pki", CITY)
    store.init()
    stranger = PkiStore(base / "other-pki", CITY)
    stranger.init()
    etcd = LocalEtcd(base / "etcd", members=request.param, security=EtcdSecurity(store, GRANTED))
    try:
        etcd.start()
        yield SecuredCity(etcd, store, stranger)
    finally:
        etcd.stop()


def _denied() -> pytest.RaisesExc[aetcd.exceptions.ClientError]:
    return pytest.raises(aetcd.exceptions.ClientError, match="permission denied")


async def _put_leader(client: aetcd.Client, name: str) -> int:
    """The leader key under a fresh lease, as the election puts it; the lease id."""
    lease = await client.lease(30)
    await client.put(leader_key(CITY), LeaderValue(name, "127.0.0.1:1").to_json(), lease=lease.id)
    return int(lease.id)


# --- the members ------------------------------------------------------------------------


def test_members_serve_https_and_the_probes_use_the_members_certificates(
    city: SecuredCity,
) -> None:
    etcd = city.etcd
    assert all(url.startswith("https://127.0.0.1:") for url in etcd.client_urls)
    assert all(etcd.member_healthy(m.index) for m in etcd.members)
    assert etcd.raft_leader() is not None
    # Nothing answers a client without a certificate of the city's CA, /health included.
    bare = ssl.create_default_context(cafile=str(city.store.trust))
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{etcd.client_urls[0]}/health", timeout=2, context=bare)
    assert not member_is_healthy(etcd.client_urls[0])


def test_the_root_password_is_for_its_owner_only(city: SecuredCity) -> None:
    path = city.etcd.root_password_file
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) >= 32


# --- a post -------------------------------------------------------------------------------


async def test_a_post_reads_writes_leases_transacts_and_watches_its_city(
    city: SecuredCity,
) -> None:
    async with city.client(POST) as post:
        await post.put(f"{ROOT}state/tasks/t1".encode(), b"one")
        assert (await post.get(f"{ROOT}state/tasks/t1".encode())).value == b"one"

        lease = await post.lease(5)
        await post.refresh_lease(lease.id)
        await post.put(f"{ROOT}leased".encode(), b"x", lease=lease.id)
        await post.revoke_lease(lease.id)
        assert await post.get(f"{ROOT}leased".encode()) is None

        key = f"{ROOT}txn".encode()
        await post.delete(key)
        won, _ = await post.transaction(
            compare=[post.transactions.version(key) == 0],
            success=[post.transactions.put(key, b"first")],
            failure=[],
        )
        assert won

        watch = await post.watch(f"{ROOT}watched".encode())
        try:
            await post.put(f"{ROOT}watched".encode(), b"seen")
            event = await asyncio.wait_for(anext(aiter(watch)), 5)
            assert event.kv.value == b"seen"
        finally:
            await watch.cancel()


async def test_the_default_client_is_a_post(city: SecuredCity) -> None:
    async with city.etcd.client() as client:
        await client.put(f"{ROOT}by-default".encode(), b"1")


async def test_a_post_defragments_and_any_city_certificate_reads_a_members_size(
    city: SecuredCity,
) -> None:
    endpoints = city.etcd.endpoints
    done = await defragment_members(
        endpoints, min_free_bytes=0, min_free_ratio=0.0, tls=city.store.ensure(POST)
    )
    assert [d.before.endpoint for d in done] == endpoints
    # Defragment is root's only: the gate is refused (logged and skipped).
    assert (
        await defragment_members(
            endpoints, min_free_bytes=0, min_free_ratio=0.0, tls=city.store.ensure(GATE)
        )
        == []
    )
    size = await member_size(endpoints[0], tls=city.store.ensure(CHAOS))
    assert size.db_size > 0


# --- the gate -----------------------------------------------------------------------------


async def test_the_gate_follows_the_leader_key_and_writes_only_its_prefix(
    city: SecuredCity,
) -> None:
    async with city.client(POST) as post, city.client(GATE) as gate:
        lease = await _put_leader(post, "post-a")
        await post.put(f"{ROOT}state/alarms/a1".encode(), b"alarm")

        follow = aiter(watch_leader(gate, CITY))
        seen = await asyncio.wait_for(anext(follow), 5)
        assert seen.leader is not None and seen.leader.value.name == "post-a"
        await post.put(leader_key(CITY), LeaderValue("post-b", "").to_json(), lease=lease)
        seen = await asyncio.wait_for(anext(follow), 5)
        assert seen.leader is not None and seen.leader.value.name == "post-b"
        await follow.aclose()

        await gate.put(f"{ROOT}gate/epoch".encode(), b"7")
        assert (await gate.get(f"{ROOT}gate/epoch".encode())).value == b"7"
        with _denied():
            await gate.put(leader_key(CITY), b"me")
        with _denied():
            await gate.get(f"{ROOT}state/alarms/a1".encode())
        with _denied():
            await gate.put(f"{ROOT}state/alarms/a1".encode(), b"forged")
        with _denied():
            await gate.put(b"/citypost/lyon/gate/epoch", b"7")
        with _denied():  # a lease revoke needs write access to the keys on it
            await gate.revoke_lease(lease)
        assert (await post.get(leader_key(CITY))) is not None


# --- chaos --------------------------------------------------------------------------------


async def test_chaos_reads_the_city_and_writes_nothing(city: SecuredCity) -> None:
    async with city.client(POST) as post, city.client(CHAOS) as chaos:
        lease = await _put_leader(post, "post-a")
        await post.put(f"{ROOT}state/tasks/t2".encode(), b"two")

        assert (await chaos.get(f"{ROOT}state/tasks/t2".encode())).value == b"two"
        assert len(await chaos.get_prefix(ROOT.encode())) >= 2
        with _denied():
            await chaos.put(f"{ROOT}state/tasks/t2".encode(), b"changed")
        with _denied():
            await chaos.delete(leader_key(CITY))
        with _denied():
            await chaos.revoke_lease(lease)
        with _denied():
            await chaos.get(b"/citypost/lyon/leader")


# --- refused ------------------------------------------------------------------------------


async def test_a_certificate_without_an_etcd_user_is_refused(city: SecuredCity) -> None:
    async with city.client(NO_USER) as console:
        with _denied():
            await console.get(f"{ROOT}state/tasks/t1".encode())


async def test_a_certificate_of_another_ca_is_refused(city: SecuredCity) -> None:
    # Same CN as the post, so only the CA can be what etcd refuses.
    forged = etcd_client(city.etcd.endpoints, timeout=3, tls=city.stranger.ensure(POST))
    async with forged:
        with pytest.raises(aetcd.exceptions.ConnectionFailedError):
            await forged.get(f"{ROOT}state/tasks/t1".encode())


async def test_a_client_without_a_certificate_is_refused(city: SecuredCity) -> None:
    endpoint = city.etcd.endpoints[0]
    request = rpc.RangeRequest(key=f"{ROOT}state/tasks/t1".encode())
    # TLS that checks the member but shows no certificate: the handshake fails.
    credentials = grpc.ssl_channel_credentials(city.store.trust.read_bytes())
    async with grpc.aio.secure_channel(endpoint, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rpc.KVStub(channel).Range(request, timeout=3)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # Plain text: no answer at all.
    async with grpc.aio.insecure_channel(endpoint) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await rpc.KVStub(channel).Range(request, timeout=3)


async def test_a_revoked_certificate_is_refused_at_its_next_connection(
    city: SecuredCity,
) -> None:
    tls: Identity = city.store.ensure(TO_REVOKE)
    async with etcd_client(city.etcd.endpoints, timeout=3, tls=tls) as before:
        await before.get_prefix(ROOT.encode())

    city.store.revoke(TO_REVOKE)

    # No restart: etcd reads the CRL file at each new connection.
    async with etcd_client(city.etcd.endpoints, timeout=3, tls=tls) as after:
        with pytest.raises(aetcd.exceptions.ConnectionFailedError):
            await after.get_prefix(ROOT.encode())


# --- restarts (last: they stop members of the module's cluster) ---------------------------


async def test_auth_survives_a_member_restart_and_a_cluster_restart(city: SecuredCity) -> None:
    etcd = city.etcd
    password = etcd.root_password_file.read_text()

    await asyncio.to_thread(etcd.restart_member, etcd.member_count - 1)
    await _still_enforced(city, "after-member-restart")

    await asyncio.to_thread(etcd.stop)
    await asyncio.to_thread(etcd.start)
    await _still_enforced(city, "after-cluster-restart")
    # Not set up again: auth was on, so root's password was left alone.
    assert etcd.root_password_file.read_text() == password


async def _still_enforced(city: SecuredCity, value: str) -> None:
    async with city.client(POST, timeout=10) as post, city.client(GATE, timeout=10) as gate:
        await post.put(f"{ROOT}restart".encode(), value.encode())
        await gate.get(leader_key(CITY))  # allowed, whether a leader is there or not
        with _denied():
            await gate.get(f"{ROOT}restart".encode())
    async with city.client(NO_USER, timeout=10) as console:
        with _denied():
            await console.get(f"{ROOT}restart".encode())


# --- what a post needs of etcd 3.4 beyond its prefix --------------------------------------


async def test_a_post_off_root_does_all_its_work_but_defragment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The evidence for the root role: with the post role alone, every call the election
    and the control state make works, and only Maintenance.Defragment is refused."""
    store = PkiStore(tmp_path / "pki", CITY)
    store.init()
    store.ensure(POST)
    # No principals named: every one the store has issued (the post) gets its user.
    security = EtcdSecurity(store, posts_defragment=False)
    etcd = LocalEtcd(tmp_path / "etcd", members=1, security=security)
    try:
        await asyncio.to_thread(etcd.start)
        async with etcd.client() as post:
            lease = await _put_leader(post, "post-a")  # lease grant, put under a lease
            await post.refresh_lease(lease)
            seen = await asyncio.wait_for(anext(aiter(watch_leader(post, CITY))), 5)
            assert seen.leader is not None  # range read and watch
            key = f"{ROOT}ledger/c1".encode()
            won, _ = await post.transaction(
                compare=[post.transactions.create(leader_key(CITY)) == seen.leader.epoch],
                success=[post.transactions.put(key, b"cmd")],
                failure=[],
            )
            assert won  # the fenced write
            await post.revoke_lease(lease)
            with _denied():
                await post.put(b"/citypost/lyon/leader", b"x")
        tls = store.ensure(POST)
        assert (await member_size(etcd.endpoints[0], tls=tls)).db_size > 0  # Status
        done = await defragment_members(
            etcd.endpoints, min_free_bytes=0, min_free_ratio=0.0, tls=tls
        )
        assert done == []
        assert "auth: permission denied" in caplog.text  # IsAdminPermitted: root only
    finally:
        await asyncio.to_thread(etcd.stop)


# --- the name members are checked against -----------------------------------------------


def test_one_member_is_checked_against_its_own_host() -> None:
    assert tls_target_name(["127.0.0.1:2379"]) is None
    assert tls_target_name(["etcd.example.org:2379"]) is None


def test_loopback_members_are_checked_against_their_common_host() -> None:
    assert tls_target_name(["127.0.0.1:2379", "127.0.0.1:2479"]) == "127.0.0.1"


def test_members_on_different_hosts_have_no_name_to_derive() -> None:
    with pytest.raises(InvalidArgumentError, match="different hosts"):
        tls_target_name(["10.0.0.1:2379", "10.0.0.2:2379"])


def test_without_security_the_members_stay_plain_http(tmp_path: Path) -> None:
    etcd = LocalEtcd(tmp_path / "etcd", members=1)
    assert etcd.client_urls[0].startswith("http://")
    assert etcd.member_identity(0) is None
