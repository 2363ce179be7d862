"""The edge against a real mosquitto: dead letters under a malformed burst, broker restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from bridges import chirpstack
from bridges.dead_letters import from_json
from bridges.edge import Edge
from bridges.layouts import encode_reading, layout_of
from bridges.mqtt_session import MqttSession
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.sinks import MemorySink
from citypost.config import Config, load_config
from citypost.observability import setup_observability
from cluster.mosquitto_local import LocalMosquitto
from protos.citypost.v1 import assets_pb2
from protos.citypost.v1.telemetry_pb2 import Telemetry

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}

AC = assets_pb2.AssetClass
APP = application_id("dijon", AC.STREET_LAMP)


def _lamps(n: int) -> list[Device]:
    return [
        Device(
            dev_eui=f"70b3d57e{i:08x}",
            name=f"lamp-{i}",
            asset_class=AC.STREET_LAMP,
            group="dijon-1",
            commune="Dijon",
            latitude=47.32,
            longitude=5.04,
            transport=assets_pb2.LORAWAN,
            application_id=APP,
        )
        for i in range(n)
    ]


def _uplink(device: Device, f_cnt: int) -> tuple[str, bytes]:
    info = chirpstack.DeviceInfo(application_id=APP, dev_eui=device.dev_eui)
    data = encode_reading(layout_of(AC.STREET_LAMP), {"brightness_pct": 20.0})
    raw = chirpstack.build_uplink(info, data, 10, f_cnt, time_ms=1_700_000_000_000)
    return chirpstack.uplink_topic(APP, device.dev_eui), raw


def _config(port: int, group: str, **overrides: object) -> Config:
    # A post (so a session) of its own per test: the session broker keeps other tests' sessions.
    settings = {"mqtt.port": port, **PLAIN, "post.name": group, "edge.batch_interval_ms": 20}
    return load_config(overrides={**settings, **overrides})


class SlowSink(MemorySink):
    """Slower than the stream, so the broker holds a backlog for the edge."""

    def submit(self, batch: Sequence[Telemetry]) -> None:
        time.sleep(0.02)
        super().submit(batch)


@contextmanager
def running_edge(config: Config, registry: DeviceRegistry, sink: MemorySink) -> Iterator[Edge]:
    observability = setup_observability(config.observability)
    edge = Edge(config=config, registry=registry, sink=sink, observability=observability)
    edge.start()
    try:
        yield edge
    finally:
        edge.stop(end_session=True)
        observability.shutdown()


def _publisher(port: int) -> MqttSession:
    session = MqttSession(client_id=f"test-pub-{uuid.uuid4().hex[:8]}", host="127.0.0.1", port=port)
    session.start()
    return session


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.timeout(60)
def test_malformed_burst_goes_to_dead_letters_while_good_traffic_flows(
    mqtt_broker: LocalMosquitto,
) -> None:
    devices = _lamps(50)
    config = _config(mqtt_broker.port, "burst")
    sink = MemorySink(keep_all=True)
    letters: list[bytes] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda _c, _u, m: letters.append(m.payload)
    watcher.connect("127.0.0.1", mqtt_broker.port)
    watcher.subscribe(config.edge.dead_letter_topic(config.city.name), qos=1)
    watcher.loop_start()
    good_topic, good = _uplink(devices[0], 0)
    stranger = chirpstack.uplink_topic(APP, "00000000deadbeef")
    bad = [
        (good_topic, b"{not json"),
        (good_topic, b'{"deviceInfo": 5}'),
        (good_topic, good.replace(b'"data":"', b'"data":"***')),
        (good_topic, b"x" * (config.edge.max_message_bytes + 1)),
        (stranger, good.replace(devices[0].dev_eui.encode(), b"00000000deadbeef")),
        (good_topic, good.replace(b'"fPort":10', b'"fPort":99')),
        (good_topic, b"\xff\xfe\x00binary"),
    ]
    publisher = _publisher(mqtt_broker.port)
    try:
        with running_edge(config, DeviceRegistry(devices), sink) as edge:
            rounds = 40
            for f_cnt in range(rounds):
                for device in devices:
                    publisher.client.publish(*_uplink(device, f_cnt), qos=1)
                for topic, payload in bad:
                    publisher.client.publish(topic, payload, qos=1)
            expected_good = rounds * len(devices)
            expected_bad = rounds * len(bad)
            wait_for(lambda: edge.stats().decoded >= expected_good, 30, "every good uplink")
            wait_for(lambda: len(letters) >= expected_bad, 30, "every dead letter")
            stats = edge.stats()
            assert stats.connected
            assert stats.decoded == expected_good
            assert sum(stats.dead_letters_by_reason.values()) == expected_bad
            assert stats.dead_letters_by_reason == {
                "bad_json": 2 * rounds,  # not JSON at all, and binary
                "bad_envelope": rounds,  # JSON, but not an uplink event
                "bad_base64": rounds,
                "oversized": rounds,
                "unknown_device": rounds,
                "wrong_fport": rounds,
            }
            seen = {(t.dev_eui, t.f_cnt) for t in sink.snapshot()}
            assert len(seen) == expected_good
            parsed = [from_json(raw) for raw in letters]
            oversized = [p for p in parsed if p.reason == "oversized"]
            assert all(p.payload_size == config.edge.max_message_bytes + 1 for p in oversized)
            assert all(len(p.payload) == config.edge.dead_letter_payload_bytes for p in oversized)
            assert {p.payload for p in parsed if p.reason == "bad_json"} == {
                b"{not json",
                b"\xff\xfe\x00binary",
            }
    finally:
        publisher.stop()
        watcher.loop_stop()
        watcher.disconnect()


@pytest.mark.timeout(90)
def test_broker_restart_loses_no_qos1_uplink(fresh_broker: Callable[..., LocalMosquitto]) -> None:
    broker = fresh_broker(persistence=True)
    devices = _lamps(20)
    config = _config(broker.port, "restart", **{"edge.batch_max": 20})
    sink = SlowSink(keep_all=True)
    rounds = 150
    restarted = threading.Event()

    def publish_all(publisher: MqttSession) -> None:
        for f_cnt in range(rounds):
            for device in devices:
                publisher.client.publish(*_uplink(device, f_cnt), qos=1)
            time.sleep(0.01)

    with running_edge(config, DeviceRegistry(devices), sink) as edge:
        publisher = _publisher(broker.port)
        try:
            feeder = threading.Thread(target=publish_all, args=(publisher,))
            feeder.start()
            wait_for(lambda: edge.stats().decoded > 200, 20, "traffic before the restart")
            backlog = rounds * len(devices) - edge.stats().decoded
            broker.restart()
            restarted.set()
            feeder.join(timeout=60)
            wait_for(
                lambda: (
                    len({(t.dev_eui, t.f_cnt) for t in sink.snapshot()}) == rounds * len(devices)
                ),
                45,
                f"every uplink after the broker restart (had {len({(t.dev_eui, t.f_cnt) for t in sink.snapshot()})}, connects {edge.session.connects}, stats {edge.stats()})",
            )
            assert edge.stats().connected
            assert edge.session.connects >= 2  # it did reconnect by itself
            assert backlog > 500  # the restart hit while the broker held uplinks for the edge
        finally:
            publisher.stop()
    assert restarted.is_set()
