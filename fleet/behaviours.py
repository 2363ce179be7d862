"""One behaviour per asset class: what a simulated device reports, and how it obeys.

Pure: simulated time and a seeded `random.Random` in, a reading dict out (keys
are the field names of the class's layout in bridges/layouts.py, values rounded
to the wire resolution). Behaviours keep a little state between readings
(commanded levels, faults, a bus's delay), and never do I/O, so a day of the
city can be replayed in a unit test. They remember when their faults began (and
their latest outages), which fleet.faults reads as the city's ground truth.

`interval_s` is the nominal simulated time between uplinks; `next_delay_s`
may shorten it (a parking sensor reports on change). Classes that take
commands implement `accepts` (is this command meant for me and in range?) and
`apply` (do it; True when done).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from bridges.downlink_frame import DeviceCommand, LampProfile, profile_problem
from fleet import environment as env
from fleet.geo import LatLon, Route, bearing_deg, move_towards, offset
from protos.citypost.v1 import telemetry_pb2

Reading = dict[str, float | int | bool]

SignalPhase = telemetry_pb2.SignalPhase
BollardPosition = telemetry_pb2.BollardPosition
CameraEvent = telemetry_pb2.CameraEvent

# Readings are computed over the time since the previous one, but never over more
# than this: a device switched off for a week does not report a week's water at once.
_MAX_ELAPSED_S = 6 * 3600.0


# Faults a behaviour remembers, for the ground truth (fleet.faults): the latest ones.
HISTORY = 32

Span = tuple[float, float]  # (start, end) simulated POSIX seconds


def _remember(history: tuple[Span, ...], span: Span) -> tuple[Span, ...]:
    """The history with one more (start, end), the oldest dropped past HISTORY. A new tuple
    each time: a reader on another thread sees the old one or the new one, never a torn one."""
    return (*history[1 - HISTORY :], span) if len(history) >= HISTORY else (*history, span)


def _record(history: tuple[Span, ...], ts: float, until: float) -> tuple[Span, ...]:
    """A fault lasting until `until` seen at ts: recorded from ts when not recorded yet
    (one set by hand counts from the first reading that shows it)."""
    if ts >= until or (history and history[-1][1] == until):
        return history
    return _remember(history, (ts, until))


def _since(fault: bool, since: float | None, ts: float) -> float | None:
    """When a lasting fault began: kept while it lasts, from ts when new, None once gone."""
    if not fault:
        return None
    return ts if since is None else since


def _r(value: float, step: float) -> float:
    """Round to the wire resolution, so what a device holds is what the edge decodes."""
    return round(round(value / step) * step, 6)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _altitude_m(point: LatLon) -> float:
    # The Côte rises west of Dijon (Talant, Corcelles); the Saône plain is flat to the east.
    return _r(_clamp(245.0 + max(0.0, 5.03 - point[1]) * 2000.0, 220.0, 500.0), 0.01)


class Behaviour:
    """Base: a device that reports every `interval_s` and takes no commands."""

    __slots__ = ("_last_ts",)
    interval_s: ClassVar[float] = 600.0

    def __init__(self) -> None:
        self._last_ts: float | None = None

    def _elapsed(self, ts: float) -> float:
        """Seconds since the previous reading (one interval for the first), then remember ts."""
        last, self._last_ts = self._last_ts, ts
        if last is None:
            return self.interval_s
        return _clamp(ts - last, 0.0, _MAX_ELAPSED_S)

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        raise NotImplementedError

    def next_delay_s(self, now: datetime) -> float:
        """Simulated seconds until this device's next uplink."""
        return self.interval_s

    def accepts(self, cmd: DeviceCommand) -> bool:
        return False

    def apply(self, cmd: DeviceCommand, now: datetime) -> bool:
        return False


# --- street lamps ----------------------------------------------------------------------------

# What a controller runs out of the box, until the post sends a profile: lit below -2° of
# sun elevation (where a photocell switches, ~30 lux), at 60 % (a street nobody manages
# must still be lit well enough), full for passers-by and for 5 minutes after the last.
# Id 1 is reserved for it: the policy's profiles are numbered from 2.
FACTORY_PROFILE = LampProfile(
    profile_id=1, on_below_elevation_deg=-2.0, night_pct=60.0, boost_pct=100.0, boost_hold_s=300
)
LAMP_STANDBY_W = 0.5  # the driver's draw while lit, on top of the LEDs' share
LAMP_FAULT_P = 1e-6  # per uplink: ~3 % of lamps a year at one uplink per 15 min


