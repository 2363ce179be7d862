"""Air quality: the European Air Quality Index per station, one alarm per zone when poor.

Bands are the EEA's European Air Quality Index as revised in 2024 (in use
since 2025; ETC HE Report 2024/17, hourly concentrations, µg/m³). Each band
is named by its upper bound, and a value equal to a bound belongs to the
lower band:

| pollutant | good | fair | moderate | poor | very poor | extremely poor |
|---|---|---|---|---|---|---|
| PM2.5 | <= 5 | <= 15 | <= 50 | <= 90 | <= 140 | > 140 |
| PM10 | <= 15 | <= 45 | <= 120 | <= 195 | <= 270 | > 270 |
| NO2 | <= 10 | <= 25 | <= 60 | <= 100 | <= 150 | > 150 |
| O3 | <= 60 | <= 100 | <= 120 | <= 160 | <= 180 | > 180 |

The index is defined on hourly concentrations, so a station is judged on each
pollutant's mean over the last hour of its readings (data time), and only once
that hour is at least 75 % covered (45 minutes, the EEA's rule): a single
10-minute reading, noisier than any hysteresis, judges nothing. A station's
index is its worst pollutant's band. A station's level steps down (or clears)
only once every hourly mean is `hysteresis` (10 %) below the bound it crossed.

The alarm, "air_quality_poor", is the zone's (originator `air_quality/<group>`):
what an operator does about poor air (inform the public, ask for traffic
measures) is done for an area, not a sensor, and a rush hour that takes several
stations of a zone over a bound is one situation, not one alarm per station.
It is MINOR while a station of the zone is poor and MAJOR at very poor or
worse; its detail names how many stations and the worst one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from actors.decisions import ClearAlarm, Decision, IssueCommand, RaiseAlarm, ReportMetric
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

ALARM = "air_quality_poor"
HOUR_MS = 3_600_000
MIN_COVERAGE = 0.75  # of the hour, for a valid hourly mean (EEA)
DEFAULT_INTERVAL_S = 600.0  # a station that does not say reports every 10 minutes


class Band(IntEnum):
    GOOD = 1
    FAIR = 2
    MODERATE = 3
    POOR = 4
    VERY_POOR = 5
    EXTREMELY_POOR = 6

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


# Upper bounds of good, fair, moderate, poor, very poor (µg/m³); above the last: extremely poor.
EEA_BOUNDS: Mapping[str, tuple[float, float, float, float, float]] = {
    "pm25": (5.0, 15.0, 50.0, 90.0, 140.0),
    "pm10": (15.0, 45.0, 120.0, 195.0, 270.0),
    "no2": (10.0, 25.0, 60.0, 100.0, 150.0),
    "o3": (60.0, 100.0, 120.0, 160.0, 180.0),
}

_FIELDS = {"pm25": "pm25_ugm3", "pm10": "pm10_ugm3", "no2": "no2_ugm3", "o3": "o3_ugm3"}
POLLUTANTS = tuple(_FIELDS)


def pollutant_band(pollutant: str, ugm3: float) -> Band:
    """The EEA band of one pollutant's concentration."""
    bounds = EEA_BOUNDS.get(pollutant)
    if bounds is None:
        raise InvalidArgumentError(
            f"pollutant: unknown {pollutant!r} (one of {sorted(EEA_BOUNDS)})"
        )
    if math.isnan(ugm3):
        raise InvalidArgumentError(f"{pollutant}: concentration is not a number")
    for band, upper in zip(Band, bounds, strict=False):
        if ugm3 <= upper:
            return band
    return Band.EXTREMELY_POOR


def station_index(concentrations: Mapping[str, float]) -> tuple[Band, str]:
    """(worst band, the pollutant that sets it); the first listed wins a tie."""
    if not concentrations:
        raise InvalidArgumentError("concentrations: at least one pollutant is needed")
    worst = max(concentrations, key=lambda p: pollutant_band(p, concentrations[p]))
    return pollutant_band(worst, concentrations[worst]), worst


def concentrations_of(reading: telemetry_pb2.AirQualityReading) -> dict[str, float]:
    return {p: float(getattr(reading, f)) for p, f in _FIELDS.items()}


# Alarm levels: 0 none, 1 MINOR (poor), 2 MAJOR (very poor or worse).
_SEVERITY = {1: operations_pb2.MINOR, 2: operations_pb2.MAJOR}


def _level(band: Band) -> int:
    return 2 if band >= Band.VERY_POOR else 1 if band == Band.POOR else 0


def hourly_means(
    window: Sequence[tuple[int, tuple[float, ...]]], interval_s: float
) -> dict[str, float] | None:
    """Each pollutant's mean over `window` (readings of the last hour), or None while the
    readings cover less than 75 % of the hour."""
    if len(window) * interval_s * 1000 < MIN_COVERAGE * HOUR_MS:
        return None
    return {p: math.fsum(r[1][i] for r in window) / len(window) for i, p in enumerate(POLLUTANTS)}


