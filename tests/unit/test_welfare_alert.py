"""The welfare alert end to end through the simulated water meters.

A volunteer's household stops drawing water for a planned episode (a fall, a stay in
hospital); the others keep their daily pattern, quiet nights included. The readings
are built by the real behaviour and uplink factory (ChirpStack JSON), decoded by the
edge's own router into telemetry, and fed to the post's water policy (the one the
actor catalog makes): one "no_water_drawn" alarm during the episode, no earlier than
8 hours outside the quiet period, cleared when water flows, and none for the others.
(No lighter test through a real broker exists for a policy: this stays a unit test.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import pytest

from actors.catalog import POLICIES
from actors.decisions import ClearAlarm, Decision, Notify, RaiseAlarm
from actors.policy import Policy
from actors.water import NO_WATER, PARIS, quiet_seconds
from bridges.router import UplinkRouter
from citypost.config import CityConfig, EdgeConfig
from fleet import behaviours, faults
from fleet.behaviours import AWAKE_GAP_S, WaterMeter
from fleet.population import City, build_city
from fleet.uplinks import UplinkFactory
from protos.citypost.v1 import assets_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

HOUR = 3600.0
QUIET = (time(23, 0), time(6, 0))  # the policy's defaults
LIMIT_S = 8 * HOUR  # no_water_hours
TICK_S = 300.0  # the post's clock ticks reach the actors between uplinks
SMALL = CityConfig(scale=0.002, seed=7)  # two water meters: one volunteer with an episode


def counted_s(start: datetime, end: datetime) -> float:
    """Seconds of [start, end) outside the quiet period, as the policy counts them."""
    return (end - start).total_seconds() - quiet_seconds(start, end, *QUIET, PARIS)


def longest_dry_s(readings: list[tuple[datetime, float]]) -> float:
    """The longest counted time between two uplinks with water drawn."""
    longest, last_wet = 0.0, None
    for at, litres in readings:
        if litres > 0:
            if last_wet is not None:
                longest = max(longest, counted_s(last_wet, at))
            last_wet = at
    return longest


def hourly(meter: WaterMeter, start: datetime, hours: int, rng: random.Random) -> Iterator:
    for k in range(hours):
        at = start + timedelta(hours=k)
        yield at, float(meter.reading(at, rng)["litres_since_last"])


# --- the behaviour ---------------------------------------------------------------------------


def test_an_episode_reads_zero_litres_hourly_for_its_duration() -> None:
    start = datetime(2026, 1, 15, 10, 23, tzinfo=UTC)
    meter = WaterMeter(usage=1.0, battery_pct=90.0, episodes=[(5 * HOUR, 20 * HOUR)])
    readings = list(hourly(meter, start, 72, random.Random(1)))
    ((begin, end),) = meter.welfare_episodes()
    assert begin == start.timestamp() + 5 * HOUR and end == begin + 20 * HOUR
    within = [litres for at, litres in readings if begin <= at.timestamp() - HOUR < end - HOUR]
    assert len(within) == 19 and set(within) == {0.0}  # every uplink covering only the episode
    # The last tap just before it, water again just after it.
    (last,) = [v for at, v in readings if at.timestamp() - HOUR < begin <= at.timestamp()]
    (again,) = [v for at, v in readings if at.timestamp() - HOUR <= end < at.timestamp()]
    assert last > 0 and again > 0
    assert longest_dry_s(readings) >= 20 * HOUR - quiet_seconds(
        datetime.fromtimestamp(begin, UTC), datetime.fromtimestamp(end, UTC), *QUIET, PARIS
    )
    # Before and after it the household keeps its pattern.
    before = [v for at, v in readings if at.timestamp() <= begin]
    assert sum(1 for litres in before if litres > 0) >= 3


def test_an_episode_is_dry_when_uplinks_come_every_two_hours() -> None:
    start = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    meter = WaterMeter(usage=1.0, battery_pct=90.0, episodes=[(6 * HOUR, 19 * HOUR)])
    rng = random.Random(2)
    readings = [
        (at, float(meter.reading(at, rng)["litres_since_last"]))
        for at in (start + timedelta(hours=2 * k) for k in range(24))
    ]
    begin, end = meter.welfare_episodes()[0]
    inside = [
        v for at, v in readings if begin <= at.timestamp() - 2 * HOUR and at.timestamp() <= end
    ]
    assert len(inside) >= 8 and set(inside) == {0.0}


@pytest.mark.parametrize(
    "start",
    [
        datetime(2026, 1, 12, 0, 17, tzinfo=UTC),
        datetime(2026, 3, 26, 0, 41, tzinfo=UTC),  # over the spring DST change (29 March)
        datetime(2026, 6, 1, 0, 59, tzinfo=UTC),
        datetime(2026, 10, 22, 0, 3, tzinfo=UTC),  # over the autumn DST change (25 October)
    ],
)
def test_normal_households_are_never_dry_for_8_hours_outside_the_quiet_period(
    start: datetime,
) -> None:
    rng = random.Random(start.month)
    worst = 0.0
    night_dry = night = 0
    for _ in range(150):
        meter = WaterMeter(usage=rng.lognormvariate(0, 0.3), battery_pct=90.0)
        readings = list(hourly(meter, start, 7 * 24, rng))
        worst = max(worst, longest_dry_s(readings))
        for at, litres in readings:
            if 2 <= at.astimezone(PARIS).hour <= 5:
                night += 1
                night_dry += litres == 0
    # A tap at least every 3 awake hours: at most ~5 h between two wet uplinks, far from 8.
    assert worst < AWAKE_GAP_S + 2.5 * HOUR < LIMIT_S
    assert night_dry / night > 0.85  # and the nights stay quiet


def test_a_leak_never_starts_in_the_days_before_an_episode_nor_during_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(behaviours, "LEAK_START_P", 1.0)
    monkeypatch.setattr(behaviours, "LEAK_DAYS", (0.1, 0.2))  # short leaks, one after another
    start = datetime(2026, 1, 15, 0, 0, tzinfo=UTC)
    meter = WaterMeter(usage=1.0, battery_pct=90.0, episodes=[(6 * 86400.0, 20 * HOUR)])
    readings = list(hourly(meter, start, 8 * 24, random.Random(3)))
    begin, end = meter.welfare_episodes()[0]
    assert meter.leaks, "leaks start outside the guarded days"
    for leak_start, _ in meter.leaks:
        assert not begin - behaviours.LEAK_DAYS[1] * 86400 <= leak_start < end
    inside = [v for at, v in readings if begin <= at.timestamp() - HOUR < end - HOUR]
    assert inside and set(inside) == {0.0}


# --- the population --------------------------------------------------------------------------


def volunteers(city: City) -> list[tuple[str, WaterMeter]]:
    return [
        (sim.device.dev_eui, sim.behaviour)
        for sim in city.devices
        if isinstance(sim.behaviour, WaterMeter) and sim.behaviour.episodes
    ]


@pytest.mark.timeout(120)
def test_the_city_has_one_volunteer_with_an_episode_at_5_percent_and_a_handful_at_full_scale() -> (
    None
):
    demo = build_city(CityConfig(scale=0.05))
    (only,) = volunteers(demo)
    ((after, hours),) = only[1].episodes
    # Early enough for a demo's 30 simulated hours to see it raised and cleared.
    assert 2 * HOUR <= after <= 6 * HOUR and 18 * HOUR <= hours <= 21 * HOUR
    full = volunteers(build_city(CityConfig()))
    assert len(full) == 5
    starts = sorted(plan.episodes[0][0] for _, plan in full)
    assert starts[-1] <= 4 * 7 * HOUR + 6 * HOUR  # over the first day and a half
    meters = sum(1 for sim in demo.devices if isinstance(sim.behaviour, WaterMeter))
    assert meters == 50  # the city's counts are as they were


def test_who_has_an_episode_and_when_is_deterministic_by_seed() -> None:
    def plans(config: CityConfig) -> list[tuple[str, tuple[tuple[float, float], ...]]]:
        return [(eui, m.episodes) for eui, m in volunteers(build_city(config))]

    assert plans(CityConfig(scale=0.05)) == plans(CityConfig(scale=0.05))
    assert plans(CityConfig(scale=0.05, seed=8)) != plans(CityConfig(scale=0.05))


# --- end to end: behaviour -> ChirpStack JSON -> the edge's decoding -> the water policy ------


@dataclass
class Run:
    city: City
    start: datetime
    decisions: list[tuple[datetime, Decision]] = field(default_factory=list)
    readings: dict[str, list[tuple[datetime, telemetry_pb2.Telemetry]]] = field(
        default_factory=dict
    )

    def alarms(self, eui: str, kind: type[Decision]) -> list[tuple[datetime, Decision]]:
        return [
            (at, d)
            for at, d in self.decisions
            if isinstance(d, kind) and getattr(d, "originator", None) == eui
        ]


def run_meters(city: City, start: datetime, hours: int, seed: int) -> Run:
    """Every water meter of the city for `hours` simulated hours from `start`: uplinks at
    the hour after a staggered first one (as the network server does), decoded and fed to
    one policy per group, with clock ticks in between."""
    rng = random.Random(seed)
    factory = UplinkFactory(city, city.name, rng)
    now_ms = [0]
    router = UplinkRouter(city.registry, EdgeConfig(), lambda: now_ms[0])
    meters = [i for i, sim in enumerate(city.devices) if isinstance(sim.behaviour, WaterMeter)]
    policies: dict[str, Policy] = {
        group: POLICIES[assets_pb2.WATER_METER](group, members)
        for (cls, group), members in city.registry.groups().items()
        if cls == assets_pb2.WATER_METER
    }
    t0 = start.timestamp()
    phases = {i: rng.uniform(0, HOUR) for i in meters}
    events = [(t0 + phases[i] + k * HOUR, i) for i in meters for k in range(hours)]
    events += [(t0 + k * TICK_S, -1) for k in range(int(hours * HOUR / TICK_S))]
    run = Run(city, start)
    for ts, i in sorted(events):
        at = datetime.fromtimestamp(ts, UTC)
        now_ms[0] = int(ts * 1000)
        if i < 0:
            for policy in policies.values():
                run.decisions += [(at, d) for d in policy.on_tick(at)]
            continue
        topic, payload, cls = factory.uplink(i, ts)
        assert cls == "water_meter"
        telemetry = router.route(topic, payload)
        assert telemetry.observed_at_ms == int(ts * 1000)
        run.readings.setdefault(telemetry.dev_eui, []).append((at, telemetry))
        run.decisions += [(at, d) for d in policies[telemetry.group].on_telemetry([telemetry], at)]
    return run


@pytest.mark.parametrize(
    "start",
    [
        datetime(2026, 1, 15, 12, 0, tzinfo=UTC),  # the episode runs through the night
        datetime(2026, 1, 15, 20, 0, tzinfo=UTC),  # it begins in the quiet period
        datetime(2026, 7, 2, 3, 30, tzinfo=UTC),  # summer time, from the early morning
    ],
)
def test_one_alarm_during_the_episode_cleared_when_water_flows_none_for_the_others(
    start: datetime,
) -> None:
    city = build_city(SMALL)
    ((volunteer, meter),) = volunteers(city)
    hours = 72
    run = run_meters(city, start, hours, seed=int(start.timestamp()))
    end = start + timedelta(hours=hours)

    # The ground truth: one episode, the volunteer's.
    (episode,) = faults.welfare_episodes(city, start, end)
    assert episode.dev_eui == volunteer and episode.kind == NO_WATER
    assert episode.end is not None and episode.end < end

    # On the wire: 0 litres for every uplink covering only the episode.
    within = [
        t.water_meter.litres_since_last
        for at, t in run.readings[volunteer]
        if episode.start <= at - timedelta(hours=1) and at <= episode.end
    ]
    assert len(within) >= 16 and set(within) == {0.0}

    # One alarm, once 8 hours outside the quiet period have passed in the episode (at the
    # next uplink or tick, an hour's uplink granularity at most), before it ends.
    ((raised_at, raised),) = run.alarms(volunteer, RaiseAlarm)
    assert isinstance(raised, RaiseAlarm) and raised.type == NO_WATER
    assert episode.start < raised_at < episode.end
    assert LIMIT_S <= counted_s(episode.start, raised_at) <= LIMIT_S + HOUR + TICK_S
    # Cleared by the first uplink after it: water flows again.
    ((cleared_at, cleared),) = run.alarms(volunteer, ClearAlarm)
    assert isinstance(cleared, ClearAlarm) and cleared.type == NO_WATER
    assert episode.end < cleared_at <= episode.end + timedelta(hours=1)
    # The relatives are told once at each end.
    notes = [(at, d) for at, d in run.decisions if isinstance(d, Notify)]
    assert [at for at, _ in notes] == [raised_at, cleared_at]

    # The other meter, over the same days: its pattern, and no alarm at all.
    others = [eui for eui in run.readings if eui != volunteer]
    assert others
    for eui in others:
        assert run.alarms(eui, RaiseAlarm) == []
        readings = [(at, t.water_meter.litres_since_last) for at, t in run.readings[eui]]
        assert longest_dry_s(readings) < LIMIT_S
        assert sum(1 for _, litres in readings if litres > 0) > hours / 3
    assert meter.origin_ts is not None  # anchored at its first reading, in the first hour
    assert start.timestamp() <= meter.origin_ts < start.timestamp() + HOUR


@pytest.mark.timeout(120)
def test_a_week_of_the_demo_city_raises_exactly_the_real_episodes() -> None:
    city = build_city(CityConfig(scale=0.05))
    start = datetime(2026, 2, 9, 9, 0, tzinfo=UTC)
    hours = 7 * 24
    run = run_meters(city, start, hours, seed=5)
    truth = faults.welfare_episodes(city, start, start + timedelta(hours=hours))
    raised = [
        (at, d) for at, d in run.decisions if isinstance(d, RaiseAlarm) and d.type == NO_WATER
    ]
    # Precision and recall of 1: one alarm per real episode, within it, none elsewhere.
    assert len(truth) == 1 and len(raised) == 1
    ((at, alarm),) = raised
    (episode,) = truth
    assert alarm.originator == episode.dev_eui
    assert episode.end is not None and episode.start < at < episode.end
