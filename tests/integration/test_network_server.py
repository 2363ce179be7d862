"""The simulated network server against a real mosquitto: uplinks, commands, fencing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from bridges.chirpstack import (
    build_downlink,
    downlink_topic,
    parse_ack,
    parse_topic,
    parse_txack,
    parse_uplink,
)
from bridges.downlink_frame import COMMAND_F_PORT, encode_command
from bridges.layouts import decode_reading, layout_of
from citypost.clock import SimClock
from citypost.config import CityConfig, MqttConfig, SimConfig
from cluster.mosquitto_local import LocalMosquitto
from fleet.behaviours import StreetLamp
from fleet.network_server import NetworkServer, executions_topic
from fleet.population import City, build_city
from protos.citypost.v1 import assets_pb2, command_pb2

pytestmark = pytest.mark.integration

AC = assets_pb2.AssetClass
START = datetime(2024, 1, 15, 19, 0, tzinfo=UTC)


class Recorder:
    """A raw paho subscriber that keeps every message it gets, in order."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes, float]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-recorder-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._ready.wait(10), "recorder did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), time.monotonic()))
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, float]]], bool], timeout: float = 10.0
    ) -> list[tuple[str, bytes, float]]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.messages), timeout), (
                f"timed out; got {len(self.messages)} messages"
            )
            return list(self.messages)

    def of_kind(self, kind: str) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(t, p) for t, p, _ in self.messages if t.endswith(kind)]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def city() -> City:
    return build_city(CityConfig(scale=0.001, seed=11))


def _server(city: City, broker: LocalMosquitto, sim: SimConfig | None = None) -> NetworkServer:
    sim = sim or SimConfig(speed=1.0, start=START)
    clock = SimClock(START, sim.speed)
    return NetworkServer(city, MqttConfig(host=broker.host, port=broker.port), clock, sim, "dijon")


@pytest.fixture
def recorder(mqtt_broker: LocalMosquitto) -> Iterator[Recorder]:
    rec = Recorder(
        mqtt_broker.host,
        mqtt_broker.port,
        ["application/+/device/+/event/+", executions_topic("dijon")],
    )
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def server(city: City, mqtt_broker: LocalMosquitto) -> Iterator[NetworkServer]:
    ns = _server(city, mqtt_broker)
    ns.start(uplinks=False)
    try:
        yield ns
    finally:
        ns.stop()


def _lamp(city: City) -> Any:
    return next(sd for sd in city.devices if sd.device.asset_class == AC.STREET_LAMP)


def _send(
    broker: LocalMosquitto, device: Any, *, epoch: int, command_id: str, pct: float = 42.0
) -> None:
    command = command_pb2.Command(command_id=command_id, epoch=epoch)
    command.set_brightness.brightness_pct = pct
    payload = build_downlink(device.dev_eui, COMMAND_F_PORT, encode_command(command), id=command_id)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        topic = downlink_topic(device.application_id, device.dev_eui)
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _acks_for(recorder: Recorder, command_id: str) -> list[Any]:
    return [
        a for a in (parse_ack(p) for _, p in recorder.of_kind("event/ack"))
        if a.queue_item_id == command_id
    ]  # fmt: skip


@pytest.mark.timeout(30)
def test_publish_round_sends_one_valid_uplink_per_device(
    city: City, server: NetworkServer, recorder: Recorder
) -> None:
    sent = server.publish_round()
    assert sent == len(city.devices)
    messages = recorder.wait_for(lambda m: len(m) >= sent)
    ups = [(t, p) for t, p, _ in messages if t.endswith("event/up")]
    assert len(ups) == sent
    seen = set()
    for topic_text, payload in ups:
        topic = parse_topic(topic_text)
        uplink = parse_uplink(payload)
        device = city.registry.get(uplink.device.dev_eui)
        assert device is not None and device.dev_eui == topic.dev_eui
        assert topic.application_id == device.application_id == uplink.device.application_id
        layout = layout_of(device.asset_class)
        assert uplink.f_port == layout.f_port
        reading = decode_reading(layout, uplink.data)
        assert set(reading) == {n for f in layout.fields for n in f.names}
        if device.transport == assets_pb2.Transport.LORAWAN:
            assert uplink.rssi is not None and uplink.dr > 0
        else:
            assert uplink.rssi is None and uplink.dr == 0
        assert (
            uplink.time_ms is not None and abs(uplink.time_ms - START.timestamp() * 1000) < 60_000
        )
        seen.add(device.dev_eui)
    assert seen == {d.dev_eui for d in city.registry}
    stats = server.stats()
    assert stats.uplinks == sent and stats.uplink_errors == 0
    assert stats.uplinks_by_class["street_lamp"] == 34