class StreetLamp(Behaviour):
    """An LED lamp with a TALQ-style controller: it runs its dimming profile by itself.

    In profile mode it is lit while the sun is below the profile's elevation, at
    `night_pct`; its own presence sensor raises it to `boost_pct` until `boost_hold_s`
    after the last passer-by. `set_brightness` puts it at a fixed level instead (an
    operator's override, or the fail-safe 100 %), which it keeps, day and night, and
    reports with profile_id 0; `set_lamp_profile` puts it back in profile mode with the
    new profile. It starts in profile mode with FACTORY_PROFILE.

    Presence is drawn per uplink as a Poisson count over the time since the previous one;
    the last pedestrian's time within that span is drawn too (the largest of n uniform
    instants), which is what the hold runs from. Each uplink reports the level the lamp
    is at now and the power it draws now: a failed driver draws nothing.
    """

    __slots__ = (
        "commanded_pct",
        "density",
        "fault",
        "fault_since",
        "last_presence_ts",
        "profile",
        "rated_w",
    )
    interval_s: ClassVar[float] = 900.0

    def __init__(self, rated_w: float, density: float) -> None:
        super().__init__()
        self.rated_w = rated_w  # full-power draw
        self.density = density  # pedestrians relative to an average street
        self.profile = FACTORY_PROFILE
        self.commanded_pct: float | None = None  # a fixed level; None: the profile runs
        self.last_presence_ts: float | None = None  # when its sensor last saw someone
        self.fault = False
        # When the fault began: its first reading with the fault (also one set by hand).
        self.fault_since: float | None = None

    @property
    def profile_id(self) -> int:
        """The profile it runs, as it reports it: 0 while it holds a fixed level."""
        return 0 if self.commanded_pct is not None else self.profile.profile_id

    def level_pct(self, ts: float) -> float:
        """The output level at ts: the fixed level, else what the profile says."""
        if self.commanded_pct is not None:
            return self.commanded_pct
        profile = self.profile
        if env.sun_elevation_deg(ts) >= profile.on_below_elevation_deg:
            return 0.0
        seen = self.last_presence_ts
        if seen is not None and 0.0 <= ts - seen < profile.boost_hold_s:
            return profile.boost_pct
        return profile.night_pct

    def _detect(self, ts: float, elapsed: float, rng: random.Random) -> int:
        """Pedestrians since the previous reading; remembers when the last one passed."""
        lt = env.local_time(ts)
        count = env.poisson(rng, 60.0 * self.density * env.pedestrian_level(lt) * elapsed / 3600)
        if count > 0:
            last = ts - elapsed * (1.0 - rng.random() ** (1.0 / count))
            if self.last_presence_ts is None or last > self.last_presence_ts:
                self.last_presence_ts = last
        return min(255, count)

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        presence = self._detect(ts, self._elapsed(ts), rng)
        if not self.fault and rng.random() < LAMP_FAULT_P:
            self.fault = True  # a failed driver stays failed until a crew replaces it
        self.fault_since = _since(self.fault, self.fault_since, ts)
        level = self.level_pct(ts)
        power = 0.0 if self.fault else self.rated_w * level / 100 + LAMP_STANDBY_W * (level > 0)
        lux = env.ambient_lux(ts) * rng.uniform(0.9, 1.1)
        return {
            "brightness_pct": _r(level, 0.01),
            "presence_count": presence,
            "power_w": _r(power, 0.01),
            "fault": self.fault,
            "ambient_lux": float(round(_clamp(lux, 0.0, 65535.0))),
            "profile_id": self.profile_id,
        }

    def accepts(self, cmd: DeviceCommand) -> bool:
        if cmd.action == "set_brightness":
            return 0.0 <= cmd.value <= 100.0
        if cmd.action == "set_lamp_profile":
            profile = cmd.profile
            return (
                profile is not None
                and cmd.value == profile.profile_id
                and profile_problem(profile) is None
            )
        return False

    def apply(self, cmd: DeviceCommand, now: datetime) -> bool:
        if not self.accepts(cmd):
            return False
        if cmd.action == "set_lamp_profile" and cmd.profile is not None:
            self.profile = cmd.profile
            self.commanded_pct = None
        else:
            self.commanded_pct = float(cmd.value)
        return True


# --- water meters of elderly volunteers ------------------------------------------------------

