"""Ground truth: which faults the simulated city really had, to score the post's alarms.

Pure: it reads the behaviours' state, never changes it and never draws a random number,
so a benchmark may ask as often as it likes without changing the city. Ask from the
thread that drives the behaviours (the network server holds its lock while they read),
or accept an answer one uplink old: a behaviour replaces its histories whole, so a
reader never sees half of one.

Every function takes the `City` and a window [start, end) of simulated time (aware
datetimes; a naive one is taken as UTC) and returns the `Fault`s that were real at some
instant of it, sorted by start, then kind, then devEui:

- "no_water_drawn": a volunteer's welfare episode (a fall, an illness, a stay in
  hospital), planned by the population (fleet.population.WELFARE_SHARE). From `start`
  to `end` nobody opens a tap, so every uplink whose span lies within reads 0 litres;
  the last tap before it is opened just before `start`, the first after it just after
  `end`. The post can only see it once `no_water_hours` (8) outside its quiet period
  (23:00-06:00, Paris) have passed since `start`, to within one uplink (an hour).
  Episodes are counted from the meter's first reading, which the network server puts
  within one reporting interval of the simulation's start: ask with `origin` (the
  simulation's start) for meters that have not reported yet, or they are left out.
  Unlike the faults below, episodes are planned: they are returned before they happen.
- "water_leak": a leak at a volunteer's home (1 to 4 days of continuous flow); the meter
  flags it after LEAK_FLAG_AFTER_H hours of flow without a pause.
- "lamp_fault": a failed lamp driver; it stays failed (nobody repairs lamps in the
  simulation): `end` is None.
- "camera_offline": a camera outage (10 to 120 minutes): the camera says it is offline.
- "signal_fault": a junction controller in fault (2 to 8 hours), flashing amber.
- "bollard_fault": a jammed bollard; it stays jammed: `end` is None.

A kind is the type of the alarm the post should raise for it. A fault starts at the
first reading that showed it (one set by hand, by a test or a chaos scenario, too), so
nothing is known of a device before its first reading; a behaviour remembers its latest
`fleet.behaviours.HISTORY` outages, faults or leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from bridges.registry import Device
from fleet import environment as env
from fleet.behaviours import (
    Behaviour,
    Bollard,
    Camera,
    Span,
    StreetLamp,
    TrafficSignal,
    WaterMeter,
)
from fleet.population import City
from protos.citypost.v1 import assets_pb2

NO_WATER_DRAWN = "no_water_drawn"
WATER_LEAK = "water_leak"
LAMP_FAULT = "lamp_fault"
CAMERA_OFFLINE = "camera_offline"
SIGNAL_FAULT = "signal_fault"
BOLLARD_FAULT = "bollard_fault"
KINDS = (NO_WATER_DRAWN, WATER_LEAK, LAMP_FAULT, CAMERA_OFFLINE, SIGNAL_FAULT, BOLLARD_FAULT)

B = TypeVar("B", bound=Behaviour)


@dataclass(frozen=True, slots=True)
class Fault:
    """One real fault of one device."""

    kind: str  # the alarm type the post should raise: one of KINDS
    dev_eui: str
    asset_class: assets_pb2.AssetClass.ValueType
    group: str
    start: datetime  # simulated, aware UTC
    end: datetime | None  # exclusive; None: lasts until repaired, which nothing does yet

    def active_at(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """True when it was real at some instant of [start, end)."""
        return self.start < end and (self.end is None or self.end > start)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(at: datetime) -> float:
    return env.timestamp(at)


def _aware(at: datetime) -> datetime:
    """A naive datetime is UTC (as fleet.environment takes it)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _fault(kind: str, device: Device, start: float, end: float | None) -> Fault:
    return Fault(
        kind,
        device.dev_eui,
        device.asset_class,
        device.group,
        _at(start),
        None if end is None else _at(end),
    )


def _collect(
    city: City,
    kind: str,
    cls: type[B],
    spans: Callable[[B], Iterable[tuple[float, float | None]]],
    start: datetime,
    end: datetime,
) -> list[Fault]:
    start, end = _aware(start), _aware(end)
    # Compared as datetimes, as the caller will: a float and its datetime differ by rounding.
    made = (
        _fault(kind, sim.device, s, e)
        for sim in city.devices
        if isinstance(sim.behaviour, cls)
        for s, e in spans(sim.behaviour)
    )
    found = [fault for fault in made if fault.overlaps(start, end)]
    return sorted(found, key=_order)


def _order(fault: Fault) -> tuple[datetime, str, str]:
    return fault.start, fault.kind, fault.dev_eui


def welfare_episodes(
    city: City, start: datetime, end: datetime, *, origin: datetime | None = None
) -> list[Fault]:
    """ "no_water_drawn": the volunteers' welfare episodes overlapping [start, end).

    A meter that has not reported yet counts its episodes from `origin` (the simulation's
    start); without one it is left out."""
    base = None if origin is None else _ts(origin)

    def spans(meter: WaterMeter) -> tuple[Span, ...]:
        return meter.welfare_episodes(base)

    return _collect(city, NO_WATER_DRAWN, WaterMeter, spans, start, end)


def water_leaks(city: City, start: datetime, end: datetime) -> list[Fault]:
    """ "water_leak": leaks at volunteers' homes overlapping [start, end)."""
    return _collect(city, WATER_LEAK, WaterMeter, lambda meter: meter.leaks, start, end)


def lamp_faults(city: City, start: datetime, end: datetime) -> list[Fault]:
    """ "lamp_fault": failed lamps whose fault began before `end` (they stay failed)."""
    return _collect(city, LAMP_FAULT, StreetLamp, _since, start, end)


def camera_outages(city: City, start: datetime, end: datetime) -> list[Fault]:
    """ "camera_offline": camera outages overlapping [start, end)."""
    return _collect(city, CAMERA_OFFLINE, Camera, lambda camera: camera.outages, start, end)


def signal_faults(city: City, start: datetime, end: datetime) -> list[Fault]:
    """ "signal_fault": junction controllers in fault during [start, end)."""
    return _collect(city, SIGNAL_FAULT, TrafficSignal, lambda signal: signal.faults, start, end)


def bollard_faults(city: City, start: datetime, end: datetime) -> list[Fault]:
    """ "bollard_fault": jammed bollards whose fault began before `end` (they stay jammed)."""
    return _collect(city, BOLLARD_FAULT, Bollard, _since, start, end)


def real_faults(
    city: City,
    start: datetime,
    end: datetime,
    *,
    origin: datetime | None = None,
    kinds: Collection[str] = KINDS,
) -> list[Fault]:
    """Every fault of the given kinds (all by default) real at some instant of [start, end)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"kinds: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
    found: list[Fault] = []
    for kind in kinds:
        if kind == NO_WATER_DRAWN:
            found += welfare_episodes(city, start, end, origin=origin)
        else:
            found += _BY_KIND[kind](city, start, end)
    return sorted(found, key=_order)


def _since(b: StreetLamp | Bollard) -> Iterator[tuple[float, None]]:
    """A lasting fault: from when it began, with no end."""
    if b.fault_since is not None:
        yield b.fault_since, None


_BY_KIND: dict[str, Callable[[City, datetime, datetime], list[Fault]]] = {
    WATER_LEAK: water_leaks,
    LAMP_FAULT: lamp_faults,
    CAMERA_OFFLINE: camera_outages,
    SIGNAL_FAULT: signal_faults,
    BOLLARD_FAULT: bollard_faults,
}