@pytest.mark.timeout(30)
def test_commands_execute_once_and_stale_epochs_are_refused(
    city: City, server: NetworkServer, recorder: Recorder, mqtt_broker: LocalMosquitto
) -> None:
    lamp = _lamp(city)
    device = lamp.device
    assert isinstance(lamp.behaviour, StreetLamp)
    command_id = str(uuid.uuid4())

    _send(mqtt_broker, device, epoch=5, command_id=command_id, pct=42.0)
    recorder.wait_for(lambda _m: len(_acks_for(recorder, command_id)) == 1)
    ack = _acks_for(recorder, command_id)[0]
    assert ack.acknowledged and ack.device.dev_eui == device.dev_eui
    txacks = [parse_txack(p) for _, p in recorder.of_kind("event/txack")]
    assert [t.queue_item_id for t in txacks] == [command_id]
    assert txacks[0].f_cnt_down == ack.f_cnt_down
    assert lamp.behaviour.commanded_pct == 42.0
    executions = server.executions()
    assert [(e.command_id, e.epoch, e.action, e.value) for e in executions] == [
        (command_id, 5, "set_brightness", 42.0)
    ]
    published = [e for _, p in recorder.of_kind("fleet/executions") for e in orjson.loads(p)]
    assert [(e["dev_eui"], e["command_id"], e["epoch"]) for e in published] == [
        (device.dev_eui, command_id, 5)
    ]

    # A new leader re-sends the same command: acknowledged again, not run again.
    _send(mqtt_broker, device, epoch=6, command_id=command_id, pct=42.0)
    recorder.wait_for(lambda _m: len(_acks_for(recorder, command_id)) == 2)
    assert all(a.acknowledged for a in _acks_for(recorder, command_id))
    assert len(server.executions()) == 1

    # The deposed leader (epoch 5) sends something new: refused, not run.
    stale_id = str(uuid.uuid4())
    _send(mqtt_broker, device, epoch=5, command_id=stale_id, pct=99.0)
    recorder.wait_for(lambda _m: len(_acks_for(recorder, stale_id)) == 1)
    assert not _acks_for(recorder, stale_id)[0].acknowledged
    assert lamp.behaviour.commanded_pct == 42.0
    assert len(server.executions()) == 1
    assert len(recorder.of_kind("fleet/executions")) == 1

    stats = server.stats()
    assert (stats.commands_executed, stats.commands_duplicate, stats.commands_stale) == (1, 1, 1)


