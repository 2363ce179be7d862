"""Road weather stations for the snow service: ice risk -> salt the route.

A station is at risk when it detects ice, or when the road is at or below
`freeze_at_c` (1 °C) with humidity at or above `humid_pct` (80 %): a wet road
about to freeze. It stays at risk until the road is back above
`recover_above_c` (3 °C) with no ice detected; the gap between the two
temperatures keeps a road hovering around 1-2 °C from flapping.

Each station raises its own "ice_risk" alarm (MAJOR). Salting is by route:
every station of the group lies on the group's route unless a `routes`
mapping says otherwise. A route gets one "salt_route" task for the snow
service when its first station turns icy, and no other until every station
on it has recovered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.decisions import ClearAlarm, Decision, IssueCommand, RaiseAlarm, RequestTask
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

ALARM = "ice_risk"
TASK = "salt_route"


def default_route(group: str) -> str:
    """The gritting route of a group of stations (a sector of the metropolis, or part of one)."""
    return f"salt-{group}"


@dataclass
class _Station:
    at_risk: bool = False
    road_c: float | None = None


class RoadWeatherPolicy:
    """Implements `actors.policy.Policy` for ROAD_WEATHER; stations take no commands."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        routes: Mapping[str, str] | None = None,
        freeze_at_c: float = 1.0,
        humid_pct: float = 80.0,
        recover_above_c: float = 3.0,
    ) -> None:
        if recover_above_c <= freeze_at_c:
            raise InvalidArgumentError("recover_above_c: must be above freeze_at_c")
        self.group = group
        self.freeze_at_c, self.humid_pct, self.recover_above_c = (
            freeze_at_c,
            humid_pct,
            recover_above_c,
        )
        given = routes or {}
        self._devices = {d.dev_eui: d for d in devices}
        self.route_of: dict[str, str] = {
            d.dev_eui: given.get(d.dev_eui, default_route(group)) for d in devices
        }
        self._stations: dict[str, _Station] = {d.dev_eui: _Station() for d in devices}
        self._open_routes: set[str] = set()  # routes with a salting task asked for

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        out: list[Decision] = []
        for item in batch:
            station = self._stations.get(item.dev_eui)
            if station is None or item.WhichOneof("reading") != "road_weather":
                continue
            out.extend(self._apply(item.dev_eui, station, item.road_weather))
        return out

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def _apply(
        self, eui: str, station: _Station, r: telemetry_pb2.RoadWeatherReading
    ) -> list[Decision]:
        station.road_c = r.road_temperature_c
        icy = r.ice_detected or (
            r.road_temperature_c <= self.freeze_at_c and r.humidity_pct >= self.humid_pct
        )
        recovered = not r.ice_detected and r.road_temperature_c > self.recover_above_c
        device = self._devices[eui]
        route = self.route_of[eui]
        state = "ice detected" if r.ice_detected else "risk of ice"
        detail = (
            f"{state} on {route}: road {r.road_temperature_c:.1f} °C, "
            f"humidity {r.humidity_pct:.0f} % at {device.name}"
        )
        out: list[Decision] = []
        if icy and not station.at_risk:
            station.at_risk = True
            out.append(RaiseAlarm(eui, ALARM, operations_pb2.MAJOR, detail))
        elif recovered and station.at_risk:
            station.at_risk = False
            out.append(ClearAlarm(eui, ALARM, f"road back at {r.road_temperature_c:.1f} °C"))
        if station.at_risk and route not in self._open_routes:
            self._open_routes.add(route)
            out.append(
                RequestTask(
                    department=operations_pb2.SNOW_SERVICE,
                    kind=TASK,
                    priority=1 if r.ice_detected else 2,
                    latitude=device.latitude,
                    longitude=device.longitude,
                    detail=detail,
                    origin=f"route:{route}",
                )
            )
        elif route in self._open_routes and not self._route_at_risk(route):
            self._open_routes.discard(route)  # the next freeze asks for a new round
        return out

    def _route_at_risk(self, route: str) -> bool:
        return any(s.at_risk for eui, s in self._stations.items() if self.route_of[eui] == route)

    # --- queries ---

    def open_routes(self) -> list[str]:
        """Routes with a salting task asked for and not yet recovered."""
        return sorted(self._open_routes)

    def snapshot(self) -> Snapshot:
        return {
            "stations": {
                eui: {"at_risk": s.at_risk, "road_c": s.road_c} for eui, s in self._stations.items()
            },
            "open_routes": sorted(self._open_routes),
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            stations: dict[str, Any] = snapshot["stations"]
            restored = {
                eui: _Station(
                    bool(s["at_risk"]), None if s["road_c"] is None else float(s["road_c"])
                )
                for eui, s in stations.items()
            }
            open_routes = {str(route) for route in snapshot["open_routes"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not a road weather snapshot ({exc!r})") from exc
        self._stations = {eui: restored.get(eui, _Station()) for eui in self._stations}
        self._open_routes = open_routes & set(self.route_of.values())


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return RoadWeatherPolicy(group, devices)