# Probability that any tap is opened during each local hour, for an elderly household.
_WATER_USE_P = (
    0.12, 0.05, 0.04, 0.04, 0.05, 0.10, 0.35, 0.80, 0.85, 0.70, 0.60, 0.65,
    0.75, 0.60, 0.50, 0.50, 0.55, 0.60, 0.75, 0.85, 0.80, 0.60, 0.45, 0.30,
)  # fmt: skip
# Litres drawn in an hour with use, by hour (showers in the morning, cooking, dishes).
_WATER_LITRES = (
    6, 5, 5, 5, 5, 8, 14, 22, 20, 10, 8, 9, 12, 10, 6, 6, 7, 9, 12, 14, 12, 9, 8, 7,
)  # fmt: skip
# The household's day, local time: the post's quiet period (23:00-06:00) is its night.
AWAKE_FROM_H, AWAKE_UNTIL_H = 6.0, 23.0
# Up and about, somebody opens a tap (the toilet, a glass, the kettle) at least this often.
# Drawn hour by hour alone (p = 0.5 in the afternoon), the 1,000 households looked dry for
# 8 hours outside the night about 6 times a day between them: as many false alarms.
AWAKE_GAP_S = 3 * 3600.0
LEAK_START_P = 2e-5  # per hour
LEAK_DAYS = (1.0, 4.0)
LEAK_FLAG_AFTER_H = 24  # the meter flags continuous flow after a day without a pause


def _awake(ts: float) -> bool:
    return AWAKE_FROM_H <= env.local_time(ts).hour < AWAKE_UNTIL_H


class WaterMeter(Behaviour):
    """Hourly water drawn by an elderly volunteer's household.

    Every day has the same shape: little at night, the morning wash, meals, the evening;
    while awake (06:00-23:00) a tap is opened at least every AWAKE_GAP_S, so a household
    going about its day never looks dry for the post's 8 hours outside its quiet period.

    A volunteer may have welfare episodes (a fall, an illness, a stay in hospital): spans
    in which nobody opens a tap at all, so its uplinks read 0 litres. `episodes` plans them
    as (after_s, duration_s) from the meter's origin, its first reading unless `anchor`ed
    earlier; the last tap before one is opened just before it begins, and water flows again
    as soon as it ends. A leak never starts in the days before an episode nor during one,
    so an episode is dry on the wire from its start to its end. `welfare_episodes()` and
    `leaks` are the ground truth (see fleet.faults).
    """

    __slots__ = (
        "battery_pct",
        "dry_awake_s",
        "episodes",
        "flowing_hours",
        "leak_until",
        "leaks",
        "origin_ts",
        "usage",
    )
    interval_s: ClassVar[float] = 3600.0

    def __init__(
        self, usage: float, battery_pct: float, episodes: Sequence[tuple[float, float]] = ()
    ) -> None:
        super().__init__()
        self.usage = usage  # relative to the typical elderly household (~120 L a day)
        self.battery_pct = battery_pct
        # (after_s, duration_s) from the origin, in order
        self.episodes = tuple(sorted((float(a), float(d)) for a, d in episodes))
        if any(a < 0 or d <= 0 for a, d in self.episodes):
            raise ValueError(f"episodes: (after_s >= 0, duration_s > 0) expected, got {episodes}")
        self.origin_ts: float | None = None  # what episodes count from
        self.dry_awake_s = 0.0  # awake seconds since a tap was last opened
        self.leak_until = 0.0
        self.leaks: tuple[Span, ...] = ()  # (start, end) of its latest leaks
        self.flowing_hours = 0  # consecutive hours with water drawn

    def anchor(self, ts: float) -> None:
        """Count the episodes from ts (the simulation's start); only before the first reading."""
        if self.origin_ts is None:
            self.origin_ts = ts

    def welfare_episodes(self, origin: float | None = None) -> tuple[Span, ...]:
        """(start, end) of each welfare episode, in simulated POSIX seconds. Counted from
        the meter's origin; from `origin` while it has none (it has never reported); ()
        when neither is known."""
        base = self.origin_ts if self.origin_ts is not None else origin
        if base is None:
            return ()
        return tuple((base + after, base + after + hours) for after, hours in self.episodes)

    def _episode(self, t0: float, t1: float) -> Span | None:
        """The episode [t0, t1) overlaps or touches, if any."""
        for start, end in self.welfare_episodes():
            if start <= t1 and end >= t0:
                return start, end
        return None

    def _leak_may_start(self, ts: float) -> bool:
        longest = LEAK_DAYS[1] * 86400
        return not any(start - longest <= ts < end for start, end in self.welfare_episodes())

    def _draw(self, hour: int, fraction: float, rng: random.Random) -> float:
        # An opened tap gives at least a litre (what the meter resolves).
        return max(1.0, _WATER_LITRES[hour] * self.usage * rng.lognormvariate(0.0, 0.6) * fraction)

    def _step(self, t0: float, t1: float, rng: random.Random) -> float:
        """Litres over [t0, t1), at most an hour."""
        span = t1 - t0
        fraction, mid = span / 3600, (t0 + t1) / 2
        h = int(env.local_time(mid).hour)
        awake = _awake(mid)
        episode = self._episode(t0, t1)
        if episode is not None:
            # Nobody opens a tap within it; the last use is just before, the next just after.
            tap = t0 < episode[0] or t1 > episode[1]
        else:
            overdue = awake and self.dry_awake_s >= AWAKE_GAP_S
            tap = overdue or rng.random() < _WATER_USE_P[h] * min(1.0, fraction)
        drawn = self._draw(h, fraction, rng) if tap else 0.0
        if drawn > 0:
            self.dry_awake_s = 0.0
        elif awake:
            self.dry_awake_s += span
        if (
            mid >= self.leak_until
            and rng.random() < LEAK_START_P * fraction
            and self._leak_may_start(mid)
        ):
            self.leak_until = mid + rng.uniform(*LEAK_DAYS) * 86400
            self.leaks = _remember(self.leaks, (mid, self.leak_until))
        leaked = rng.uniform(3, 8) * fraction if mid < self.leak_until else 0.0
        return drawn + leaked

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self.anchor(ts)
        elapsed = self._elapsed(ts)
        litres, t = 0.0, ts - elapsed
        while t < ts - 1e-6:  # hour by hour over the elapsed time
            step = min(3600.0, ts - t)
            litres += self._step(t, t + step, rng)
            t += step
        litres = float(round(_clamp(litres, 0.0, 32000.0)))
        self.flowing_hours = self.flowing_hours + round(elapsed / 3600) if litres > 0 else 0
        self.battery_pct = max(0.0, self.battery_pct - 0.0005)
        return {
            "litres_since_last": litres,
            "leak_suspected": self.flowing_hours >= LEAK_FLAG_AFTER_H,
            "battery_pct": _r(self.battery_pct, 0.01),
        }


