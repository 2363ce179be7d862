"""Mutual TLS on real gRPC servers: the post's server (api.server) and the simulated
network server's multicast API, with certificates of a temporary PKI.

A client of the PKI connects and the server sees its principal and serial; a
plaintext client, a TLS client without a certificate and one whose certificate
comes from another PKI are refused at the handshake (the caller sees UNAVAILABLE,
not UNAUTHENTICATED); the host name is checked; issuing the server's certificate
again rotates it for new connections without a restart.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.server import Service, start_server
from bridges.multicast_client import GroupSpec, MulticastClient, multicast_group_name
from citypost.errors import ConfigError, InfrastructureError
from cluster.ports import free_port
from fleet.multicast_service import MulticastService, serve
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc
from security.grpc_tls import (
    aio_channel,
    aio_secure_channel_factory,
    channel_credentials,
    peer_principal,
    peer_serial,
    secure_channel_factory,
    server_credentials,
)
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CITY = "dijon"
POST = Principal(CITY, Kind.POST, "primary")
CLAIRE = Principal(CITY, Kind.CONSOLE, "claire")
NS = Principal(CITY, Kind.NETWORK_SERVER, "ns")
GATE = Principal(CITY, Kind.GATE, "gate")


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


class Peers(admin_pb2_grpc.PostAdminServicer):
    """Answers GetStatus and remembers who called, as the server saw them."""

    def __init__(self) -> None:
        self.seen: list[tuple[Principal | None, int | None]] = []

    async def GetStatus(self, request: Any, context: Any) -> admin_pb2.PostStatus:
        self.seen.append((peer_principal(context), peer_serial(context)))
        return admin_pb2.PostStatus(post="primary", role="leader")


@dataclass
class Post:
    store: PkiStore
    identity: Identity  # the server's
    client: Identity  # a console of the same PKI
    port: int
    peers: Peers = field(default_factory=Peers)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def post(tmp_path: Path) -> AsyncIterator[Post]:
    store = PkiStore(tmp_path / "pki", CITY)
    store.init()
    found = Post(store, store.ensure(POST), store.ensure(CLAIRE), free_port())
    name = admin_pb2.DESCRIPTOR.services_by_name["PostAdmin"].full_name
    server, _ = await start_server(
        [Service(name, admin_pb2_grpc.add_PostAdminServicer_to_server, found.peers)],
        port=found.port,
        credentials=server_credentials(found.identity),
    )
    try:
        yield found
    finally:
        await server.stop(grace=None)


async def health(channel: grpc.aio.Channel) -> int:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health(channel)
    return caught.value


def served_serial(port: int, client: Identity, host: str = "127.0.0.1") -> int:
    """The serial of the certificate the server shows a new connection, read with
    Python's ssl (with a client certificate: the server asks for one)."""
    context = ssl.create_default_context(cafile=str(client.trust))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_client_of_the_pki_connects_and_is_seen(post: Post) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    # The host name the client dials is checked: the IP and DNS SANs of the server.
    for target in (post.address, f"localhost:{post.port}"):
        async with aio_channel(target, post.client) as channel:
            assert await health(channel) == serving
            await admin_pb2_grpc.PostAdminStub(channel).GetStatus(admin_pb2.GetStatusRequest())
    assert post.peers.seen == [(CLAIRE, serial_of(post.client.cert))] * 2

    async with aio_secure_channel_factory(post.client)(post.address) as channel:
        assert await health(channel) == serving

    def sync_check() -> int:  # a blocking client, off the loop that serves
        with secure_channel_factory(post.client)(post.address) as sync_channel:
            stub: Any = health_pb2_grpc.HealthStub(sync_channel)
            return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

    assert await asyncio.to_thread(sync_check) == serving


async def test_the_server_name_is_verified(post: Post) -> None:
    # Dialing 127.0.0.1 but expecting another name fails: verification is on.
    for name in ("127.0.0.2", "post.example"):
        options = [("grpc.ssl_target_name_override", name)]
        error = await refused(aio_channel(post.address, post.client, options=options))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "Hostname Verification" in (error.details() or ""), error.details()


