"""Only etcd moves the downlink gate's mark (issue 13), on a secured city: a TLS etcd with
its users, a TLS broker with its ACL, the gate runner, and commands signed by the post.

A frame signed by the post's own key but carrying an epoch above the leader key's is
dropped, counted and dead-lettered, and the mark does not move; the real leader's next
command goes through; a new leader's first command is confirmed from etcd; with etcd
gone, nothing above the mark is forwarded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import aetcd
import paho.mqtt.client as mqtt
import pytest

from bridges import chirpstack
from bridges.airtime_planner import Priority
from bridges.dead_letters import from_json
from bridges.downlink_frame import COMMAND_F_PORT, decode_command, encode_command
from bridges.downlink_gate import gate_topic, plan_properties
from bridges.gate_book import load_mark
from bridges.mqtt_session import MqttSession
from bridges.registry import Device, RadioClass, radio_class
from citypost.config import Config, load_config
from citypost.errors import InfrastructureError
from cluster.etcd_local import EtcdSecurity, LocalEtcd
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import BrokerSecurity, LocalMosquitto
from failover.election import leader_key
from failover.etcd_client import etcd_client
from failover.leadership import LeaderValue
from fleet.population import build_city
from protos.citypost.v1 import command_pb2
from security import identities
from security.command_signing import CommandSigner
from security.pki import Kind, Principal
from security.pki_store import Identity

pytestmark = pytest.mark.integration

CITY = "nancy"


@dataclass
class SecuredCity:
    config: Config
    etcd: LocalEtcd
    broker: LocalMosquitto

    def identity(self, kind: Kind, name: str) -> Identity:
        return identities.store(self.config).identity(Principal(CITY, kind, name))


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCity]:
    run_dir = tmp_path_factory.mktemp("gate-confirm")
    base = {"city.name": CITY, "city.scale": 0.002, "run_dir": str(run_dir)}
    store = identities.prepare(load_config(overrides=base), [identities.GATE, "primary"])
    assert store is not None  # security.tls is on by default
    etcd = LocalEtcd(run_dir / "etcd", members=1, security=EtcdSecurity(store))
    broker = LocalMosquitto(run_dir / "mosquitto", security=BrokerSecurity(store, CITY))
    try:
        etcd.start()
        broker.start()
        config = load_config(
            overrides={
                **base,
                "mqtt.port": broker.port,
                "etcd.mode": "external",
                "etcd.endpoints": list(etcd.endpoints),
            }
        )
        yield SecuredCity(config, etcd, broker)
    finally:
        try:
            broker.stop()
        finally:
            etcd.stop()


class Inbox:
    """A TLS subscriber recording the payloads it receives, in order."""

    def __init__(self, city: SecuredCity, kind: Kind, name: str, topic: str) -> None:
        self._lock = threading.Lock()
        self.payloads: list[bytes] = []
        self.session = MqttSession(
            client_id=f"test-{kind.value}-{uuid.uuid4().hex[:8]}",
            host=city.config.mqtt.host,
            port=city.broker.port,
            subscriptions=[(topic, 1)],
            on_message=self._on_message,
            tls=city.identity(kind, name),
        )
        self.session.start()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.payloads)


class SigningPost:
    """The leading post's side: signed commands handed to the gate over TLS."""

    def __init__(self, city: SecuredCity, device: Device) -> None:
        identity = city.identity(Kind.POST, "primary")
        self._signer = CommandSigner(identity.read())
        self._device = device
        self.session = MqttSession(
            client_id=f"test-post-{uuid.uuid4().hex[:8]}",
            host=city.config.mqtt.host,
            port=city.broker.port,
            tls=identity,
        )
        self.session.start()

    def send(self, epoch: int) -> tuple[str, bytes]:
        """One signed brightness command of `epoch`; its (command_id, payload)."""
        command_id = str(uuid.uuid4())
        command = command_pb2.Command(command_id=command_id, epoch=epoch)
        command.set_brightness.brightness_pct = 30
        payload = chirpstack.build_downlink(
            self._device.dev_eui, COMMAND_F_PORT, encode_command(command), id=command_id
        )
        down = chirpstack.downlink_topic(self._device.application_id, self._device.dev_eui)
        topic = gate_topic(CITY, down)
        properties = plan_properties(
            Priority.OPERATOR, 0, signer=self._signer, topic=topic, payload=payload
        )
        self.session.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(
            5
        )
        return command_id, payload


@dataclass
class Running:
    runner: GateRunner
    etcd: aetcd.Client  # as the post: it holds the leader key
    post: SigningPost
    devices: Inbox  # the network server's view of command/down
    letters: Inbox  # the city's dead letters, as the drills read them
    lease: int = 0

    async def elect(self) -> int:
        """A leader key under a fresh lease, as the election puts it; its epoch."""
        if self.lease:
            await self.etcd.revoke_lease(self.lease)  # the old leader's key goes with it
        granted = await self.etcd.lease(30)
        self.lease = int(granted.id)
        value = LeaderValue(name="primary", address="127.0.0.1:1").to_json()
        await self.etcd.put(leader_key(CITY), value, lease=self.lease)
        got = await self.etcd.get(leader_key(CITY))
        assert got is not None
        return int(got.create_revision)

    def epochs(self) -> list[int]:
        return [
            decode_command(chirpstack.parse_downlink(p).data).epoch for p in self.devices.snapshot()
        ]