# --- parking sensors -------------------------------------------------------------------------


def _parking_target(lt: env.LocalTime) -> tuple[float, float]:
    """(occupancy share, mean stay in hours) for an on-street paid space at this hour."""
    h = lt.hour
    if h < 7 or h >= 22:
        return 0.55, 9.0  # residents overnight
    if lt.weekday == 6:
        return 0.45, 3.0
    if 8 <= h < 12 or 14 <= h < 19:
        return 0.88, 1.5
    return 0.70, 1.2


class ParkingSpot(Behaviour):
    """A ground sensor: reports on every arrival or departure, and every 10 minutes."""

    __slots__ = ("battery_pct", "next_change", "occupied")
    interval_s: ClassVar[float] = 600.0

    def __init__(self, occupied: bool, battery_pct: float) -> None:
        super().__init__()
        self.occupied = occupied
        self.battery_pct = battery_pct
        self.next_change: float | None = None

    def _holding_s(self, ts: float, rng: random.Random) -> float:
        occupancy, stay_h = _parking_target(env.local_time(ts))
        departure = 1.0 / (stay_h * 3600)
        # Arrivals at the rate that keeps the space occupied `occupancy` of the time.
        arrival = departure * occupancy / (1 - occupancy)
        return rng.expovariate(departure if self.occupied else arrival)

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self._elapsed(ts)
        if self.next_change is None:
            self.next_change = ts + self._holding_s(ts, rng)
        for _ in range(100):  # catch up with changes since the last reading, boundedly
            if self.next_change > ts:
                break
            self.occupied = not self.occupied
            self.next_change += self._holding_s(self.next_change, rng)
        else:
            self.next_change = ts + self._holding_s(ts, rng)
        self.battery_pct = max(0.0, self.battery_pct - 0.0002)
        return {"occupied": self.occupied, "battery_pct": _r(self.battery_pct, 0.01)}

    def next_delay_s(self, now: datetime) -> float:
        if self.next_change is None:
            return self.interval_s
        # A second after the change, so the reading sees it.
        return _clamp(self.next_change - env.timestamp(now) + 1.0, 1.0, self.interval_s)


# --- Divia buses and trams -------------------------------------------------------------------

SERVICE_START_H, SERVICE_END_H = 5.5, 0.5  # 05:30 to 00:30 the next day
LAYOVER_S = 300.0


