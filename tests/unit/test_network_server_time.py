"""The simulated network server's uplink scheduler on a fake clock and a fake MQTT session:
uplinks carry the time their device spoke, what the broker or a gateway cannot take is lost,
and the server says how far behind and how fast it really runs."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from bridges.chirpstack import build_downlink, downlink_topic, parse_uplink
from bridges.downlink_frame import COMMAND_F_PORT, encode_command
from bridges.registry import RadioClass, radio_class
from citypost.clock import SimClock
from citypost.config import CityConfig, MqttConfig, SimConfig
from citypost.errors import NotFoundError
from cluster.demo import pace_text
from fleet.network_server import FleetStats, NetworkServer
from fleet.population import City, build_city
from protos.citypost.v1 import command_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

START = datetime(2024, 1, 15, 19, 0, tzinfo=UTC)


class FakeTime:
    """Real monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.on_publish: Callable[..., None] | None = None
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self._mid += 1
        self.sent.append((topic, payload))
        if self.on_publish is not None:  # the broker acknowledges at once
            self.on_publish(None, None, self._mid, None, None)


class FakeSession:
    def __init__(self, **_kwargs: Any) -> None:
        self.client = FakeClient()
        self.connected = True

    def start(self, timeout: float = 10.0) -> None:
        pass

    def stop(self, *, end_session: bool = False) -> None:
        pass


@dataclass
class Rig:
    ns: NetworkServer
    time: FakeTime
    session: FakeSession
    pops: list[tuple[int, float, float]] = field(default_factory=list)  # (i, due, now)

    def run(self, real_s: float, *, tick: float = 0.05) -> None:
        """Drive the scheduler for real_s fake seconds: each step, then its wait (at most
        a tick, so the clock also moves while it works)."""
        end = self.time.t + real_s
        while self.time.t < end:
            wait = self.ns._step()
            self.time.t += min(max(wait, 0.001), tick)

    def uplinks(self) -> list[Any]:
        return [parse_uplink(p) for t, p in self.session.client.sent if t.endswith("event/up")]


@pytest.fixture(scope="module")
def city_config() -> CityConfig:
    return CityConfig(scale=0.001, seed=11)


def _rig(city: City, *, speed: float, cap: float) -> Rig:
    fake = FakeTime()
    sim = SimConfig(speed=speed, start=START, max_uplinks_per_s=cap)
    clock = SimClock(START, speed, fake)
    sessions: list[FakeSession] = []

    def session(**kwargs: Any) -> FakeSession:
        sessions.append(FakeSession(**kwargs))
        return sessions[-1]

    ns = NetworkServer(
        city,
        MqttConfig(host="127.0.0.1", port=1883),
        clock,
        sim,
        "dijon",
        seed=3,
        session=session,  # type: ignore[arg-type]
        monotonic=fake,
    )
    rig = Rig(ns, fake, sessions[0])
    schedule = ns._schedule
    pop_due = schedule.pop_due

    def spy(now: float) -> tuple[int, float] | None:
        popped = pop_due(now)
        if popped is not None:
            rig.pops.append((popped[0], popped[1], now))
        return popped

    schedule.pop_due = spy  # type: ignore[method-assign]
    ns._schedule_uplinks()
    return rig


def test_every_uplink_carries_the_time_its_device_spoke_however_late_it_goes(
    city_config: CityConfig,
) -> None:
    # 44 devices, ~0.2 uplinks per simulated second; at x600 that is ~120/s against a cap
    # of 3/s: the city falls far behind its clock.
    city = build_city(city_config)
    rig = _rig(city, speed=600.0, cap=3.0)
    rig.run(40.0)
    ups = rig.uplinks()
    assert len(ups) >= 60
    assert len(ups) == len(rig.pops)  # nothing lost here: the k-th pop is the k-th uplink
    late = 0
    for up, (i, due, now) in zip(ups, rig.pops, strict=True):
        assert up.device.dev_eui == city.devices[i].device.dev_eui
        assert up.time_ms == int(due * 1000)  # the due time, never the publish instant
        late += now - due > 60.0
    assert late > len(ups) / 2
    stats = rig.ns.stats()
    assert stats.lag_s > 600.0 and stats.lag_max_s >= stats.lag_s
    # Each device's times rise, and its frame counter with them.
    by_device: dict[str, list[tuple[int, int]]] = {}
    for up in ups:
        by_device.setdefault(up.device.dev_eui, []).append((up.time_ms, up.f_cnt))
    for seen in by_device.values():
        assert seen == sorted(seen)
        assert [f for _, f in seen] == list(range(len(seen)))