@pytest.fixture
async def running(city: SecuredCity) -> AsyncIterator[Running]:
    lamps = build_city(city.config.city).registry
    device = next(d for d in lamps if radio_class(d.asset_class) is RadioClass.C)
    post = SigningPost(city, device)
    devices = Inbox(
        city, Kind.NETWORK_SERVER, identities.NETWORK_SERVER, "application/+/device/+/command/down"
    )
    letters = Inbox(city, Kind.CHAOS, identities.CHAOS, city.config.edge.dead_letter_topic(CITY))
    client = etcd_client(city.etcd.endpoints, tls=city.identity(Kind.POST, "primary"))
    runner = GateRunner(city.config)
    await asyncio.to_thread(runner.start)
    try:
        yield Running(runner, client, post, devices, letters)
    finally:
        # Its session ended: what a test left unacknowledged must not reach the next one.
        await asyncio.to_thread(runner.stop, end_session=True)
        for session in (post.session, devices.session, letters.session):
            await asyncio.to_thread(session.stop, end_session=True)
        await client.delete(leader_key(CITY))
        await client.close()


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_a_signed_frame_above_the_leader_epoch_is_dropped_and_the_leader_goes_on(
    city: SecuredCity, running: Running
) -> None:
    gate = running.runner
    epoch = await running.elect()
    await _until(lambda: gate.stats().highest_epoch == epoch, 10, "the watch to tell the epoch")
    await asyncio.to_thread(running.post.send, epoch)
    await _until(lambda: running.epochs() == [epoch], 10, "the leader's command")
    # Signed by the post's very key (the gate's signature check passes), a made-up epoch.
    forged_id, forged = await asyncio.to_thread(running.post.send, epoch + 1_000)
    await _until(lambda: gate.stats().dropped >= 1, 10, "the forged command dropped")
    await _until(lambda: len(running.letters.snapshot()) >= 1, 10, "its dead letter")
    stats = gate.stats()
    assert stats.dropped_by_reason == {"unconfirmed_epoch": 1}
    assert (stats.highest_epoch, stats.persisted_epoch) == (epoch, epoch)  # the mark stayed
    assert gate.gate.unsigned_dropped == 0  # it was correctly signed: the fence refused it
    assert load_mark(gate.gate.state_path) == epoch
    letter = from_json(running.letters.snapshot()[-1])
    assert (letter.reason, letter.payload) == ("unconfirmed_epoch", forged)
    assert forged_id in letter.detail
    # The real leader's next command goes through.
    await asyncio.to_thread(running.post.send, epoch)
    await _until(lambda: running.epochs() == [epoch, epoch], 10, "the leader's next command")
    await asyncio.sleep(0.3)
    assert running.epochs() == [epoch, epoch]  # the forged one never reached a device
    assert gate.stats().confirm_failures == 0


@pytest.mark.timeout(90)
async def test_a_new_leader_epoch_is_confirmed_from_etcd_and_fences_the_old_one(
    city: SecuredCity, running: Running
) -> None:
    gate = running.runner
    old = await running.elect()
    await _until(lambda: gate.stats().highest_epoch >= old, 10, "the first leader's epoch")
    assert await asyncio.to_thread(gate.confirm_epoch) == old  # a read of the leader key
    new = await running.elect()  # a takeover
    assert new > old
    assert await asyncio.to_thread(gate.confirm_epoch) == new
    # Its first command goes through, whether the watch or the gate's own read told first.
    await asyncio.to_thread(running.post.send, new)
    await _until(lambda: running.epochs()[-1:] == [new], 10, "the new leader's command")
    await asyncio.to_thread(running.post.send, old)  # the deposed leader, too late
    await _until(lambda: gate.stats().dropped >= 1, 10, "the old epoch fenced")
    assert gate.stats().dropped_by_reason == {"stale_epoch": 1}
    assert gate.stats().highest_epoch == new
    await running.etcd.revoke_lease(running.lease)  # the leader key gone: no leader
    running.lease = 0
    assert await asyncio.to_thread(gate.confirm_epoch) is None


@pytest.mark.timeout(120)
async def test_with_etcd_down_nothing_above_the_mark_is_forwarded(
    city: SecuredCity, running: Running
) -> None:
    gate = running.runner
    epoch = await running.elect()
    await _until(lambda: gate.stats().highest_epoch == epoch, 10, "the leader's epoch")
    await asyncio.to_thread(running.post.send, epoch)
    await _until(lambda: running.epochs() == [epoch], 10, "the leader's command")
    await asyncio.to_thread(city.etcd.stop_member, 0)
    try:
        with pytest.raises(InfrastructureError):
            await asyncio.to_thread(gate.confirm_epoch)
        await asyncio.to_thread(running.post.send, epoch + 1)
        await _until(lambda: gate.stats().confirm_failures >= 1, 15, "the failed confirmation")
        await asyncio.to_thread(running.post.send, epoch)  # the confirmed epoch needs no read
        await _until(lambda: len(running.epochs()) == 2, 10, "the leader's next command")
        await asyncio.sleep(0.3)
        stats = gate.stats()
        assert running.epochs() == [epoch, epoch]
        assert stats.highest_epoch == epoch and stats.dropped_by_reason == {}
        assert running.letters.snapshot() == []  # neither dropped nor dead-lettered
    finally:
        await asyncio.to_thread(city.etcd.restart_member, 0)
        await _etcd_answers(running.etcd)  # its channel may still be backing off
    # Back, the runner reads again (its channel reconnects within a second); the key
    # outlived the outage, so the mark is still the leader's.
    deadline = time.monotonic() + 15
    while True:
        try:
            assert await asyncio.to_thread(gate.confirm_epoch) == epoch
            break
        except InfrastructureError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _etcd_answers(client: aetcd.Client, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.get(leader_key(CITY))
            return
        except aetcd.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
