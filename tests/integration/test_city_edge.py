"""The simulated city through the real broker to the edge: every uplink decoded, traced, counted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridges.edge import Edge
from bridges.sinks import MemorySink
from cluster.config import load_config
from cluster.mosquitto_local import LocalMosquitto
from cluster.observability import setup_observability
from fleet.network_server import NetworkServer
from fleet.population import build_city
from fleet.sim_clock import SimClock
from tests.integration.test_edge import wait_for

pytestmark = pytest.mark.integration

ROUNDS = 3


@pytest.mark.timeout(60)
def test_edge_decodes_every_uplink_of_a_small_city(mqtt_broker: LocalMosquitto) -> None:
    config = load_config(
        overrides={
            "city.scale": 0.002,
            "mqtt.port": mqtt_broker.port,
            "edge.post": "city-edge",
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
