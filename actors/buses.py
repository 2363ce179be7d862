"""Bus lines (class BUS, one group per line): where each bus is and how late.

The city's signals give buses priority (actors/traffic.py, which also receives
bus telemetry); this policy keeps each line's picture for operators and the
citizens' traffic view: the latest position and delay of every bus, and the
line's mean delay as a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from actors.decisions import Decision, IssueCommand, ReportMetric
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import assets_pb2, telemetry_pb2


class BusLinePolicy:
    def __init__(self, group: str, devices: Sequence[Device]) -> None:
        self.group = group
        self._members = {d.dev_eui for d in devices}
        # devEui -> (latitude, longitude, delay_s, observed_at_ms)
        self.buses: dict[str, tuple[float, float, float, int]] = {}

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        changed = False
        for item in batch:
            if item.asset_class != assets_pb2.BUS or item.dev_eui not in self._members:
                continue
            reading = item.vehicle
            self.buses[item.dev_eui] = (
                reading.latitude,
                reading.longitude,
                reading.delay_s,
                item.observed_at_ms,
            )
            changed = True
        if not changed:
            return []
        return [ReportMetric("buses.mean_delay_s", self.mean_delay_s(), {"line": self.group})]

    def mean_delay_s(self) -> float:
        if not self.buses:
            return 0.0
        return sum(delay for _, _, delay, _ in self.buses.values()) / len(self.buses)

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []  # buses take no commands from the post

    def snapshot(self) -> Snapshot:
        return {"buses": {eui: list(v) for eui, v in self.buses.items()}}

    def restore(self, snapshot: Snapshot) -> None:
        try:
            self.buses = {
                eui: (float(v[0]), float(v[1]), float(v[2]), int(v[3]))
                for eui, v in snapshot["buses"].items()
            }
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidArgumentError(f"snapshot: not a bus line snapshot ({exc})") from exc


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return BusLinePolicy(group, devices)
