"""Parking sensors of one zone (the group): free spaces, and the nearest ones for citizens.

A space counts as free only once its sensor has said so: a sensor not heard
since the post started is unknown, and sending a driver to an unknown space
is worse than not mentioning it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from actors.decisions import Decision, IssueCommand, ReportMetric
from actors.geo import haversine_m
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import telemetry_pb2

METRIC = "parking.free_spaces"


class ParkingPolicy:
    """Implements `actors.policy.Policy` for PARKING_SPOT; sensors take no commands."""

    def __init__(self, group: str, devices: Sequence[Device]) -> None:
        self.group = group
        self._where: dict[str, tuple[float, float]] = {
            d.dev_eui: (d.latitude, d.longitude) for d in devices
        }
        self._occupied: dict[str, bool] = {}  # devEui -> occupied, for spaces heard from
        self._reported: int | None = None

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        for item in batch:
            if item.dev_eui in self._where and item.WhichOneof("reading") == "parking":
                self._occupied[item.dev_eui] = item.parking.occupied
        return self._report_if_changed()

    def on_tick(self, now: datetime) -> list[Decision]:
        return self._report_if_changed()  # after a restore, the first tick reports the figure

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def _free_count(self) -> int:
        return sum(1 for occupied in self._occupied.values() if not occupied)

    def _report_if_changed(self) -> list[Decision]:
        free = self._free_count()
        if free == self._reported:
            return []
        self._reported = free
        return [ReportMetric(METRIC, free, {"zone": self.group})]

    # --- queries for the citizen API ---

    def free_spaces(self) -> dict[str, int]:
        """{zone: free spaces}; merge the answers of every zone's actor for the city."""
        return {self.group: self._free_count()}

    def capacity(self) -> dict[str, int]:
        """{zone: spaces with a sensor}."""
        return {self.group: len(self._where)}

    def nearest_free(self, lat: float, lon: float, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` free spaces nearest to (lat, lon): (devEui, metres), nearest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError("limit: must be a positive integer")
        lat = _coordinate("latitude", lat, 90.0)
        lon = _coordinate("longitude", lon, 180.0)
        found = [
            (eui, haversine_m(lat, lon, *self._where[eui]))
            for eui, occupied in self._occupied.items()
            if not occupied
        ]
        found.sort(key=lambda pair: (pair[1], pair[0]))
        return found[:limit]

    def snapshot(self) -> Snapshot:
        return {"occupied": dict(self._occupied)}

    def restore(self, snapshot: Snapshot) -> None:
        try:
            occupied: dict[str, Any] = snapshot["occupied"]
            restored = {str(eui): bool(value) for eui, value in occupied.items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not a parking snapshot ({exc!r})") from exc
        self._occupied = {eui: v for eui, v in restored.items() if eui in self._where}
        self._reported = None


def _coordinate(name: str, value: float, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name}: must be a number")
    number = float(value)
    if not (math.isfinite(number) and -bound <= number <= bound):
        raise InvalidArgumentError(f"{name}: must be within -{bound:g}..{bound:g}")
    return number


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return ParkingPolicy(group, devices)