@dataclass(frozen=True)
class LineRoute:
    """A line as a bus sees it: its number, route and scheduled speed."""

    number: int
    route: Route
    speed_kmh: float

    @property
    def trip_s(self) -> float:
        return self.route.length_m / (self.speed_kmh / 3.6)

    @property
    def cycle_s(self) -> float:
        return 2 * (self.trip_s + LAYOVER_S)


def _in_service(hour: float) -> bool:
    return hour >= SERVICE_START_H or hour < SERVICE_END_H


class Bus(Behaviour):
    """A bus or tram shuttling along its line, its delay drifting with the traffic."""

    __slots__ = ("delay_s", "line", "phase_s")
    interval_s: ClassVar[float] = 15.0

    def __init__(self, line: LineRoute, phase_s: float) -> None:
        super().__init__()
        self.line = line
        self.phase_s = phase_s  # where in the back-and-forth cycle this vehicle runs
        self.delay_s = 0.0

    def position(self, ts: float) -> tuple[LatLon, float, bool]:
        """(point, heading, moving) at ts given the current delay."""
        line = self.line
        c = (ts - self.delay_s + self.phase_s) % line.cycle_s
        trip, length = line.trip_s, line.route.length_m
        if c < trip:
            d = length * c / trip
            return line.route.point_at(d), line.route.heading_at(d), True
        c -= trip
        if c < LAYOVER_S:
            return line.route.points[-1], line.route.heading_at(length, forward=False), False
        c -= LAYOVER_S
        if c < trip:
            d = length * (1 - c / trip)
            return line.route.point_at(d), line.route.heading_at(d, forward=False), True
        return line.route.points[0], line.route.heading_at(0.0), False

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        dt = self._elapsed(ts)
        lt = env.local_time(ts)
        if not _in_service(lt.hour):
            self.delay_s = 0.0
            point, heading, speed = self.line.route.points[0], 0.0, 0.0
        else:
            traffic = env.traffic_level(lt)
            # Rush hours add delay; recovery time and layovers pull it back.
            # Equilibrium: ~2.5 min late at the evening peak, ~20 s at midday, early at night
            # (held at -30 s: drivers wait at timing points).
            drift = (0.06 * traffic - 0.012) * dt - 0.0003 * self.delay_s * dt
            noise = rng.gauss(0.0, 2.0 * math.sqrt(dt / 15))
            self.delay_s = _clamp(self.delay_s + drift + noise, -30.0, 900.0)
            point, heading, moving = self.position(ts)
            if not moving:
                self.delay_s = max(0.0, self.delay_s - dt)  # the layover absorbs delay
                speed = 0.0
            elif rng.random() < 0.2:
                speed = 0.0  # at a stop or a red light
            else:
                cruise = self.line.speed_kmh * 1.6 * (1 - 0.35 * traffic)
                speed = _clamp(rng.gauss(cruise, 5.0), 3.0, 70.0)
        return {
            "latitude": _r(point[0], 0.0001),
            "longitude": _r(point[1], 0.0001),
            "altitude_m": _altitude_m(point),
            "speed_kmh": _r(speed, 0.01),
            "heading_deg": _r(heading % 360, 0.1) % 360,
            "line": self.line.number,
            "delay_s": _r(self.delay_s, 0.1),
        }


# --- company cars ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """Where cars drive to: commune centres weighted by population, with their extent."""

    centres: tuple[LatLon, ...]
    radii_m: tuple[float, ...]
    cumulative_weights: tuple[float, ...]

    def pick(self, rng: random.Random) -> LatLon:
        i = rng.choices(range(len(self.centres)), cum_weights=self.cumulative_weights)[0]
        r = self.radii_m[i] * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        return offset(self.centres[i], r * math.cos(a), r * math.sin(a))


def on_duty(department: str, lt: env.LocalTime) -> bool:
    """When a department's cars are out: patrols round the clock, crews by day, gritters in winter."""
    h, weekday = lt.hour, lt.weekday
    if department == "police":
        return True
    if department == "municipal_police":
        return h >= 7 or h < 2
    if department == "waste":
        return weekday < 6 and 5 <= h < 13
    if department == "snow_service":
        return lt.month in (11, 12, 1, 2, 3) and 4 <= h < 10
    return weekday < 5 and 7.5 <= h < 17.5  # roads, citizen_services


