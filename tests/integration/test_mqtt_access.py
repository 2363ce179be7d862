"""The city's broker under attack: mutual TLS, the CN as user name, the ACL.

A real mosquitto with the city's PKI. Every refusal is checked where it
happens (the TLS handshake, the broker's PUBACK reason 135) and by what did
not arrive at a subscriber that was listening.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from bridges import chirpstack
from bridges.downlink_gate import gate_topic
from bridges.mqtt_session import use_tls
from cluster.mosquitto_local import BrokerSecurity, LocalMosquitto
from fleet.network_server import executions_topic
from security import mqtt_acl
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CITY = "dijon"
APP = "lighting"
DEV_A = "0011223344556677"
DEV_B = "8899aabbccddeeff"
NOT_AUTHORIZED = 135
# Success, or success with nobody subscribed (16, 'no matching subscribers').
ACCEPTED = {0, 16}


class Client:
    """A paho MQTT v5 client that reports each publish's PUBACK reason and what it got."""

    def __init__(self, port: int, identity: Identity | None) -> None:
        self.connected = threading.Event()
        self.refused: list[str] = []
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        if identity is not None:
            use_tls(self.client, identity)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.port = port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            self.refused.append(str(reason))
        else:
            self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.acked:
            self.acks[mid] = reason.value
            self.acked.notify_all()

    def connect(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except OSError:
            return False  # the TLS handshake refused us
        self.client.loop_start()
        return self.connected.wait(5)

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """The broker's PUBACK reason code for a QoS 1 publish."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, timeout=5)
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5)

    def got(self, timeout: float = 1.0) -> list[str]:
        out = []
        try:
            while True:
                out.append(self.messages.get(timeout=timeout).topic)
                timeout = 0.2
        except queue.Empty:
            return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    store = PkiStore(tmp_path_factory.mktemp("pki"), CITY)
    store.init()
    for kind, name in [
        (Kind.NETWORK_SERVER, "ns"),
        (Kind.GATE, "gate"),
        (Kind.POST, "primary"),
        (Kind.CHAOS, "drill"),
        (Kind.DEVICE, DEV_A),
        (Kind.DEVICE, DEV_B),
    ]:
        store.ensure(Principal(CITY, kind, name))
    return store


@pytest.fixture(scope="module")
def broker(pki: PkiStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(
        tmp_path_factory.mktemp("broker"), security=BrokerSecurity(pki, CITY)
    ) as started:
        yield started


@pytest.fixture
def connect(broker: LocalMosquitto, pki: PkiStore) -> Iterator[Any]:
    clients: list[Client] = []

    def make(kind: Kind | None, name: str = "") -> Client:
        identity = None if kind is None else pki.identity(Principal(CITY, kind, name))
        client = Client(broker.port, identity)
        clients.append(client)
        assert client.connect(), f"{kind} {name} could not connect"
        return client

    yield make
    for client in clients:
        client.close()


def down(dev_eui: str) -> str:
    return chirpstack.downlink_topic(APP, dev_eui)


def up(dev_eui: str) -> str:
    return chirpstack.uplink_topic(APP, dev_eui)


def test_no_certificate_and_a_foreign_ca_are_refused_at_the_handshake(
    broker: LocalMosquitto, tmp_path: Path
) -> None:
    assert not Client(broker.port, None).connect()
    rogue = PkiStore(tmp_path / "rogue", CITY)
    rogue.init()
    forged = rogue.issue(Principal(CITY, Kind.GATE, "gate"))  # the gate's very CN
    assert not Client(broker.port, forged).connect()


def test_only_the_gate_may_publish_a_downlink(connect: Any) -> None:
    ns = connect(Kind.NETWORK_SERVER, "ns")
    ns.subscribe("application/+/device/+/command/down")
    post = connect(Kind.POST, "primary")
    chaos = connect(Kind.CHAOS, "drill")
    device = connect(Kind.DEVICE, DEV_A)
    for attacker in (post, chaos, device, ns):
        assert attacker.publish(down(DEV_A)) == NOT_AUTHORIZED
    assert ns.got() == []  # nothing forged reached the network server
    gate = connect(Kind.GATE, "gate")
    assert gate.publish(down(DEV_A)) in ACCEPTED
    assert ns.got() == [down(DEV_A)]


def test_only_network_servers_publish_device_events(connect: Any) -> None:
    post = connect(Kind.POST, "primary")
    post.subscribe("application/+/device/+/event/+")
    gate = connect(Kind.GATE, "gate")
    chaos = connect(Kind.CHAOS, "drill")
    assert gate.publish(up(DEV_A)) == NOT_AUTHORIZED
    assert chaos.publish(up(DEV_A)) == NOT_AUTHORIZED
    assert post.publish(up(DEV_A)) == NOT_AUTHORIZED
    assert post.got() == []
    ns = connect(Kind.NETWORK_SERVER, "ns")
    assert ns.publish(up(DEV_A)) in ACCEPTED
    assert post.got() == [up(DEV_A)]


def test_a_device_publishes_only_its_own_uplink_and_reads_only_its_own_commands(
    connect: Any,
) -> None:
    post = connect(Kind.POST, "primary")
    post.subscribe("application/+/device/+/event/+")
    device = connect(Kind.DEVICE, DEV_A)
    device.subscribe("application/+/device/+/command/+")  # granted, delivery filtered
    assert device.publish(up(DEV_B)) == NOT_AUTHORIZED
    assert device.publish(chirpstack.ack_topic(APP, DEV_A)) == NOT_AUTHORIZED
    assert device.publish(up(DEV_A)) in ACCEPTED
    assert post.got() == [up(DEV_A)]
    gate = connect(Kind.GATE, "gate")
    assert gate.publish(down(DEV_B)) in ACCEPTED
    assert gate.publish(down(DEV_A)) in ACCEPTED
    assert device.got() == [down(DEV_A)]


def test_posts_hand_work_to_the_gate_only(connect: Any) -> None:
    gate = connect(Kind.GATE, "gate")
    gate.subscribe(mqtt_acl.city_topics(CITY)["gate_downlinks"])
    post = connect(Kind.POST, "primary")
    inbox = gate_topic(CITY, down(DEV_A))
    assert post.publish(inbox) in ACCEPTED
    assert gate.got() == [inbox]
    ns = connect(Kind.NETWORK_SERVER, "ns")
    assert ns.publish(inbox) == NOT_AUTHORIZED  # nobody else feeds the gate
    assert post.publish(mqtt_acl.city_topics(CITY)["gate_airtime"]) == NOT_AUTHORIZED
    assert gate.got() == []


def test_acl_topics_match_the_components(connect: Any) -> None:
    topics = mqtt_acl.city_topics(CITY)
    assert executions_topic(CITY) == topics["executions"]
    assert gate_topic(CITY, "multicast/lighting/g1").startswith(topics["gate_multicast"][:-4])
    ns = connect(Kind.NETWORK_SERVER, "ns")
    assert ns.publish(executions_topic(CITY)) in ACCEPTED


def test_a_revoked_certificate_is_refused_after_reload(
    broker: LocalMosquitto, pki: PkiStore
) -> None:
    ns2 = Principal(CITY, Kind.NETWORK_SERVER, "ns-2")
    identity = pki.issue(ns2)
    broker.reload()
    first = Client(broker.port, identity)
    assert first.connect()
    assert first.publish(up(DEV_A)) in ACCEPTED  # a new principal's rules arrive with the reload
    first.close()
    pki.revoke(ns2)
    broker.reload()
    assert not Client(broker.port, identity).connect()


def test_the_broker_reloads_when_the_pki_changed(broker: LocalMosquitto, pki: PkiStore) -> None:
    """What the demo's supervisor does each round after `citypost pki issue|revoke`."""
    assert not broker.reload_if_pki_changed()  # nothing new since the ACL was written
    ns3 = Principal(CITY, Kind.NETWORK_SERVER, "ns-3")
    identity = pki.issue(ns3)
    assert broker.reload_if_pki_changed()
    assert not broker.reload_if_pki_changed()
    client = Client(broker.port, identity)
    assert client.connect()
    assert client.publish(up(DEV_B)) in ACCEPTED
    client.close()
    pki.revoke(ns3)
    assert broker.reload_if_pki_changed()
    assert not Client(broker.port, identity).connect()
