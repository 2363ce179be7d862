"""Air quality stations: the European Air Quality Index band per station, alarms when poor.

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

A station's index is its worst pollutant's band. "air_quality_poor" is
raised MINOR at poor and MAJOR at very poor or worse. It steps down (or
clears) only once every pollutant is `hysteresis` (10 %) below the bound it
crossed, so a reading that hovers at a bound does not flap the alarm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from actors.decisions import ClearAlarm, Decision, IssueCommand, RaiseAlarm, ReportMetric
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

ALARM = "air_quality_poor"


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


@dataclass
class _Station:
    band: Band | None = None
    pollutant: str = ""
    level: int = 0  # the alarm level in force


class AirQualityPolicy:
    """Implements `actors.policy.Policy` for AIR_QUALITY; stations take no commands."""

    def __init__(self, group: str, devices: Sequence[Device], *, hysteresis: float = 0.10) -> None:
        if not 0.0 <= hysteresis < 1.0:
            raise InvalidArgumentError("hysteresis: must be within 0..1")
        self.group = group
        self.hysteresis = hysteresis
        self._stations: dict[str, _Station] = {d.dev_eui: _Station() for d in devices}

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        out: list[Decision] = []
        for item in batch:
            station = self._stations.get(item.dev_eui)
            if station is None or item.WhichOneof("reading") != "air_quality":
                continue
            out.extend(self._apply(item.dev_eui, station, concentrations_of(item.air_quality)))
        return out

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def _apply(self, eui: str, station: _Station, conc: dict[str, float]) -> list[Decision]:
        out: list[Decision] = []
        band, pollutant = station_index(conc)
        if band != station.band:
            out.append(
                ReportMetric("air_quality.index", int(band), {"station": eui, "zone": self.group})
            )
        station.band, station.pollutant = band, pollutant
        up = _level(band)
        # The level the station would have were every bound `hysteresis` lower: it must be
        # below the current level before the alarm steps down.
        inflated = {p: v / (1.0 - self.hysteresis) for p, v in conc.items()}
        down = _level(station_index(inflated)[0])
        value = conc[pollutant]
        detail = f"index {band.label}: {pollutant} {value:.1f} µg/m³"
        if up > station.level:
            station.level = up
            out.append(RaiseAlarm(eui, ALARM, _SEVERITY[up], detail))
        elif down < station.level:
            station.level = down
            if down == 0:
                out.append(ClearAlarm(eui, ALARM, detail))
            else:
                out.append(RaiseAlarm(eui, ALARM, _SEVERITY[down], detail))
        return out

    # --- queries ---

    def bands(self) -> dict[str, str]:
        """{devEui: band label} for stations heard from."""
        return {eui: s.band.label for eui, s in self._stations.items() if s.band is not None}

    def snapshot(self) -> Snapshot:
        return {
            "stations": {
                eui: {
                    "band": None if s.band is None else int(s.band),
                    "pollutant": s.pollutant,
                    "level": s.level,
                }
                for eui, s in self._stations.items()
            }
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            stations: dict[str, Any] = snapshot["stations"]
            restored = {
                eui: _Station(
                    None if s["band"] is None else Band(int(s["band"])),
                    str(s["pollutant"]),
                    int(s["level"]),
                )
                for eui, s in stations.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not an air quality snapshot ({exc!r})") from exc
        self._stations = {eui: restored.get(eui, _Station()) for eui in self._stations}


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return AirQualityPolicy(group, devices)