def test_a_city_held_back_by_its_cap_shows_its_real_speed_and_keeps_its_cadence(
    city_config: CityConfig,
) -> None:
    # Only the lamps (every 900 s): 0.038 uplinks per simulated second, 4.5/s at x120
    # against a cap of 3/s. The city runs at ~79 simulated s per real s and falls behind
    # by ~40 s every real second, less than an interval in 20 s: nobody skips an uplink.
    full = build_city(city_config)
    lamps = tuple(d for d in full.devices if type(d.behaviour).__name__ == "StreetLamp")
    city = City(full.name, full.registry, lamps)
    rig = _rig(city, speed=120.0, cap=3.0)
    rig.run(20.0)
    stats = rig.ns.stats()
    demand = len(lamps) / 900.0
    assert stats.effective_speed == pytest.approx(3.0 / demand, rel=0.15)
    assert 300.0 < stats.lag_s < 900.0
    times: dict[str, list[int]] = {}
    for up in rig.uplinks():
        times.setdefault(up.device.dev_eui, []).append(up.time_ms)
    steps = {b - a for seen in times.values() for a, b in itertools.pairwise(seen)}
    assert steps and steps <= {899_999, 900_000, 900_001}  # 900 s of its own time, exactly


def test_a_city_under_its_cap_runs_at_its_speed_and_keeps_its_cadence(
    city_config: CityConfig,
) -> None:
    city = build_city(city_config)
    rig = _rig(city, speed=600.0, cap=2000.0)
    rig.run(40.0)
    stats = rig.ns.stats()
    assert stats.effective_speed == pytest.approx(600.0, rel=0.05)
    assert stats.lag_max_s < 60.0  # a tick's worth of simulated time at most
    # A lamp reports every 900 s of its own time exactly, late or not.
    lamp = next(d for d in city.devices if type(d.behaviour).__name__ == "StreetLamp")
    times = [u.time_ms for u in rig.uplinks() if u.device.dev_eui == lamp.device.dev_eui]
    assert len(times) >= 3
    assert {b - a for a, b in itertools.pairwise(times)} <= {899_999, 900_000, 900_001}


def test_uplinks_due_while_the_broker_is_away_are_lost_and_nothing_bursts_after(
    city_config: CityConfig,
) -> None:
    city = build_city(city_config)
    rig = _rig(city, speed=600.0, cap=2000.0)
    rig.run(10.0)
    before = len(rig.uplinks())
    f_cnt = {u.device.dev_eui: u.f_cnt for u in rig.uplinks()}
    assert before > 0
    rig.session.connected = False
    away_from = rig.ns.clock.now_ts()
    rig.run(10.0)
    away_until = rig.ns.clock.now_ts()
    stats = rig.ns.stats()
    assert len(rig.uplinks()) == before  # nothing published meanwhile
    # ~0.2 uplinks per simulated second over 6,000 simulated seconds.
    assert stats.lost_disconnected > 600
    assert stats.uplinks == before and stats.lost == stats.lost_disconnected
    rig.session.connected = True
    rig.run(1.0)
    # Nothing due while the broker was away goes out after it: no backlog, no burst (the
    # first second after is like any other, ~1/10 of what was lost in 10 s).
    first_second = len(rig.uplinks()) - before
    assert 0 < first_second < 2 * stats.lost_disconnected / 10
    rig.run(9.0)
    after = rig.uplinks()[before:]
    tick_s = 0.05 * 600.0  # the last look while away was at most a tick before the end
    assert all(u.time_ms >= (away_until - tick_s) * 1000 for u in after)
    assert rig.ns.stats().lag_max_s < 60.0
    # The devices did speak meanwhile: their frame counters moved on (a gap for the posts).
    gaps = [u.f_cnt - f_cnt[u.device.dev_eui] for u in after if u.device.dev_eui in f_cnt]
    assert max(gaps) > 1
    assert away_from < away_until


def test_a_gateway_set_down_hears_nothing_and_its_devices_go_through_others_or_are_lost(
    city_config: CityConfig,
) -> None:
    city = build_city(city_config)
    rig = _rig(city, speed=600.0, cap=2000.0)
    gateways = rig.ns.gateway_ids()
    lorawan = [d for d in city.devices if d.radio is not None]
    assert sum(gateways.values()) == len(lorawan)
    gateway = max(gateways, key=lambda g: gateways[g])
    best = {d.device.dev_eui for d in lorawan if d.radio and d.radio.gateway_id == gateway}
    assert len(best) == gateways[gateway] > 1
    # Every device of this small city is heard by three gateways or more.
    assert all(d.radio and len(d.radio.gateways) >= 3 for d in lorawan)
    rig.ns.set_gateway_down(gateway, True)
    rig.run(20.0)
    stats = rig.ns.stats()
    assert stats.gateways_down == (gateway,)
    ups = rig.uplinks()
    assert ups and gateway not in {u.gateway_id for u in ups}  # nothing came through it
    rerouted = [u for u in ups if u.device.dev_eui in best]
    assert {u.device.dev_eui for u in rerouted} == best  # heard by the next gateway
    for up in rerouted:
        sim_device = city.get(up.device.dev_eui)
        radio = sim_device.radio if sim_device else None
        assert radio is not None and up.gateway_id == radio.gateways[1]
    assert stats.rerouted_gateway_down == {gateway: len(rerouted)}
    assert stats.lost == 0
    # Every gateway that hears a device down: its uplinks are lost, under its best gateway.
    device = min(lorawan, key=lambda d: len(d.radio.gateways) if d.radio else 0)
    assert device.radio is not None
    for g in device.radio.gateways:
        rig.ns.set_gateway_down(g, True)
    before = len(rig.uplinks())
    rig.run(20.0)
    eui = device.device.dev_eui
    assert eui not in {u.device.dev_eui for u in rig.uplinks()[before:]}
    stats = rig.ns.stats()
    assert stats.lost_gateway_down.get(device.radio.gateway_id, 0) >= 1
    assert stats.lost == sum(stats.lost_gateway_down.values()) and stats.lost_disconnected == 0
    for g in device.radio.gateways:
        rig.ns.set_gateway_down(g, False)
    before = len(rig.uplinks())
    rig.run(30.0)
    back = [u for u in rig.uplinks()[before:] if u.device.dev_eui == eui]
    assert back and back[0].gateway_id == device.radio.gateway_id
    assert rig.ns.stats().gateways_down == ()
    with pytest.raises(NotFoundError, match="no gateway"):
        rig.ns.set_gateway_down("ffffffffffffffff", True)