class CompanyCar(Behaviour):
    """A department's car: drives to places across the metropolis, stops, returns to depot."""

    __slots__ = ("department", "depot", "heading", "parked_until", "places", "position", "target")
    interval_s: ClassVar[float] = 30.0

    def __init__(self, department: str, depot: LatLon, places: Places) -> None:
        super().__init__()
        self.department = department
        self.depot = depot
        self.places = places
        self.position = depot
        self.target = depot
        self.parked_until = 0.0
        self.heading = 0.0

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        dt = self._elapsed(ts)
        duty = on_duty(self.department, env.local_time(ts))
        speed = 0.0
        if not duty:
            self.target = self.depot
            self.parked_until = 0.0
        elif ts >= self.parked_until and self.position == self.target:
            self.target = self.places.pick(rng)
        if self.position != self.target and ts >= self.parked_until:
            speed = _clamp(rng.gauss(38.0, 8.0), 10.0, 70.0)
            self.heading = bearing_deg(self.position, self.target)
            self.position = move_towards(self.position, self.target, speed / 3.6 * dt)
            if self.position == self.target and duty:
                # An intervention, a collection round or a site visit.
                self.parked_until = ts + rng.uniform(5, 45) * 60
        return {
            "latitude": _r(self.position[0], 0.0001),
            "longitude": _r(self.position[1], 0.0001),
            "altitude_m": _altitude_m(self.position),
            "speed_kmh": _r(speed, 0.01),
            "heading_deg": _r(self.heading, 0.1) % 360,
            "line": 0,
            "delay_s": 0.0,
        }


# --- air quality -----------------------------------------------------------------------------


class AirQualityStation(Behaviour):
    """NO2 and PM with rush-hour peaks, winter heating smoke, summer afternoon ozone."""

    __slots__ = ("traffic_exposure",)
    interval_s: ClassVar[float] = 600.0

    def __init__(self, traffic_exposure: float) -> None:
        super().__init__()
        self.traffic_exposure = traffic_exposure  # 1 = urban background, 2 = kerbside

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self._elapsed(ts)
        lt = env.local_time(ts)
        traffic = env.traffic_level(lt)
        temp = env.air_temperature_c(ts)
        heating = max(0.0, 12.0 - temp)  # wood and gas heating below ~12 °C
        # Kerbside (exposure 2): a daily mean near 33 µg/m³ and rush-hour peaks of 60-80,
        # poor on the EEA index; urban background about half that. Dijon counts among
        # France's least polluted cities: poor air is a rush-hour kerbside episode, not
        # the day's rule.
        no2 = self.traffic_exposure * (8 + 28 * traffic) + 0.6 * heating
        pm10 = 12 + 10 * traffic * self.traffic_exposure + 1.1 * heating
        sun = max(0.0, math.sin(math.radians(env.sun_elevation_deg(ts))))
        o3 = 20 + 90 * sun * (1 + max(0.0, temp - 20) / 10) - 0.3 * no2
        return {
            "no2_ugm3": _r(max(0.0, no2 * rng.lognormvariate(0, 0.12)), 0.1),
            "o3_ugm3": _r(max(1.0, o3 * rng.lognormvariate(0, 0.1)), 0.1),
            "pm10_ugm3": _r(max(1.0, pm10 * rng.lognormvariate(0, 0.12)), 0.1),
            "pm25_ugm3": _r(max(0.5, 0.65 * pm10 * rng.lognormvariate(0, 0.1)), 0.1),
            "temperature_c": _r(temp + rng.gauss(0, 0.2), 0.1),
            "humidity_pct": _r(
                _clamp(env.relative_humidity_pct(ts) + rng.gauss(0, 1), 0, 100), 0.5
            ),
        }


# --- road weather for the snow service -------------------------------------------------------


def road_temperature_c(ts: float, exposure: float) -> float:
    """Sunlit asphalt warms above the air; on clear nights it radiates below it."""
    air = env.air_temperature_c(ts)
    elevation = env.sun_elevation_deg(ts)
    if elevation > 0:
        return air + 10 * math.sin(math.radians(elevation)) * exposure
    return air - 1.5 * exposure


class RoadWeatherStation(Behaviour):
    """Road and air temperature; ice when a wet road goes below zero."""

    __slots__ = ("exposure",)
    interval_s: ClassVar[float] = 600.0

    def __init__(self, exposure: float) -> None:
        super().__init__()
        self.exposure = exposure  # bridges and open slopes cool faster (>1)

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self._elapsed(ts)
        air = env.air_temperature_c(ts) + rng.gauss(0, 0.2)
        road = road_temperature_c(ts, self.exposure) + rng.gauss(0, 0.2)
        humidity = _clamp(env.relative_humidity_pct(ts) + rng.gauss(0, 1.5), 0, 100)
        return {
            "road_temperature_c": _r(road, 0.1),
            "air_temperature_c": _r(air, 0.1),
            "humidity_pct": _r(humidity, 0.5),
            "ice_detected": road <= 0.0 and humidity >= 85.0,
        }


