"""The simulated city through the real broker to the edge: every uplink decoded, traced, counted."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridges.chirpstack import Ack, LogEvent
from bridges.downlinks import downlinks
from bridges.edge import Edge
from bridges.sinks import MemorySink
from citypost.clock import SimClock
from citypost.config import load_config
from citypost.observability import setup_observability
from cluster.mosquitto_local import LocalMosquitto
from fleet.network_server import NetworkServer
from fleet.population import build_city
from protos.citypost.v1 import assets_pb2, command_pb2
from tests.integration.test_edge import wait_for

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}

ROUNDS = 3


@pytest.mark.timeout(60)
def test_edge_decodes_every_uplink_of_a_small_city(mqtt_broker: LocalMosquitto) -> None:
    config = load_config(
        overrides={
            "city.scale": 0.002,
            "mqtt.port": mqtt_broker.port,
            **PLAIN,
            "post.name": "city-edge",
            "edge.batch_interval_ms": 20,
        }
    )
    city = build_city(config.city)
    metrics = InMemoryMetricReader()
    observability = setup_observability(config.observability, extra_metric_readers=[metrics])
    spans = InMemorySpanExporter()
    observability.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    sink = MemorySink(keep_all=True)
    edge = Edge(config=config, registry=city.registry, sink=sink, observability=observability)
    clock = SimClock(datetime(2026, 1, 15, 22, 0, tzinfo=UTC), 60)
    network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
    edge.start()
    try:
        network_server.start(uplinks=False)
        try:
            published = sum(network_server.publish_round() for _ in range(ROUNDS))
        finally:
            network_server.stop()
        assert published == ROUNDS * len(city.registry)
        wait_for(lambda: edge.stats().decoded >= published, 20, "every uplink decoded")
        stats = edge.stats()
    finally:
        edge.stop(end_session=True)

    assert stats.decoded == published
    assert stats.dead_letters_by_reason == {}
    received = sink.snapshot()
    assert len({(t.dev_eui, t.f_cnt) for t in received}) == published  # none twice, none lost
    for telemetry in received:
        device = city.registry.get(telemetry.dev_eui)
        assert device is not None
        assert telemetry.asset_class == device.asset_class
        assert telemetry.group == device.group
        assert telemetry.WhichOneof("reading") is not None
    by_class = city.registry.count_by_class()
    assert stats.decoded_by_class == {name: ROUNDS * n for name, n in by_class.items()}

    # One span per batch, whose sizes add up to what was decoded.
    batch_spans = [s for s in spans.get_finished_spans() if s.name == "edge.batch"]
    assert batch_spans
    assert sum(s.attributes["citypost.batch.size"] for s in batch_spans) == published  # type: ignore[index,misc]
    # The uplink counter, by asset class, says the same.
    counted: dict[str, int] = {}
    for resource in metrics.get_metrics_data().resource_metrics:  # type: ignore[union-attr]
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "citypost.edge.uplinks":
                    for point in metric.data.data_points:
                        counted[str(point.attributes["asset_class"])] = point.value  # type: ignore[index,attr-defined]
    assert counted == {name: ROUNDS * n for name, n in by_class.items()}
    observability.shutdown()


class AckList:
    def __init__(self) -> None:
        self.acks: list[Ack | LogEvent] = []

    def submit_acks(self, acks: Sequence[Ack | LogEvent]) -> None:
        self.acks.extend(acks)


@pytest.mark.timeout(60)
def test_commands_reach_devices_and_their_acks_reach_the_edge(mqtt_broker: LocalMosquitto) -> None:
    config = load_config(
        overrides={"city.scale": 0.002, "mqtt.port": mqtt_broker.port, **PLAIN, "post.name": "acks"}
    )
    city = build_city(config.city)
    observability = setup_observability(config.observability)
    acks = AckList()
    edge = Edge(
        config=config,
        registry=city.registry,
        sink=MemorySink(),
        observability=observability,
        acks=acks,
    )
    clock = SimClock(datetime(2026, 1, 15, 22, 0, tzinfo=UTC), 60)
    network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
    lamps = [d for d in city.registry if d.asset_class == assets_pb2.STREET_LAMP]
    group = lamps[0].group
    members = city.registry.group(assets_pb2.STREET_LAMP, group)
    command = command_pb2.Command(
        command_id=str(uuid.uuid4()),
        epoch=3,
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(group=group),
        set_brightness=command_pb2.SetBrightness(brightness_pct=55),
    )
    edge.start()
    network_server.start(uplinks=False)
    try:
        for downlink in downlinks(command, city.registry):
            edge.session.client.publish(downlink.topic, downlink.payload, qos=1)
        wait_for(lambda: len(acks.acks) >= len(members), 20, "an ack from every lamp of the group")
    finally:
        network_server.stop()
        edge.stop(end_session=True)
        observability.shutdown()
    assert {a.device.dev_eui for a in acks.acks} == {d.dev_eui for d in members}
    assert all(a.queue_item_id == command.command_id and a.acknowledged for a in acks.acks)
    executed = {(e.dev_eui, e.command_id) for e in network_server.executions()}
    assert executed == {(d.dev_eui, command.command_id) for d in members}