def _command(eui: str, command_id: str) -> bytes:
    command = command_pb2.Command(command_id=command_id, epoch=1)
    command.set_brightness.brightness_pct = 10.0
    return build_downlink(eui, COMMAND_F_PORT, encode_command(command), id=command_id)


def test_receive_windows_open_at_the_uplink_or_at_the_radios_present_if_it_is_later(
    city_config: CityConfig,
) -> None:
    city = build_city(city_config)
    rig = _rig(city, speed=600.0, cap=2000.0)
    i, device = next(
        (k, d)
        for k, d in enumerate(city.devices)
        if radio_class(d.device.asset_class) is RadioClass.A
    )
    eui = device.device.dev_eui
    opened: list[float] = []
    on_uplink = rig.ns._radio.on_uplink

    def spy(dev_eui: str, frequency_hz: int, now: float) -> list[Any]:
        opened.append(now)
        return on_uplink(dev_eui, frequency_hz, now)

    rig.ns._radio.on_uplink = spy  # type: ignore[method-assign]
    due = rig.ns._schedule._entries[i][0]
    # Late: the radio took a frame for it after its uplink came due, before it went out.
    rig.time.t += rig.ns.clock.real_seconds(due - rig.ns.clock.now_ts()) + 0.5
    topic = downlink_topic(device.device.application_id, eui)
    rig.ns._downlink(topic, _command(eui, str(uuid.uuid4())))
    enqueued_at = rig.ns.clock.now_ts()  # the radio's present from now on
    while not opened:
        rig.ns._step()
        rig.time.t += 0.01
    assert (i, due) in [(k, d) for k, d, _ in rig.pops]
    assert opened == [pytest.approx(enqueued_at)] and enqueued_at > due + 60
    # On time: the radio's present is older than the uplink; the windows open at it.
    next_due = rig.ns._schedule._entries[i][0]
    rig.ns._downlink(topic, _command(eui, str(uuid.uuid4())))
    assert rig.ns.clock.now_ts() < next_due
    while len(opened) < 2:
        rig.ns._step()
        rig.time.t += 0.01
    assert opened[1] == next_due


def test_the_demo_shows_the_effective_speed_and_says_when_the_city_falls_behind() -> None:
    base = FleetStats(
        connected=True,
        uplinks_by_class={},
        commands_executed=0,
        commands_duplicate=0,
        commands_stale=0,
        commands_rejected=0,
        downlinks_bad=0,
        downlinks_unknown_device=0,
        uplink_errors=0,
        outstanding=0,
        behind_s=0.0,
    )
    assert pace_text(26.0, None) == ("x26", None)
    assert pace_text(26.0, base) == ("x26", None)  # not measured yet
    on_time = FleetStats(**{**base.__dict__, "effective_speed": 25.7, "lag_s": 24.0})
    assert pace_text(26.0, on_time) == ("x26 (effective x25.7, 0.4 min behind)", None)
    behind = FleetStats(
        **{
            **base.__dict__,
            "effective_speed": 3.2,
            "lag_s": 190.0,
            "lost_disconnected": 12,
            "lost_gateway_down": {"0016c001f1000001": 5},
            "rerouted_gateway_down": {"0016c001f1000001": 40},
            "gateways_down": ("0016c001f1000001",),
        }
    )
    text, warning = pace_text(26.0, behind)
    assert text.startswith("x26 (effective x3.2, 3.2 min behind)")
    assert "12 uplinks lost while the broker was away" in text
    assert "gateway 0016c001f1000001 (down): 5 lost, 40 heard by others" in text
    assert warning is not None and "3.2 MIN OF SIMULATED TIME BEHIND" in warning