@dataclass
class _Station:
    interval_s: float = DEFAULT_INTERVAL_S
    window: deque[tuple[int, tuple[float, ...]]] = field(default_factory=deque)
    band: Band | None = None  # of the hourly means
    pollutant: str = ""
    value: float = 0.0  # the hourly mean of `pollutant`
    level: int = 0  # 0, 1 poor, 2 very poor or worse; with hysteresis

    def add(self, at_ms: int, conc: Mapping[str, float]) -> None:
        self.window.append((at_ms, tuple(conc[p] for p in POLLUTANTS)))
        newest = max(at for at, _ in self.window)
        while self.window and self.window[0][0] <= newest - HOUR_MS:
            self.window.popleft()


class AirQualityPolicy:
    """Implements `actors.policy.Policy` for AIR_QUALITY; stations take no commands."""

    def __init__(self, group: str, devices: Sequence[Device], *, hysteresis: float = 0.10) -> None:
        if not 0.0 <= hysteresis < 1.0:
            raise InvalidArgumentError("hysteresis: must be within 0..1")
        self.group = group
        self.originator = f"air_quality/{group}"
        self.hysteresis = hysteresis
        self._intervals = {d.dev_eui: d.report_interval_s or DEFAULT_INTERVAL_S for d in devices}
        self._stations: dict[str, _Station] = {
            eui: _Station(interval) for eui, interval in self._intervals.items()
        }
        self._zone_level = 0

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        out: list[Decision] = []
        now_ms = int(now.timestamp() * 1000)
        touched = False
        for item in batch:
            station = self._stations.get(item.dev_eui)
            if station is None or item.WhichOneof("reading") != "air_quality":
                continue
            conc = concentrations_of(item.air_quality)
            if any(math.isnan(v) for v in conc.values()):
                continue  # a station that cannot measure says nothing of the air
            # The device's time when known and not in the future, else the post's.
            at_ms = item.observed_at_ms if 0 < item.observed_at_ms <= now_ms else now_ms
            station.add(at_ms, conc)
            out.extend(self._judge(item.dev_eui, station))
            touched = True
        if touched:
            out.extend(self._zone())
        return out

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def _judge(self, eui: str, station: _Station) -> list[Decision]:
        means = hourly_means(station.window, station.interval_s)
        if means is None:
            return []
        out: list[Decision] = []
        band, pollutant = station_index(means)
        if band != station.band:
            out.append(
                ReportMetric("air_quality.index", int(band), {"station": eui, "zone": self.group})
            )
        station.band, station.pollutant, station.value = band, pollutant, means[pollutant]
        up = _level(band)
        # The level the station would have were every bound `hysteresis` lower: it must be
        # below the current level before the station steps down.
        inflated = {p: v / (1.0 - self.hysteresis) for p, v in means.items()}
        down = _level(station_index(inflated)[0])
        if up > station.level or down < station.level:
            station.level = up if up > station.level else down
        return out

    def _zone(self) -> list[Decision]:
        level = max(s.level for s in self._stations.values())
        if level == self._zone_level:
            return []
        self._zone_level = level
        if level == 0:
            return [ClearAlarm(self.originator, ALARM, "every station back below poor")]
        poor = [(eui, s) for eui, s in self._stations.items() if s.level > 0]
        eui, worst = max(poor, key=lambda p: (p[1].level, p[1].band or 0, p[1].value))
        band = worst.band.label if worst.band is not None else "poor"
        detail = (
            f"{self.group}: index {band} at {len(poor)} of {len(self._stations)} stations;"
            f" worst {eui}, {worst.pollutant} {worst.value:.1f} µg/m³ (hourly mean)"
        )
        return [RaiseAlarm(self.originator, ALARM, _SEVERITY[level], detail)]

    # --- queries ---

    def bands(self) -> dict[str, str]:
        """{devEui: band label} of stations with an hourly index."""
        return {eui: s.band.label for eui, s in self._stations.items() if s.band is not None}

    def snapshot(self) -> Snapshot:
        return {
            "zone_level": self._zone_level,
            "stations": {
                eui: {
                    "band": None if s.band is None else int(s.band),
                    "pollutant": s.pollutant,
                    "value": s.value,
                    "level": s.level,
                    "window": [[at, *values] for at, values in s.window],
                }
                for eui, s in self._stations.items()
            },
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            stations: dict[str, Any] = snapshot["stations"]
            restored = {
                eui: _Station(
                    self._intervals[eui],
                    deque((int(r[0]), tuple(float(v) for v in r[1:])) for r in s["window"]),
                    None if s["band"] is None else Band(int(s["band"])),
                    str(s["pollutant"]),
                    float(s["value"]),
                    int(s["level"]),
                )
                for eui, s in stations.items()
                if eui in self._intervals
            }
            zone_level = int(snapshot["zone_level"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InvalidArgumentError(f"snapshot: not an air quality snapshot ({exc!r})") from exc
        if any(len(values) != len(POLLUTANTS) for s in restored.values() for _, values in s.window):
            raise InvalidArgumentError("snapshot: a window reading has the wrong pollutant count")
        self._stations = {
            eui: restored.get(eui, _Station(interval)) for eui, interval in self._intervals.items()
        }
        self._zone_level = zone_level


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return AirQualityPolicy(group, devices)
