"""The shared environment every simulated device sees: local time, sun, weather, rhythms.

Pure functions of simulated time. Weather is deterministic per day (seeded by
the date), so every sensor of the city agrees on whether a night is cold.
Results are cached per minute: tens of thousands of devices ask about the
same few minutes.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from fleet.dijon import DIJON

PARIS = ZoneInfo("Europe/Paris")
_LAT = math.radians(DIJON.latitude)
_LON = DIJON.longitude


class LocalTime(NamedTuple):
    hour: float  # 0 <= hour < 24, local (Europe/Paris) wall-clock time
    weekday: int  # 0 Monday .. 6 Sunday
    yday: int  # day of the year, 1..366
    month: int


@lru_cache(maxsize=4096)
def _local_minute(minute: int) -> LocalTime:
    local = datetime.fromtimestamp(minute * 60, PARIS)
    return LocalTime(
        local.hour + local.minute / 60, local.weekday(), local.timetuple().tm_yday, local.month
    )


def local_time(ts: float) -> LocalTime:
    """Local wall-clock time of a POSIX timestamp (seconds)."""
    base = _local_minute(int(ts // 60))
    return base._replace(hour=base.hour + (ts % 60) / 3600)


def timestamp(now: datetime) -> float:
    """Aware datetime -> POSIX seconds; a naive one is taken as UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.timestamp()


@lru_cache(maxsize=4096)
def _sun_minute(minute: int) -> float:
    n = minute * 60 / 86400 + 2440587.5 - 2451545.0  # days since J2000
    mean_lon = (280.460 + 0.9856474 * n) % 360
    anomaly = math.radians((357.528 + 0.9856003 * n) % 360)
    ecl_lon = math.radians(mean_lon + 1.915 * math.sin(anomaly) + 0.020 * math.sin(2 * anomaly))
    obliquity = math.radians(23.439 - 0.0000004 * n)
    right_asc = math.atan2(math.cos(obliquity) * math.sin(ecl_lon), math.cos(ecl_lon))
    decl = math.asin(math.sin(obliquity) * math.sin(ecl_lon))
    sidereal_h = (18.697374558 + 24.06570982441908 * n) % 24
    hour_angle = math.radians(sidereal_h * 15 + _LON) - right_asc
    sin_elev = math.sin(_LAT) * math.sin(decl) + math.cos(_LAT) * math.cos(decl) * math.cos(
        hour_angle
    )
    return math.degrees(math.asin(sin_elev))


def sun_elevation_deg(ts: float) -> float:
    """Solar elevation above the horizon at Dijon, degrees (NOAA low-precision formulae)."""
    return _sun_minute(int(ts // 60))


@lru_cache(maxsize=512)
def _day_weather(day: int) -> tuple[float, float]:
    # Seeded by the day alone: every sensor of every run agrees on the day's weather.
    rng = random.Random(day * 7919 + 17)
    return rng.gauss(0.0, 2.5), rng.uniform(0.25, 1.0)


def _day_blend(ts: float) -> tuple[float, float]:
    """(temperature anomaly °C, sky clearness 0..1), interpolated between days."""
    days = ts / 86400 - 0.5
    d = math.floor(days)
    f = days - d
    a0, c0 = _day_weather(d)
    a1, c1 = _day_weather(d + 1)
    return a0 + (a1 - a0) * f, c0 + (c1 - c0) * f


def clear_sky_lux(elevation_deg: float) -> float:
    """Outdoor illuminance from the sun's elevation: day, civil then nautical twilight."""
    if elevation_deg >= 0:
        return 400.0 + 110_000.0 * math.sin(math.radians(elevation_deg)) ** 1.2
    if elevation_deg >= -6:
        # log-linear from 400 lux at sunset to 3 lux at the end of civil twilight
        return 10 ** (math.log10(400) + (math.log10(400) - math.log10(3)) * elevation_deg / 6)
    if elevation_deg >= -12:
        return 10 ** (math.log10(3) + (math.log10(3) + 2) * (elevation_deg + 6) / 6)
    return 0.0


def ambient_lux(ts: float) -> float:
    """Illuminance a lamp's sensor sees: clear-sky light dimmed by the day's clouds."""
    _, clearness = _day_blend(ts)
    return clear_sky_lux(sun_elevation_deg(ts)) * (0.3 + 0.7 * clearness)


def seasonal_mean_c(yday: int) -> float:
    """Dijon's daily mean air temperature: about 2 °C mid-January, 21 °C mid-July."""
    return 11.4 - 9.6 * math.cos(2 * math.pi * (yday - 15) / 365.25)


def air_temperature_c(ts: float) -> float:
    """Air temperature: season, a diurnal cycle (coolest before dawn) and the day's anomaly."""
    lt = local_time(ts)
    anomaly, clearness = _day_blend(ts)
    summer = 0.5 - 0.5 * math.cos(2 * math.pi * (lt.yday - 15) / 365.25)  # 0 Jan .. 1 Jul
    amplitude = (3.0 + 3.0 * summer) * (0.5 + 0.5 * clearness)  # clear days swing more
    diurnal = math.cos(2 * math.pi * (lt.hour - 15) / 24)  # +1 at 15:00, -1 at 03:00
    return seasonal_mean_c(lt.yday) + anomaly + amplitude * diurnal


def relative_humidity_pct(ts: float) -> float:
    """Humidity: high at night and in winter, lowest on summer afternoons."""
    lt = local_time(ts)
    _, clearness = _day_blend(ts)
    diurnal = math.cos(2 * math.pi * (lt.hour - 15) / 24)
    winter = 0.5 + 0.5 * math.cos(2 * math.pi * (lt.yday - 15) / 365.25)
    value = 72 + 10 * winter - 15 * diurnal - 12 * (clearness - 0.6)
    return min(100.0, max(25.0, value))


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


def traffic_level(lt: LocalTime) -> float:
    """Road traffic, 0..1: morning and evening rush hours, quiet nights, lighter weekends."""
    h = lt.hour
    if lt.weekday >= 5:
        return 0.05 + 0.45 * _bump(h, 15, 4.5)
    return min(
        1.0, 0.05 + 0.9 * _bump(h, 8.0, 1.2) + 0.95 * _bump(h, 17.8, 1.6) + 0.45 * _bump(h, 13, 3.5)
    )


def pedestrian_level(lt: LocalTime) -> float:
    """People on foot, 0..1: a daytime plateau, a lively evening, nearly nobody at 4 a.m."""
    h = lt.hour
    day = 0.6 * _bump(h, 12.5, 4.0) + 0.35 * _bump(h, 18.5, 2.0) + 0.25 * _bump(h, 22.0, 1.5)
    weekend_night = 0.2 * _bump(h if h > 12 else h + 24, 24.5, 1.5) if lt.weekday >= 4 else 0.0
    return min(1.0, 0.01 + day + weekend_night)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw; normal approximation above 30 (the streams do not need exact tails)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
