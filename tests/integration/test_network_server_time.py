"""The simulated network server's time against a real mosquitto: uplinks carry the time their
device spoke however late they go, what is due while the broker is away is lost (and does not
burst out after), and a gateway set down publishes nothing of its devices."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from bridges.chirpstack import parse_uplink
from citypost.config import SimConfig
from cluster.mosquitto_local import LocalMosquitto
from fleet.network_server import NetworkServer
from fleet.population import City
from tests.integration.test_network_server import START, Recorder, _server, city, recorder

pytestmark = pytest.mark.integration

__all__ = ["city", "recorder"]  # fixtures, shared with test_network_server

UPLINKS = "application/+/device/+/event/up"


def _spy_pops(ns: NetworkServer) -> list[tuple[int, float, float]]:
    """Every uplink the scheduler takes off its schedule: (device, due, simulated now)."""
    pops: list[tuple[int, float, float]] = []
    schedule = ns._schedule
    pop_due = schedule.pop_due

    def spy(now: float) -> tuple[int, float] | None:
        popped = pop_due(now)
        if popped is not None:
            pops.append((popped[0], popped[1], now))
        return popped

    schedule.pop_due = spy  # type: ignore[method-assign]
    return pops


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _uplinks(rec: Recorder, since: float = 0.0) -> list[Any]:
    with rec._cond:
        return [
            parse_uplink(p) for t, p, at in rec.messages if t.endswith("event/up") and at >= since
        ]


@pytest.mark.timeout(60)
def test_uplinks_held_back_by_the_cap_carry_their_due_time_not_the_publish_instant(
    city: City, mqtt_broker: LocalMosquitto, recorder: Recorder
) -> None:
    # ~120 uplinks due per real second at x600, 5 allowed: a backlog from the start.
    sim = SimConfig(speed=600.0, start=START, max_uplinks_per_s=5.0)
    ns = _server(city, mqtt_broker, sim)
    pops = _spy_pops(ns)
    ns.start()
    try:
        recorder.wait_for(lambda m: sum(t.endswith("event/up") for t, _, _ in m) >= 40, 30)
    finally:
        ns.stop()
    stats = ns.stats()
    ups = _uplinks(recorder)
    assert stats.lost == 0 and stats.uplinks == len(pops)
    # The k-th uplink a device sent is its k-th pop (f_cnt counts from 0).
    due_of: dict[tuple[str, int], tuple[float, float]] = {}
    seen: dict[int, int] = {}
    for i, due, now in pops:
        k = seen.get(i, 0)
        seen[i] = k + 1
        due_of[city.devices[i].device.dev_eui, k] = (due, now)
    late = 0
    for up in ups:
        due, published_at = due_of[up.device.dev_eui, up.f_cnt]
        assert up.time_ms == int(due * 1000)
        late += published_at - due > 60.0  # a minute or more of simulated time late
    assert late > len(ups) / 2
    assert stats.lag_max_s > 600.0


@pytest.mark.timeout(90)
def test_uplinks_due_while_the_broker_is_away_are_lost_and_none_burst_out_after(
    city: City, fresh_broker: Callable[..., LocalMosquitto]
) -> None:
    broker = fresh_broker()
    # ~120 uplinks a real second, well under the cap: a backlog would go out at once.
    speed = 600.0
    sim = SimConfig(speed=speed, start=START, max_uplinks_per_s=2000.0)
    ns = _server(city, broker, sim)
    rec = Recorder(broker.host, broker.port, [UPLINKS])
    rec.client.reconnect_delay_set(min_delay=1, max_delay=1)
    ns.start()
    try:
        rec.wait_for(lambda m: len(m) >= 50, 20)
        broker.stop()
        stopped_at = ns.clock.now_ts()
        _wait(lambda: not ns.stats().connected, 10, "the network server to see the broker go")
        time.sleep(3.0)
        broker.start()
        restarted_at = ns.clock.now_ts()  # nothing could be published before this
        _wait(lambda: ns.stats().connected, 30, "the network server to reconnect")
        reconnected = time.monotonic()
        published = ns.stats().uplinks
        time.sleep(1.0)
        first_second = ns.stats().uplinks - published
        lost = ns.stats().lost_disconnected
        # The recorder is back too, and sees the city go on.
        rec.wait_for(lambda m: any(at > reconnected + 1.0 for *_, at in m), 20)
        time.sleep(1.0)
    finally:
        ns.stop()
        rec.stop()
    away_s = restarted_at - stopped_at
    per_sim_s = sum(1 / d.behaviour.interval_s for d in city.devices)
    assert lost > 0.5 * per_sim_s * away_s  # ~120 a real second for 3 s or more
    # No backlog: the first second after the reconnect is like any other second.
    assert first_second < 2 * per_sim_s * speed + 50
    # Nothing due while it was away went out after (a margin for the moment it took to
    # notice, when a publish could still go into paho's queue).
    margin = 0.5 * speed
    after = _uplinks(rec, since=reconnected)
    assert after
    assert not [u for u in after if stopped_at + margin < u.time_ms / 1000 < restarted_at]


@pytest.mark.timeout(90)
def test_a_gateway_set_down_publishes_nothing_through_it_and_loses_what_only_it_hears(
    city: City, mqtt_broker: LocalMosquitto, recorder: Recorder
) -> None:
    sim = SimConfig(speed=3600.0, start=START, max_uplinks_per_s=400.0)
    ns = _server(city, mqtt_broker, sim)
    gateways = ns.gateway_ids()
    gateway = max(gateways, key=lambda g: gateways[g])
    lorawan = [d for d in city.devices if d.radio is not None]
    best = {d.device.dev_eui for d in lorawan if d.radio and d.radio.gateway_id == gateway}
    assert len(best) == gateways[gateway] > 1
    # The device heard by the fewest gateways: all of them down, nobody hears it.
    alone = min(lorawan, key=lambda d: len(d.radio.gateways) if d.radio else 0)
    assert alone.radio is not None
    ns.set_gateway_down(gateway, True)
    for g in alone.radio.gateways:
        ns.set_gateway_down(g, True)
    others = {d.device.dev_eui for d in city.devices} - {alone.device.dev_eui}
    ns.start()
    try:

        def others_twice(messages: list[tuple[str, bytes, float]]) -> bool:
            counts: dict[str, int] = {}
            for t, _, _ in messages:
                if t.endswith("event/up"):
                    counts[t.split("/")[3]] = counts.get(t.split("/")[3], 0) + 1
            return set(counts) >= others and min(counts[e] for e in others) >= 2

        recorder.wait_for(others_twice, timeout=45)
        lost_at = alone.radio.gateway_id
        _wait(lambda: lost_at in ns.stats().lost_gateway_down, 20, "a lost uplink")
        stats = ns.stats()
        ups = _uplinks(recorder)
        down = set(stats.gateways_down)
        assert gateway in down and not {u.gateway_id for u in ups} & down
        assert alone.device.dev_eui not in {u.device.dev_eui for u in ups}
        assert stats.rerouted_gateway_down[gateway] >= len(best - {alone.device.dev_eui})
        assert stats.lost_disconnected == 0
        for g in down:
            ns.set_gateway_down(g, False)
        back = time.monotonic()
        recorder.wait_for(
            lambda _m: alone.device.dev_eui in {u.device.dev_eui for u in _uplinks(recorder, back)},
            30,
        )
        assert ns.stats().gateways_down == ()
    finally:
        ns.stop()