# --- cameras ---------------------------------------------------------------------------------

CAMERA_EVENT_P = 2e-5  # per minute: a handful of events a day over 269 cameras
CAMERA_OUTAGE_P = 1e-5  # per minute
_EVENTS = (
    CameraEvent.ACCIDENT,
    CameraEvent.FIRE,
    CameraEvent.CROWD,
    CameraEvent.STOPPED_VEHICLE,
)
_EVENT_WEIGHTS = (0.3, 0.05, 0.25, 0.4)


class Camera(Behaviour):
    """Counts of people and vehicles by hour of day, rare detections, rare outages."""

    __slots__ = (
        "event",
        "event_until",
        "offline_until",
        "outages",
        "people_scale",
        "vehicle_scale",
    )
    interval_s: ClassVar[float] = 60.0

    def __init__(self, people_scale: float, vehicle_scale: float) -> None:
        super().__init__()
        self.people_scale = people_scale  # people per minute at the busiest hour
        self.vehicle_scale = vehicle_scale
        self.offline_until = 0.0
        self.outages: tuple[Span, ...] = ()  # (start, end) of its latest outages
        self.event: int = CameraEvent.NO_EVENT
        self.event_until = 0.0

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        minutes = self._elapsed(ts) / 60
        if ts >= self.offline_until and rng.random() < CAMERA_OUTAGE_P * minutes:
            self.offline_until = ts + rng.uniform(10, 120) * 60
        self.outages = _record(self.outages, ts, self.offline_until)
        if ts < self.offline_until:
            return {"online": False, "people_count": 0, "vehicle_count": 0, "event": 1}
        lt = env.local_time(ts)
        people = env.poisson(rng, self.people_scale * env.pedestrian_level(lt) * minutes)
        vehicles = env.poisson(rng, self.vehicle_scale * env.traffic_level(lt) * minutes)
        if ts >= self.event_until:
            self.event = CameraEvent.NO_EVENT
            if rng.random() < CAMERA_EVENT_P * minutes:
                self.event = rng.choices(_EVENTS, weights=_EVENT_WEIGHTS)[0]
                self.event_until = ts + rng.uniform(2, 15) * 60  # visible for a few minutes
        return {
            "online": True,
            "people_count": min(people, 32000),
            "vehicle_count": min(vehicles, 32000),
            "event": int(self.event),
        }


# --- traffic signals -------------------------------------------------------------------------

AMBER_S = 3.0
MAX_PRIORITY_S = 120.0  # a green extension beyond this is refused: cross traffic must move
SIGNAL_FAULT_P = 2e-6


