"""The storm's messages against the edge's real router: each refused for the reason it claims."""

from __future__ import annotations

import random

import paho.mqtt.client as mqtt
import pytest

from bridges.edge import UPLINK_FILTER
from bridges.registry import DeviceRegistry
from bridges.router import UplinkRouter
from chaos.scenarios import Storm
from chaos.storm import (
    MIN_MAX_MESSAGE_BYTES,
    REASON,
    Malformation,
    StormFactory,
    StormMessage,
    StormPublisher,
)
from citypost.config import CityConfig, EdgeConfig, MqttConfig
from citypost.errors import (
    ConfigError,
    DeadLetterReason,
    DecodeError,
    InvalidArgumentError,
)
from fleet.population import City, build_city
from protos.citypost.v1 import assets_pb2

pytestmark = pytest.mark.unit

CITY: City = build_city(CityConfig(scale=0.002, seed=3))
DEVICES = [d.device for d in CITY.devices]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _factory(seed: int = 1, edge: EdgeConfig | None = None, factor: float = 4.0) -> StormFactory:
    return StormFactory(
        random.Random(seed), devices=DEVICES, edge=edge or EdgeConfig(), oversized_factor=factor
    )


def _router(edge: EdgeConfig | None = None) -> UplinkRouter:
    return UplinkRouter(CITY.registry, edge or EdgeConfig(), lambda: T0)


def _refusal(router: UplinkRouter, message: StormMessage) -> DeadLetterReason:
    with pytest.raises(DecodeError) as caught:
        router.route(message.topic, message.payload)
    return caught.value.reason


def test_every_reason_the_edge_tells_apart_is_covered() -> None:
    factory = _factory()
    covered = {REASON[k] for k in (*factory.kinds, Malformation.OVERSIZED)}
    # INTERNAL_ERROR is a bug of the edge, not something a message can ask for;
    # BAD_SIGNATURE and UNCONFIRMED_EPOCH are the gate's (what posts hand it), not the edge's.
    assert covered == set(DeadLetterReason) - {
        DeadLetterReason.INTERNAL_ERROR,
        DeadLetterReason.BAD_SIGNATURE,
        DeadLetterReason.UNCONFIRMED_EPOCH,
    }
    assert set(REASON) == set(Malformation)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_malformed_message_is_refused_for_its_reason(seed: int) -> None:
    factory, router = _factory(seed), _router()
    seen: set[Malformation] = set()
    for i in range(600):
        message = factory.malformed(T0 + i)
        assert _refusal(router, message) is message.reason, message
        assert message.reason is REASON[message.kind]
        assert len(message.payload) <= EdgeConfig().max_message_bytes
        seen.add(message.kind)
    assert seen == set(factory.kinds)


def test_one_of_each_is_refused_at_the_smallest_allowed_message_bound() -> None:
    edge = EdgeConfig(max_message_bytes=MIN_MAX_MESSAGE_BYTES)
    factory, router = _factory(edge=edge, factor=1.5), _router(edge)
    for attempt in range(50):
        messages = factory.one_of_each(T0 + attempt)
        assert [m.kind for m in messages] == [*factory.kinds, Malformation.OVERSIZED]
        for message in messages:
            assert _refusal(router, message) is message.reason, message


def test_every_window_of_a_round_holds_every_kind() -> None:
    factory = _factory()
    n = len(factory.kinds)
    for start in range(0, 10 * n, n):
        window = {factory.malformed(T0 + start + i).kind for i in range(n)}
        assert window == set(factory.kinds)


@pytest.mark.parametrize("factor", [1.01, 4.0])
def test_oversized_messages_exceed_the_bound_by_the_factor(factor: float) -> None:
    edge = EdgeConfig(max_message_bytes=4096)
    factory, router = _factory(edge=edge, factor=factor), _router(edge)
    for i in range(20):
        message = factory.oversized(T0 + i)
        assert message.kind is Malformation.OVERSIZED
        assert message.reason is DeadLetterReason.OVERSIZED
        assert len(message.payload) > edge.max_message_bytes
        assert len(message.payload) >= factor * edge.max_message_bytes
        assert _refusal(router, message) is DeadLetterReason.OVERSIZED


def test_topics_match_the_edges_uplink_subscription() -> None:
    factory = _factory()
    messages = [factory.malformed(T0 + i) for i in range(300)] + [factory.oversized(T0)]
    for message in messages:
        assert mqtt.topic_matches_sub(UPLINK_FILTER, message.topic), message.topic
        assert not any(c in message.topic for c in "+#\0")


def test_deterministic_under_a_seed() -> None:
    def run(seed: int) -> list[StormMessage]:
        factory = _factory(seed)
        return [factory.malformed(T0 + i) for i in range(100)] + [factory.oversized(T0)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_without_lorawan_devices_no_frame_is_too_long_for_the_air() -> None:
    ip_only = [d for d in DEVICES if d.transport == assets_pb2.IP]
    assert ip_only
    factory = StormFactory(
        random.Random(1), devices=ip_only, edge=EdgeConfig(), oversized_factor=2.0
    )
    assert Malformation.LORA_TOO_LONG not in factory.kinds
    with pytest.raises(InvalidArgumentError):
        factory.make(Malformation.LORA_TOO_LONG, T0)
    router = UplinkRouter(DeviceRegistry(ip_only), EdgeConfig(), lambda: T0)
    for i in range(200):
        message = factory.malformed(T0 + i)
        assert _refusal(router, message) is message.reason


def test_bad_arguments_are_refused() -> None:
    rng = random.Random(1)
    with pytest.raises(InvalidArgumentError, match="devices"):
        StormFactory(rng, devices=[], edge=EdgeConfig(), oversized_factor=4.0)
    with pytest.raises(InvalidArgumentError, match="oversized_factor"):
        StormFactory(rng, devices=DEVICES, edge=EdgeConfig(), oversized_factor=1.0)
    with pytest.raises(InvalidArgumentError, match="max_message_bytes"):
        StormFactory(
            rng, devices=DEVICES, edge=EdgeConfig(max_message_bytes=512), oversized_factor=4.0
        )


def test_publisher_refuses_bad_settings_before_any_io() -> None:
    storm = Storm(malformed_per_s=10, oversized_per_s=1)
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        StormPublisher(MqttConfig(), CITY, storm, edge=EdgeConfig(), seed=1)
    port = MqttConfig(port=1883)
    with pytest.raises(InvalidArgumentError, match="rates"):
        StormPublisher(port, CITY, Storm(-1, 0), edge=EdgeConfig(), seed=1)
    with pytest.raises(InvalidArgumentError, match="oversized_factor"):
        StormPublisher(port, CITY, Storm(1, 1, oversized_factor=0.5), edge=EdgeConfig(), seed=1)


def test_publisher_stop_is_safe_before_start_and_twice() -> None:
    publisher = StormPublisher(
        MqttConfig(port=1883), CityConfig(scale=0.002), Storm(10, 1), edge=EdgeConfig(), seed=1
    )
    publisher.stop()
    publisher.stop()
    assert publisher.sent_by_reason() == {}
    assert publisher.sent == 0
