"""The storm on a real mosquitto: paced at its rates, stopped by stop(), and every message
dead-lettered by a real edge for the reason it claims while the city's uplinks still decode."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import paho.mqtt.client as mqtt
import pytest

from bridges.edge import UPLINK_FILTER, Edge
from bridges.sinks import MemorySink
from chaos.scenarios import Storm
from chaos.storm import StormPublisher
from citypost.clock import SimClock
from citypost.config import load_config
from citypost.errors import FailedPreconditionError
from citypost.observability import setup_observability
from cluster.mosquitto_local import LocalMosquitto
from fleet.network_server import NetworkServer
from fleet.population import build_city

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Counting:
    """A plain subscriber on the edge's uplink filter that counts what arrives."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"storm-watch-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(UPLINK_FILTER, qos=0)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the watcher was not subscribed"

    def _on_message(self, _c: object, _u: object, _m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("qos", [0, 1])
def test_storm_is_paced_at_its_rates_and_stop_stops_it(
    mqtt_broker: LocalMosquitto, qos: Literal[0, 1]
) -> None:
    config = load_config(overrides={"city.scale": 0.002, "mqtt.port": mqtt_broker.port, **PLAIN})
    storm = Storm(malformed_per_s=200, oversized_per_s=20)
    watcher = Counting(mqtt_broker.port)
    publisher = StormPublisher(config.mqtt, config.city, storm, edge=config.edge, seed=3, qos=qos)
    try:
        publisher.start()
        publisher.start()  # a second start is a no-op
        seconds = 3.0
        time.sleep(seconds)
        during = publisher.sent_by_reason()
        publisher.stop()
        publisher.stop()
        sent = publisher.sent
        wait_for(lambda: watcher.count >= sent, 10, "the watcher to receive every storm message")
        time.sleep(0.5)  # anything still flowing would show now
        received = watcher.count
    finally:
        publisher.stop()
        watcher.close()

    rate = storm.malformed_per_s + storm.oversized_per_s
    assert sent >= 0.5 * rate * seconds  # paced at about the asked rate (generous bound)
    assert sent <= 1.5 * rate * (seconds + 1)  # and not faster
    assert received == sent  # nothing after stop()
    assert during["oversized"] >= 0.5 * storm.oversized_per_s * seconds
    with pytest.raises(FailedPreconditionError):
        publisher.start()


@pytest.mark.timeout(90)
def test_a_real_edge_dead_letters_the_storm_by_reason_while_the_city_decodes(
    mqtt_broker: LocalMosquitto,
) -> None:
    config = load_config(
        overrides={
            "city.scale": 0.002,
            "mqtt.port": mqtt_broker.port,
            **PLAIN,
            "post.name": "storm-edge",
            "edge.batch_interval_ms": 20,
        }
    )
    city = build_city(config.city)
    observability = setup_observability(config.observability)
    sink = MemorySink(keep_all=True)
    edge = Edge(config=config, registry=city.registry, sink=sink, observability=observability)
    clock = SimClock(datetime(2026, 1, 15, 22, 0, tzinfo=UTC), 60)
    network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
    publisher = StormPublisher(
        config.mqtt, city, Storm(malformed_per_s=150, oversized_per_s=10), edge=config.edge, seed=9
    )
    edge.start()
    try:
        network_server.start(uplinks=False)
        publisher.start()
        try:
            published = 0
            for _ in range(4):  # the city's real uplinks, in the middle of the storm
                published += network_server.publish_round()
                time.sleep(0.5)
        finally:
            publisher.stop()
            network_server.stop()
        sent = publisher.sent_by_reason()
        wait_for(
            lambda: edge.stats().dead_letters_by_reason == sent,
            20,
            f"the edge to dead-letter the storm by reason ({sent})",
        )
        wait_for(lambda: edge.stats().decoded >= published, 20, "every real uplink decoded")
        stats = edge.stats()
    finally:
        edge.stop(end_session=True)
        observability.shutdown()

    # Every reason the storm aims at moved, by exactly what the storm sent.
    assert set(sent) == {
        "bad_json",
        "bad_envelope",
        "bad_base64",
        "bad_lpp",
        "bad_layout",
        "wrong_fport",
        "unknown_device",
        "bad_topic",
        "oversized",
    }
    assert stats.dead_letters_by_reason == sent
    # Nothing of the storm became telemetry; every real uplink did.
    assert published == 4 * len(city.registry)
    assert stats.decoded == published
    assert len({(t.dev_eui, t.f_cnt) for t in sink.snapshot()}) == published
