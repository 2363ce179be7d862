"""Where the sun is: elevation, sunrise/sunset and civil twilight for a place and an instant.

NOAA's solar calculator formulae (Meeus, "Astronomical Algorithms"), good to
about a minute for event times at mid latitudes until 2100: plenty for
switching street lamps, and no dependency. Elevations are geometric (no
refraction); the event thresholds below include refraction and the sun's
radius, as the almanacs define them. Every datetime in or out is aware; results
are in UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from citypost.errors import InvalidArgumentError

# The sun's upper limb on the horizon: 34' of refraction plus 16' of radius.
SUNRISE_SUNSET_DEG = -0.833
CIVIL_TWILIGHT_DEG = -6.0

# Dijon, where the default city is.
DIJON_LATITUDE, DIJON_LONGITUDE = 47.32, 5.04

_UNIX_EPOCH_JD = 2440587.5
_J2000_JD = 2451545.0


@dataclass(frozen=True, slots=True)
class _Sun:
    declination: float  # radians
    equation_of_time_min: float


def _sun(jd: float) -> _Sun:
    t = (jd - _J2000_JD) / 36525.0  # Julian centuries since J2000
    mean_lon = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    anomaly = math.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    centre = (
        math.sin(anomaly) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * anomaly) * (0.019993 - 0.000101 * t)
        + math.sin(3 * anomaly) * 0.000289
    )
    omega = math.radians(125.04 - 1934.136 * t)
    apparent_lon = math.radians(mean_lon + centre - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliquity = (
        23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60) / 60
    )
    obliquity = math.radians(mean_obliquity + 0.00256 * math.cos(omega))
    declination = math.asin(math.sin(obliquity) * math.sin(apparent_lon))
    y = math.tan(obliquity / 2) ** 2
    l0 = math.radians(mean_lon)
    eot = (
        y * math.sin(2 * l0)
        - 2 * ecc * math.sin(anomaly)
        + 4 * ecc * y * math.sin(anomaly) * math.cos(2 * l0)
        - 0.5 * y * y * math.sin(4 * l0)
        - 1.25 * ecc * ecc * math.sin(2 * anomaly)
    )
    return _Sun(declination, 4.0 * math.degrees(eot))


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgumentError("when must be an aware datetime")
    return when


def _check_place(latitude: float, longitude: float) -> None:
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        raise InvalidArgumentError(f"no place at latitude {latitude}, longitude {longitude}")


def elevation_deg(when: datetime, latitude: float, longitude: float) -> float:
    """Geometric elevation of the sun's centre above the horizon, in degrees."""
    _check_place(latitude, longitude)
    ts = _aware(when).timestamp()
    sun = _sun(ts / 86400.0 + _UNIX_EPOCH_JD)
    minutes_utc = (ts % 86400.0) / 60.0
    solar_minutes = minutes_utc + sun.equation_of_time_min + 4.0 * longitude
    hour_angle = math.radians(solar_minutes / 4.0 - 180.0)
    lat = math.radians(latitude)
    sin_elev = math.sin(lat) * math.sin(sun.declination) + math.cos(lat) * math.cos(
        sun.declination
    ) * math.cos(hour_angle)
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_elev))))


def _midnight_jd(day: date) -> float:
    return (day - date(1970, 1, 1)).days + _UNIX_EPOCH_JD


def solar_noon(day: date, longitude: float) -> datetime:
    """When the sun crosses the meridian on that (UTC) day."""
    _check_place(0.0, longitude)
    minutes = 720.0 - 4.0 * longitude
    for _ in range(2):  # the equation of time at noon itself
        minutes = (
            720.0 - 4.0 * longitude - _sun(_midnight_jd(day) + minutes / 1440).equation_of_time_min
        )
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minutes)


def crossing(
    day: date, latitude: float, longitude: float, elevation: float, *, rising: bool
) -> datetime | None:
    """When the sun's centre passes `elevation` degrees on that day, rising or setting.

    None when it does not that day (polar day or night, or a threshold above the sun's noon).
    """
    _check_place(latitude, longitude)
    noon = solar_noon(day, longitude)
    noon_minutes = (noon - datetime(day.year, day.month, day.day, tzinfo=UTC)).total_seconds() / 60
    lat = math.radians(latitude)
    minutes = noon_minutes
    for _ in range(3):  # declination and equation of time at the event, not at noon
        sun = _sun(_midnight_jd(day) + minutes / 1440)
        cos_h = (math.sin(math.radians(elevation)) - math.sin(lat) * math.sin(sun.declination)) / (
            math.cos(lat) * math.cos(sun.declination)
        )
        if not -1.0 <= cos_h <= 1.0:
            return None
        hour_angle_min = 4.0 * math.degrees(math.acos(cos_h))
        event_noon = 720.0 - 4.0 * longitude - sun.equation_of_time_min
        minutes = event_noon - hour_angle_min if rising else event_noon + hour_angle_min
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minutes)


@dataclass(frozen=True, slots=True)
class SunTimes:
    """One day's events at a place, in UTC; None for an event that does not happen."""

    dawn: datetime | None  # civil dawn: the sun 6 degrees below the horizon, rising
    sunrise: datetime | None
    noon: datetime
    sunset: datetime | None
    dusk: datetime | None  # civil dusk


def sun_times(
    day: date, latitude: float = DIJON_LATITUDE, longitude: float = DIJON_LONGITUDE
) -> SunTimes:
    """Civil dawn, sunrise, noon, sunset and civil dusk on that day (Dijon by default)."""
    return SunTimes(
        dawn=crossing(day, latitude, longitude, CIVIL_TWILIGHT_DEG, rising=True),
        sunrise=crossing(day, latitude, longitude, SUNRISE_SUNSET_DEG, rising=True),
        noon=solar_noon(day, longitude),
        sunset=crossing(day, latitude, longitude, SUNRISE_SUNSET_DEG, rising=False),
        dusk=crossing(day, latitude, longitude, CIVIL_TWILIGHT_DEG, rising=False),
    )
