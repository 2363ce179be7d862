"""Company cars of one department: where each car is, and which one to send.

The group is the department (`roads`, or `roads-2` once split past the group
size). The policy remembers each car's last GPS fix and whether it is busy
with a task; `assign` picks the nearest available car by great-circle
distance and marks it busy until `release`. A car whose last fix is older
than `max_fix_age_s` is not offered: it may be off, in a garage or out of
coverage, and sending it would be a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from actors.decisions import Decision, IssueCommand, ReportMetric
from actors.geo import haversine_m
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError, NotFoundError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

DepartmentId: TypeAlias = operations_pb2.Department.ValueType


def department_of_group(group: str) -> DepartmentId:
    """`roads` or `roads-2` -> ROADS; a group that names no department -> UNSPECIFIED."""
    base = re.sub(r"-\d+$", "", group).upper()
    try:
        return operations_pb2.Department.Value(base)
    except ValueError:
        return operations_pb2.DEPARTMENT_UNSPECIFIED


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _observed_ms(item: telemetry_pb2.Telemetry, now_ms: int) -> int:
    # The device's time when it is known and not in the future, else the post's.
    return item.observed_at_ms if 0 < item.observed_at_ms <= now_ms else now_ms


@dataclass
class _Car:
    latitude: float | None = None
    longitude: float | None = None
    fix_ms: int | None = None
    task: str | None = None  # the task it is busy with; None when available


class DispatchPolicy:
    """Implements `actors.policy.Policy` for COMPANY_CAR; commands none."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        department: DepartmentId | None = None,
        max_fix_age_s: float = 600.0,
    ) -> None:
        if max_fix_age_s <= 0:
            raise InvalidArgumentError("max_fix_age_s: must be positive")
        self.group = group
        self.department = department_of_group(group) if department is None else department
        self.max_fix_age_s = max_fix_age_s
        self._cars: dict[str, _Car] = {d.dev_eui: _Car() for d in devices}
        self._reported: int | None = None

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_ms = _ms(now)
        for item in batch:
            car = self._cars.get(item.dev_eui)
            if car is None or item.WhichOneof("reading") != "vehicle":
                continue  # the router only sends this group's cars; anything else is ignored
            v = item.vehicle
            if v.latitude == 0.0 and v.longitude == 0.0:
                continue  # no GPS channel in this uplink: keep the last fix
            at = _observed_ms(item, now_ms)
            if car.fix_ms is None or at >= car.fix_ms:
                car.latitude, car.longitude, car.fix_ms = v.latitude, v.longitude, at
        return []

    def on_tick(self, now: datetime) -> list[Decision]:
        available = len(self.available(now))
        if available == self._reported:
            return []
        self._reported = available
        return [
            ReportMetric(
                "dispatch.available_cars",
                available,
                {"department": operations_pb2.Department.Name(self.department).lower()},
            )
        ]

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    # --- queries and assignment (the post calls these for task assignment) ---

    def available(self, now: datetime) -> list[str]:
        """Cars free of tasks with a recent fix, by devEui."""
        oldest = _ms(now) - self.max_fix_age_s * 1000
        return sorted(
            eui
            for eui, car in self._cars.items()
            if car.task is None and car.fix_ms is not None and car.fix_ms >= oldest
        )

    def assign(
        self,
        task_location: tuple[float, float],
        department: DepartmentId,
        now: datetime,
        *,
        task: str = "task",
    ) -> str | None:
        """The nearest available car of `department`, now marked busy; None if there is none."""
        lat, lon = _location(task_location)
        if department != self.department:
            return None
        best: tuple[float, str] | None = None
        for eui in self.available(now):
            car = self._cars[eui]
            if car.latitude is None or car.longitude is None:
                continue
            candidate = (haversine_m(lat, lon, car.latitude, car.longitude), eui)
            if best is None or candidate < best:
                best = candidate
        if best is None:
            return None
        self._cars[best[1]].task = task
        return best[1]

    def release(self, dev_eui: str) -> None:
        """The car is free again (its task is done or cancelled); releasing a free car is a no-op."""
        car = self._cars.get(dev_eui)
        if car is None:
            raise NotFoundError(f"dev_eui: no car {dev_eui!r} in {self.group}")
        car.task = None

    def busy_with(self, dev_eui: str) -> str | None:
        car = self._cars.get(dev_eui)
        return None if car is None else car.task

    def snapshot(self) -> Snapshot:
        return {
            "cars": {
                eui: {
                    "latitude": car.latitude,
                    "longitude": car.longitude,
                    "fix_ms": car.fix_ms,
                    "task": car.task,
                }
                for eui, car in self._cars.items()
            }
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            cars: dict[str, Any] = snapshot["cars"]
            restored = {
                eui: _Car(
                    None if s["latitude"] is None else float(s["latitude"]),
                    None if s["longitude"] is None else float(s["longitude"]),
                    None if s["fix_ms"] is None else int(s["fix_ms"]),
                    None if s["task"] is None else str(s["task"]),
                )
                for eui, s in cars.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not a dispatch snapshot ({exc!r})") from exc
        # Cars registered since the snapshot start unknown; cars gone from the group are dropped.
        self._cars = {eui: restored.get(eui, _Car()) for eui in self._cars}
        self._reported = None


def _location(point: tuple[float, float]) -> tuple[float, float]:
    try:
        lat, lon = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidArgumentError("task_location: must be (latitude, longitude)") from exc
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise InvalidArgumentError("task_location: latitude must be within -90..90")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise InvalidArgumentError("task_location: longitude must be within -180..180")
    return lat, lon


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return DispatchPolicy(group, devices)
