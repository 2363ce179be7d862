"""fleet.faults: the simulated city's real faults, read from its behaviours' state."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from citypost.config import CityConfig
from fleet import behaviours, faults
from fleet.behaviours import Behaviour, Bollard, Camera, StreetLamp, TrafficSignal, WaterMeter
from fleet.population import City, build_city
from protos.citypost.v1 import assets_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
B = TypeVar("B", bound=Behaviour)
HOUR = timedelta(hours=1)


@pytest.fixture
def city() -> City:
    return build_city(CityConfig(scale=0.002, seed=7))


def first(city: City, cls: type[B]) -> tuple[str, B]:
    for sim in city.devices:
        if isinstance(sim.behaviour, cls):
            return sim.device.dev_eui, sim.behaviour
    raise AssertionError(f"no {cls.__name__} in the city")


def read(behaviour: Behaviour, at: datetime, seed: int = 0) -> None:
    behaviour.reading(at, random.Random(seed))


def state(city: City) -> list[dict[str, object]]:
    """Every behaviour's attributes, to show that asking changes nothing."""
    out = []
    for sim in city.devices:
        b = sim.behaviour
        slots = [s for cls in type(b).__mro__ for s in getattr(cls, "__slots__", ())]
        out.append({s: getattr(b, s) for s in slots if hasattr(b, s)})
    return out


def test_welfare_episodes_are_planned_from_the_meter_s_first_reading(city: City) -> None:
    eui, meter = next(
        (s.device.dev_eui, s.behaviour)
        for s in city.devices
        if isinstance(s.behaviour, WaterMeter) and s.behaviour.episodes
    )
    ((after, hours),) = meter.episodes
    week = START + timedelta(days=7)
    # Never reported: known only given the simulation's start.
    assert faults.welfare_episodes(city, START, week) == []
    (planned,) = faults.welfare_episodes(city, START, week, origin=START)
    assert planned.start == START + timedelta(seconds=after)
    # Its first reading anchors it; `origin` no longer matters.
    first_at = START + timedelta(minutes=17)
    read(meter, first_at)
    (episode,) = faults.welfare_episodes(city, START, week, origin=START - timedelta(days=3))
    assert episode.kind == "no_water_drawn" and episode.dev_eui == eui
    assert episode.asset_class == assets_pb2.WATER_METER
    assert episode.group == city.registry.get(eui).group  # type: ignore[union-attr]
    assert episode.start == first_at + timedelta(seconds=after)
    assert episode.end == episode.start + timedelta(seconds=hours)
    assert episode.start.tzinfo is UTC
    # Between two instants: what overlaps them, and nothing else.
    assert faults.welfare_episodes(city, START, episode.start) == []
    assert faults.welfare_episodes(city, episode.end, week) == []
    just_in = episode.start + timedelta(seconds=1)
    assert faults.welfare_episodes(city, episode.start - HOUR, just_in) == [episode]
    assert episode.active_at(episode.start) and not episode.active_at(episode.end)
    naive = faults.welfare_episodes(city, START.replace(tzinfo=None), week.replace(tzinfo=None))
    assert naive == [episode]  # naive datetimes are UTC


def test_a_lamp_fault_counts_from_the_reading_that_shows_it_and_lasts(city: City) -> None:
    eui, lamp = first(city, StreetLamp)
    read(lamp, START)
    assert faults.lamp_faults(city, START, START + HOUR) == []
    lamp.fault = True  # as a test or a chaos scenario would
    read(lamp, START + HOUR)
    read(lamp, START + 2 * HOUR)  # still the same fault
    (fault,) = faults.lamp_faults(city, START, START + 3 * HOUR)
    assert (fault.kind, fault.dev_eui, fault.start, fault.end) == (
        "lamp_fault",
        eui,
        START + HOUR,
        None,
    )
    assert faults.lamp_faults(city, START + timedelta(days=30), START + timedelta(days=31)) == [
        fault
    ]
    assert faults.lamp_faults(city, START, START + HOUR) == []  # not yet then