async def test_clients_without_a_certificate_of_the_pki_are_refused(
    post: Post, tmp_path: Path
) -> None:
    # Each fails at the handshake; gRPC reports it as UNAVAILABLE.
    plaintext = await refused(grpc.aio.insecure_channel(post.address))
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE

    trust = post.identity.trust.read_bytes()
    no_cert = await refused(
        grpc.aio.secure_channel(post.address, grpc.ssl_channel_credentials(trust))
    )
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE

    # Same city, same principal, another CA: the client trusts the server, the server
    # does not trust the client.
    rogue_store = PkiStore(tmp_path / "rogue", CITY)
    rogue_store.init()
    rogue = rogue_store.ensure(CLAIRE).read()
    credentials = grpc.ssl_channel_credentials(trust, rogue.key, rogue.cert)
    foreign = await refused(grpc.aio.secure_channel(post.address, credentials))
    assert foreign.code() == grpc.StatusCode.UNAVAILABLE
    assert post.peers.seen == []


async def test_issuing_again_rotates_the_server_certificate_without_a_restart(
    post: Post,
) -> None:
    old = serial_of(post.identity.cert)
    assert await asyncio.to_thread(served_serial, post.port, post.client) == old
    async with aio_channel(post.address, post.client) as before:
        assert await health(before) == health_pb2.HealthCheckResponse.SERVING

        post.store.issue(POST)  # what `citypost pki issue post primary` does
        new = serial_of(post.identity.cert)
        assert new != old
        assert await asyncio.to_thread(served_serial, post.port, post.client) == new
        assert await asyncio.to_thread(served_serial, post.port, post.client, "localhost") == new

        # An open connection keeps going; a new one is verified against the new certificate.
        assert await health(before) == health_pb2.HealthCheckResponse.SERVING
        async with aio_channel(post.address, post.client) as after:
            assert await health(after) == health_pb2.HealthCheckResponse.SERVING

    # A client's new certificate shows at its next channel (channels read the files).
    post.store.issue(CLAIRE)
    async with aio_channel(post.address, post.client) as channel:
        await admin_pb2_grpc.PostAdminStub(channel).GetStatus(admin_pb2.GetStatusRequest())
    assert post.peers.seen == [(CLAIRE, serial_of(post.client.cert))]


async def test_a_plaintext_server_still_serves_plaintext_clients() -> None:
    port = free_port()
    server, _ = await start_server([], port=port)
    try:
        async with aio_channel(f"127.0.0.1:{port}", None) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=None)


# --- the multicast API (a thread-pool server) and the gate's client ----------------------


async def test_multicast_api_over_mutual_tls(tmp_path: Path) -> None:
    store = PkiStore(tmp_path / "pki", CITY)
    store.init()
    token = "s3cret-api-key"
    service = MulticastService(known_device=lambda eui: True, api_token=token)
    server, port = serve(service, credentials=server_credentials(store.ensure(NS)))
    target = f"127.0.0.1:{port}"
    try:
        gate = store.ensure(GATE)
        app = "17c82e96-be03-4f38-aef3-f83d48582d97"
        name = multicast_group_name("street_lamp", "dijon-centre")
        spec = GroupSpec(app, frozenset({"0000000000000001"}), dr=3, frequency_hz=869_525_000)
        async with MulticastClient(target, api_token=token, identity=gate) as client:
            group_id = (await client.sync_groups({name: spec}))[name]
            assert await client.enqueue(group_id, 10, b"\x01") == 0
        assert service.store.get(group_id).dev_euis == {"0000000000000001"}

        # Only the gate: a post's certificate, with the right API token, is refused.
        post = store.ensure(Principal(CITY, Kind.POST, "primary"))
        async with MulticastClient(
            target, api_token=token, identity=post, attempts=1, timeout_s=2.0
        ) as intruder:
            with pytest.raises(ConfigError, match=r"PERMISSION_DENIED.*post\.primary"):
                await intruder.enqueue(group_id, 11, b"\x00")
        assert len(service.store.queue(group_id)) == 1  # the gate's frame only
        async with grpc.aio.secure_channel(target, channel_credentials(post)) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING

        # Without a certificate the gate cannot reach it (UNAVAILABLE, after its retries).
        async with MulticastClient(target, api_token=token, attempts=1, timeout_s=2.0) as plaintext:
            with pytest.raises(InfrastructureError, match="UNAVAILABLE"):
                await plaintext.queue(group_id)

        # The thread-pool server rotates too.
        ns = store.identity(NS)
        assert await asyncio.to_thread(served_serial, port, gate) == serial_of(ns.cert)
        store.issue(NS)
        assert await asyncio.to_thread(served_serial, port, gate) == serial_of(ns.cert)
        async with grpc.aio.secure_channel(target, channel_credentials(gate)) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None).wait(5)