@pytest.mark.timeout(30)
def test_bad_downlinks_are_counted_and_the_server_carries_on(
    city: City, server: NetworkServer, recorder: Recorder, mqtt_broker: LocalMosquitto
) -> None:
    lamp = _lamp(city).device
    bollard = next(sd.device for sd in city.devices if sd.device.asset_class == AC.BOLLARD)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    bad_frame_id = str(uuid.uuid4())
    try:
        topic = downlink_topic(lamp.application_id, lamp.dev_eui)
        client.publish(topic, b"not json", qos=1).wait_for_publish(10)
        frame = build_downlink(lamp.dev_eui, COMMAND_F_PORT, b"\x01\x02", id=bad_frame_id)
        client.publish(topic, frame, qos=1).wait_for_publish(10)
        client.publish(
            downlink_topic(lamp.application_id, "00000000000000ff"), frame, qos=1
        ).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    recorder.wait_for(lambda _m: len(_acks_for(recorder, bad_frame_id)) == 1)
    assert not _acks_for(recorder, bad_frame_id)[0].acknowledged

    # A brightness command to a bollard is refused, and a good command still works.
    wrong = str(uuid.uuid4())
    _send(mqtt_broker, bollard, epoch=1, command_id=wrong)
    good = str(uuid.uuid4())
    _send(mqtt_broker, lamp, epoch=1, command_id=good)
    recorder.wait_for(lambda _m: len(_acks_for(recorder, good)) == 1)
    assert not _acks_for(recorder, wrong)[0].acknowledged
    assert _acks_for(recorder, good)[0].acknowledged
    stats = server.stats()
    assert stats.downlinks_bad == 2
    assert stats.downlinks_unknown_device == 1
    assert stats.commands_rejected == 1 and stats.commands_executed == 1


@pytest.mark.timeout(60)
def test_the_scheduler_reports_every_device_with_rising_frame_counters(
    city: City, mqtt_broker: LocalMosquitto, recorder: Recorder
) -> None:
    # An hour of simulated time per real second: every device speaks within seconds.
    sim = SimConfig(speed=3600.0, start=START, max_uplinks_per_s=400.0)
    ns = _server(city, mqtt_broker, sim)
    ns.start()
    try:

        def every_device_twice(messages: list[tuple[str, bytes, float]]) -> bool:
            counts: dict[str, int] = {}
            for t, _, _ in messages:
                if t.endswith("event/up"):
                    eui = t.split("/")[3]
                    counts[eui] = counts.get(eui, 0) + 1
            return len(counts) == len(city.devices) and min(counts.values()) >= 2

        recorder.wait_for(every_device_twice, timeout=45)
    finally:
        ns.stop()
    f_cnts: dict[str, list[int]] = {}
    for _, payload in recorder.of_kind("event/up"):
        up = parse_uplink(payload)
        f_cnts.setdefault(up.device.dev_eui, []).append(up.f_cnt)
    for counts in f_cnts.values():
        assert counts == list(range(counts[0], counts[0] + len(counts)))


@pytest.mark.timeout(60)
def test_uplinks_never_exceed_the_rate_cap(
    city: City, mqtt_broker: LocalMosquitto, recorder: Recorder
) -> None:
    rate = 20.0
    sim = SimConfig(speed=100_000.0, start=START, max_uplinks_per_s=rate)
    began = time.monotonic()  # before the bucket exists
    ns = _server(city, mqtt_broker, sim)
    ns.start()
    try:
        recorder.wait_for(lambda m: len(m) >= 60, timeout=30)
    finally:
        ns.stop()
    elapsed = time.monotonic() - began
    ups = recorder.of_kind("event/up")
    burst = max(1.0, rate / 20)
    # An upper bound only: a slow machine sends fewer, never more.
    assert len(ups) <= rate * elapsed + burst + 1


@pytest.mark.timeout(90)
def test_reconnects_and_resubscribes_after_a_broker_restart(
    city: City, fresh_broker: Callable[..., LocalMosquitto]
) -> None:
    broker = fresh_broker()
    ns = _server(city, broker)
    ns.start(uplinks=False)
    try:
        broker.restart()
        deadline = time.monotonic() + 30
        while not ns.stats().connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ns.stats().connected
        rec = Recorder(broker.host, broker.port, ["application/+/device/+/event/ack"])
        try:
            lamp = _lamp(city).device
            command_id = str(uuid.uuid4())
            # The resubscription may land just after the CONNACK: resend until answered.
            for _ in range(50):
                _send(broker, lamp, epoch=1, command_id=command_id)
                with rec._cond:
                    if rec._cond.wait_for(lambda: bool(_acks_for(rec, command_id)), 0.5):
                        break
            assert _acks_for(rec, command_id)[0].acknowledged
            assert [e.command_id for e in ns.executions()] == [command_id]
        finally:
            rec.stop()
    finally:
        ns.stop()