def test_a_lamp_that_fails_by_itself_records_when(
    city: City, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, lamp = first(city, StreetLamp)
    monkeypatch.setattr(behaviours, "LAMP_FAULT_P", 1.0)
    read(lamp, START)
    assert lamp.fault and lamp.fault_since == START.timestamp()


def test_camera_outages_are_remembered_with_their_end(
    city: City, monkeypatch: pytest.MonkeyPatch
) -> None:
    eui, camera = first(city, Camera)
    monkeypatch.setattr(behaviours, "CAMERA_OUTAGE_P", 1.0)
    read(camera, START)
    monkeypatch.setattr(behaviours, "CAMERA_OUTAGE_P", 0.0)
    (outage,) = camera.outages
    assert outage[0] == START.timestamp() and outage[1] == camera.offline_until
    later = datetime.fromtimestamp(camera.offline_until, UTC) + timedelta(hours=5)
    read(camera, later)  # back online
    monkeypatch.setattr(behaviours, "CAMERA_OUTAGE_P", 1.0)
    read(camera, later + timedelta(minutes=1))  # a second outage
    found = faults.camera_outages(city, START, later + timedelta(days=1))
    assert [f.kind for f in found] == ["camera_offline"] * 2
    assert {f.dev_eui for f in found} == {eui}
    assert found[0].start == START and found[0].end == datetime.fromtimestamp(outage[1], UTC)
    assert found[1].start == later + timedelta(minutes=1)
    # Between the two: none.
    assert faults.camera_outages(city, found[0].end, found[1].start) == []  # type: ignore[arg-type]


def test_an_outage_set_by_hand_counts_from_its_first_reading(city: City) -> None:
    _, camera = first(city, Camera)
    camera.offline_until = (START + 2 * HOUR).timestamp()
    read(camera, START + HOUR)
    (outage,) = faults.camera_outages(city, START, START + 3 * HOUR)
    assert (outage.start, outage.end) == (START + HOUR, START + 2 * HOUR)


def test_signal_faults_and_bollard_faults(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    sig_eui, signal = first(city, TrafficSignal)
    monkeypatch.setattr(behaviours, "SIGNAL_FAULT_P", 1.0)
    read(signal, START)
    (fault,) = faults.signal_faults(city, START, START + HOUR)
    assert (fault.kind, fault.dev_eui, fault.start) == ("signal_fault", sig_eui, START)
    assert fault.end == datetime.fromtimestamp(signal.fault_until, UTC)
    assert timedelta(hours=2) <= fault.end - fault.start <= timedelta(hours=8)

    bol_eui, bollard = first(city, Bollard)
    monkeypatch.setattr(behaviours, "BOLLARD_FAULT_P", 1.0)
    read(bollard, START + HOUR)
    (jammed,) = faults.bollard_faults(city, START, START + 2 * HOUR)
    assert (jammed.kind, jammed.dev_eui, jammed.start, jammed.end) == (
        "bollard_fault",
        bol_eui,
        START + HOUR,
        None,
    )


def test_leaks_are_ground_truth_too(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    eui, meter = next(
        (s.device.dev_eui, s.behaviour)
        for s in city.devices
        if isinstance(s.behaviour, WaterMeter) and not s.behaviour.episodes
    )
    read(meter, START)
    monkeypatch.setattr(behaviours, "LEAK_START_P", 1.0)
    read(meter, START + HOUR)
    (leak,) = faults.water_leaks(city, START, START + 2 * HOUR)
    assert leak.kind == "water_leak" and leak.dev_eui == eui
    assert leak.end is not None
    assert timedelta(days=1) <= leak.end - leak.start <= timedelta(days=4)


def test_real_faults_gathers_every_kind_in_order_and_refuses_unknown_kinds(
    city: City, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, lamp = first(city, StreetLamp)
    _, signal = first(city, TrafficSignal)
    monkeypatch.setattr(behaviours, "SIGNAL_FAULT_P", 1.0)
    read(signal, START + 2 * HOUR)
    lamp.fault = True
    read(lamp, START + HOUR)
    window = (START, START + timedelta(days=3))
    found = faults.real_faults(city, *window, origin=START)
    assert [f.kind for f in found][:2] == ["lamp_fault", "signal_fault"]
    assert "no_water_drawn" in {f.kind for f in found}
    assert [f.start for f in found] == sorted(f.start for f in found)
    only = faults.real_faults(city, *window, kinds=["signal_fault"])
    assert [f.kind for f in only] == ["signal_fault"]
    with pytest.raises(ValueError, match="unknown"):
        faults.real_faults(city, *window, kinds=["meteor_strike"])


def test_asking_changes_nothing_and_draws_nothing(city: City) -> None:
    clock = START
    rng = random.Random(4)
    for _ in range(3):
        for sim in city.devices:
            sim.behaviour.reading(clock, rng)
        clock += timedelta(minutes=15)
    before = state(city)
    checks: list[Callable[[], object]] = [
        lambda: faults.real_faults(city, START, clock, origin=START),
        lambda: faults.welfare_episodes(city, START, clock),
    ]
    for check in checks:
        check()
    assert state(city) == before