class TrafficSignal(Behaviour):
    """A junction controller: fixed-time cycle, queues, bus priority and modes on command."""

    __slots__ = (
        "fault_until",
        "faults",
        "forced_phase",
        "night_flashing",
        "offset_s",
        "priority_served",
        "priority_until",
    )
    interval_s: ClassVar[float] = 30.0

    def __init__(self, offset_s: float, night_flashing: bool) -> None:
        super().__init__()
        self.offset_s = offset_s  # green-wave offset within the cycle
        self.night_flashing = night_flashing  # goes to flashing amber in the small hours
        self.forced_phase = 0  # SIGNAL_PHASE_UNSPECIFIED: run the normal cycle
        self.priority_until = 0.0
        self.priority_served = False  # latched until reported
        self.fault_until = 0.0
        self.faults: tuple[Span, ...] = ()  # (start, end) of its latest faults

    @staticmethod
    def cycle_s(traffic: float) -> float:
        return 70.0 + 30.0 * traffic  # longer cycles at peak

    def phase_at(self, ts: float) -> tuple[int, float]:
        """(phase, seconds since the phase began) in the normal cycle."""
        traffic = env.traffic_level(env.local_time(ts))
        cycle = self.cycle_s(traffic)
        green = 0.45 * cycle
        t = (ts + self.offset_s) % cycle
        if t < green:
            return SignalPhase.GREEN, t
        if t < green + AMBER_S:
            return SignalPhase.AMBER, t - green
        return SignalPhase.RED, t - green - AMBER_S

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self._elapsed(ts)
        if ts >= self.fault_until and rng.random() < SIGNAL_FAULT_P:
            self.fault_until = ts + rng.uniform(2, 8) * 3600  # until a technician comes
        self.faults = _record(self.faults, ts, self.fault_until)
        fault = ts < self.fault_until
        lt = env.local_time(ts)
        traffic = env.traffic_level(lt)
        arrivals = 0.3 * traffic  # vehicles per second on the controlled approach
        priority = ts < self.priority_until
        phase: int
        if fault:
            phase, queue = SignalPhase.FLASHING_AMBER, rng.randint(0, 4)
        elif self.forced_phase:
            phase = self.forced_phase
            queue = rng.randint(0, 3) if phase != SignalPhase.RED else int(arrivals * 60)
        elif priority:
            phase, queue = SignalPhase.GREEN, rng.randint(0, 2)
        elif self.night_flashing and 1.0 <= lt.hour < 5.0:
            phase, queue = SignalPhase.FLASHING_AMBER, rng.randint(0, 1)
        else:
            phase, since = self.phase_at(ts)
            red_s = 0.55 * self.cycle_s(traffic) - AMBER_S
            if phase == SignalPhase.RED:
                queue = env.poisson(rng, arrivals * since)
            else:  # the queue built during red discharges at ~0.5 vehicle/s
                queue = env.poisson(rng, max(0.0, arrivals * red_s - 0.5 * since))
        served, self.priority_served = self.priority_served or priority, False
        return {
            "phase": int(phase),
            "bus_priority_active": served,
            "queue_length": min(255, queue),
            "fault": fault,
        }

    def accepts(self, cmd: DeviceCommand) -> bool:
        if cmd.action == "signal_priority":
            return 0.0 < cmd.value <= MAX_PRIORITY_S
        if cmd.action == "set_signal_mode":
            return cmd.value in SignalPhase.values()
        return False

    def apply(self, cmd: DeviceCommand, now: datetime) -> bool:
        if not self.accepts(cmd):
            return False
        ts = env.timestamp(now)
        if cmd.action == "signal_priority":
            self.priority_until = max(self.priority_until, ts + float(cmd.value))
            self.priority_served = True
        else:
            # FLASHING_AMBER is the fail-safe mode; RED/GREEN/AMBER hold that phase
            # (police control); UNSPECIFIED returns to the normal cycle.
            self.forced_phase = int(cmd.value)
        return True


# --- bollards --------------------------------------------------------------------------------

BOLLARD_TRAVEL_S = 8.0
BOLLARD_FAULT_P = 1e-6


class Bollard(Behaviour):
    """A retractable bollard at an old-town entry: holds the commanded position."""

    __slots__ = ("fault", "fault_since", "moving_until", "position")
    interval_s: ClassVar[float] = 300.0

    def __init__(self) -> None:
        super().__init__()
        self.position: int = BollardPosition.RAISED  # the old town is closed by default
        self.moving_until = 0.0
        self.fault = False
        self.fault_since: float | None = None  # as a lamp's

    def reading(self, now: datetime, rng: random.Random) -> Reading:
        ts = env.timestamp(now)
        self._elapsed(ts)
        if not self.fault and rng.random() < BOLLARD_FAULT_P:
            self.fault = True
        self.fault_since = _since(self.fault, self.fault_since, ts)
        moving = ts < self.moving_until
        traffic = env.traffic_level(env.local_time(ts))
        # Lowered: deliveries and residents drive through. Raised: someone waits at the post.
        p_vehicle = 0.35 * traffic + 0.02 if self.position == BollardPosition.LOWERED else 0.03
        return {
            "position": int(BollardPosition.MOVING if moving else self.position),
            "vehicle_present": rng.random() < p_vehicle,
            "fault": self.fault,
        }

    def accepts(self, cmd: DeviceCommand) -> bool:
        return cmd.action == "set_bollard_position" and cmd.value in (
            BollardPosition.LOWERED,
            BollardPosition.RAISED,
        )

    def apply(self, cmd: DeviceCommand, now: datetime) -> bool:
        if not self.accepts(cmd):
            return False
        if self.fault:
            return True  # acknowledged, but a jammed bollard does not move: the post sees it
        if int(cmd.value) != self.position:
            self.moving_until = env.timestamp(now) + BOLLARD_TRAVEL_S
        self.position = int(cmd.value)
        return True


def places_from(centres: Sequence[tuple[LatLon, float, float]]) -> Places:
    """Places from (centre, radius m, weight) triples."""
    total, cumulative = 0.0, []
    for _, _, weight in centres:
        total += weight
        cumulative.append(total)
    return Places(
        tuple(c for c, _, _ in centres), tuple(r for _, r, _ in centres), tuple(cumulative)
    )
