"""Traffic signals with bus priority: a green extension for a bus about to reach the junction.

Routing expectation: the actor shell hands this policy the TRAFFIC_SIGNAL
telemetry of its group AND the BUS telemetry of the whole city (every bus
uplink goes to every traffic group; each group keeps only the buses near its
own signals, after a cheap bounding-box test).

A signal grants priority to a bus (`SignalPriority(extend_green_ms)`) when the
bus is in service on a line the signal serves, moving, no earlier than
`min_delay_s` behind schedule, within `approach_m` of the signal, heading at it,
and close enough to clear the junction within the maximum extension. Safety
bounds: an extension never exceeds `max_extension_s`; one active priority per
signal (a second bus during an extension gets nothing); after an extension
ends the crossing flow keeps at least `min_cross_green_s` before the next; a
bus is served once per approach (`rearm_s`); a faulty or flashing signal grants
nothing. Delay saved is counted when the signal confirms it served a priority
(`bus_priority_active` in its next reading), `saved_per_priority_s` each: the
red wait a bus avoids on average (with the simulated controllers' 70-100 s
cycle and 55 % red, red^2 / (2 cycle) is about 13 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from actors.decisions import (
    ClearAlarm,
    Decision,
    IssueCommand,
    RaiseAlarm,
    ReportMetric,
    RequestTask,
)
from actors.geo import M_PER_DEG_LAT, bearing_deg, haversine_m
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, command_pb2, operations_pb2, telemetry_pb2

ASSET_CLASS = assets_pb2.AssetClass.TRAFFIC_SIGNAL
FAULT_ALARM = "signal_fault"
REPAIR_TASK = "repair_signal"
DELAY_SAVED_METRIC = "traffic.bus_delay_saved_s"
_SNAPSHOT_VERSION = 1


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _ts(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgumentError("now must be an aware datetime")
    return now.timestamp()


class TrafficPolicy:
    """Bus priority and fault handling for one group of signalised junctions."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        approach_m: float = 250.0,
        min_speed_kmh: float = 5.0,
        heading_tolerance_deg: float = 35.0,
        max_extension_s: float = 15.0,
        clearance_s: float = 3.0,
        min_cross_green_s: float = 20.0,
        rearm_s: float = 120.0,
        min_delay_s: float = 0.0,
        saved_per_priority_s: float = 13.0,
        lines_by_signal: Mapping[str, Iterable[int]] | None = None,
    ) -> None:
        for name, value in (
            ("approach_m", approach_m),
            ("max_extension_s", max_extension_s),
            ("min_speed_kmh", min_speed_kmh),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name, value in (
            ("clearance_s", clearance_s),
            ("min_cross_green_s", min_cross_green_s),
            ("rearm_s", rearm_s),
            ("saved_per_priority_s", saved_per_priority_s),
        ):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if clearance_s > max_extension_s:
            raise ConfigError("clearance_s must not exceed max_extension_s")
        if not 0 <= heading_tolerance_deg <= 90:
            raise ConfigError(
                f"heading_tolerance_deg must be within 0..90, got {heading_tolerance_deg}"
            )
        self.group = group
        self.approach_m = approach_m
        self.min_speed_kmh = min_speed_kmh
        self.heading_tolerance_deg = heading_tolerance_deg
        self.max_extension_s = max_extension_s
        self.clearance_s = clearance_s
        self.min_cross_green_s = min_cross_green_s
        self.rearm_s = rearm_s
        self.min_delay_s = min_delay_s
        self.saved_per_priority_s = saved_per_priority_s
        signals = [d for d in devices if d.asset_class == ASSET_CLASS]
        self._signals = {d.dev_eui: d for d in sorted(signals, key=lambda d: d.dev_eui)}
        # None: every signal serves every line (it is on a corridor, or equipped anyway).
        self._lines: dict[str, frozenset[int]] | None = (
            None
            if lines_by_signal is None
            else {eui: frozenset(lines) for eui, lines in lines_by_signal.items()}
        )
        if signals:
            margin_lat = approach_m / M_PER_DEG_LAT
            margin_lon = margin_lat / max(0.01, math.cos(math.radians(signals[0].latitude)))
            self._bbox = (
                min(d.latitude for d in signals) - margin_lat,
                min(d.longitude for d in signals) - margin_lon,
                max(d.latitude for d in signals) + margin_lat,
                max(d.longitude for d in signals) + margin_lon,
            )
        else:
            self._bbox = (0.0, 0.0, -1.0, -1.0)  # empty: no bus is ever near
        self._active_until: dict[str, float] = {}  # signal -> end of its current extension
        self._served: dict[str, float] = {}  # "signal|bus" -> when that bus was served there
        self._pending: dict[str, int] = {}  # signal -> priorities not yet confirmed
        self._phase: dict[str, int] = {}  # signal -> last reported phase
        self._faults: set[str] = set()
        self._saved_s = 0.0

    # --- events ------------------------------------------------------------------------------

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_s = _ts(now)
        decisions: list[Decision] = []
        for item in batch:
            kind = item.WhichOneof("reading")
            if kind == "traffic_signal":
                decisions.extend(self._signal_reading(item, now_s))
            elif kind == "vehicle" and item.asset_class == assets_pb2.AssetClass.BUS:
                decisions.extend(self._bus_reading(item.dev_eui, item.vehicle, now_s))
        return decisions

    def _signal_reading(self, item: telemetry_pb2.Telemetry, now_s: float) -> list[Decision]:
        eui, reading = item.dev_eui, item.traffic_signal
        decisions: list[Decision] = []
        self._phase[eui] = reading.phase
        if reading.fault and eui not in self._faults:
            self._faults.add(eui)
            decisions.extend(self._fault_raised(eui))
        elif not reading.fault and eui in self._faults:
            self._faults.discard(eui)
            decisions.append(ClearAlarm(eui, FAULT_ALARM, "the signal reports no fault"))
        pending = self._pending.get(eui, 0)
        if pending and reading.bus_priority_active:
            del self._pending[eui]
            self._saved_s += pending * self.saved_per_priority_s
            decisions.append(
                ReportMetric(DELAY_SAVED_METRIC, round(self._saved_s, 3), {"group": self.group})
            )
        elif pending and now_s >= self._active_until.get(eui, 0.0):
            del self._pending[eui]  # the window passed and the controller did not serve it
        return decisions

    def _centre(self) -> tuple[float, float]:
        """Where a device missing from the group's list is taken to be (for its repair task)."""
        devices = list(self._signals.values())
        if not devices:
            return 47.32, 5.04  # Dijon
        return (
            sum(d.latitude for d in devices) / len(devices),
            sum(d.longitude for d in devices) / len(devices),
        )

    def _fault_raised(self, eui: str) -> list[Decision]:
        device = self._signals.get(eui)
        name = device.name if device else eui
        detail = f"traffic signal {name} ({eui}) reports a fault"
        lat, lon = (device.latitude, device.longitude) if device else self._centre()
        return [
            RaiseAlarm(eui, FAULT_ALARM, operations_pb2.Severity.MAJOR, detail),
            RequestTask(
                department=operations_pb2.Department.ROADS,
                kind=REPAIR_TASK,
                priority=2,
                latitude=lat,
                longitude=lon,
                detail=detail,
                origin=f"{eui}/{FAULT_ALARM}",
            ),
        ]

    def _bus_reading(
        self, bus: str, reading: telemetry_pb2.VehicleReading, now_s: float
    ) -> list[Decision]:
        if reading.line == 0 or reading.speed_kmh < self.min_speed_kmh:
            return []  # not in service, or stopped (at a stop, in a queue): no priority
        if reading.delay_s < self.min_delay_s:
            return []
        lat, lon = reading.latitude, reading.longitude
        south, west, north, east = self._bbox
        if not (south <= lat <= north and west <= lon <= east):
            return []
        speed_ms = reading.speed_kmh / 3.6
        decisions: list[Decision] = []
        for eui, signal in self._signals.items():
            if self._lines is not None and reading.line not in self._lines.get(eui, ()):
                continue
            distance = haversine_m(lat, lon, signal.latitude, signal.longitude)
            if distance > self.approach_m:
                continue
            towards = bearing_deg(lat, lon, signal.latitude, signal.longitude)
            if _angle_between(reading.heading_deg, towards) > self.heading_tolerance_deg:
                continue  # moving away, or passing by on another street
            eta_s = distance / speed_ms
            if eta_s + self.clearance_s > self.max_extension_s:
                continue  # too far to clear within the maximum: wait for a closer fix
            if not self._may_grant(eui, bus, now_s):
                continue
            extension_ms = math.ceil((eta_s + self.clearance_s) * 10) * 100
            extension_ms = min(extension_ms, int(self.max_extension_s * 1000))
            self._active_until[eui] = now_s + extension_ms / 1000
            self._served[f"{eui}|{bus}"] = now_s
            self._pending[eui] = self._pending.get(eui, 0) + 1
            decisions.append(
                IssueCommand(
                    command=command_pb2.Command(
                        target=command_pb2.Target(dev_eui=eui),
                        asset_class=ASSET_CLASS,
                        signal_priority=command_pb2.SignalPriority(extend_green_ms=extension_ms),
                    ),
                    reason=(
                        f"bus priority: line {reading.line} bus {bus} {distance:.0f} m away, "
                        f"{reading.delay_s:.0f} s late"
                    ),
                )
            )
        return decisions

    def _may_grant(self, eui: str, bus: str, now_s: float) -> bool:
        if eui in self._faults or self._phase.get(eui) == telemetry_pb2.SignalPhase.FLASHING_AMBER:
            return False
        until = self._active_until.get(eui)
        # No stacking, and the crossing flow gets its minimum green after each extension.
        if until is not None and now_s < until + self.min_cross_green_s:
            return False
        served = self._served.get(f"{eui}|{bus}")
        return served is None or now_s - served >= self.rearm_s

    def on_tick(self, now: datetime) -> list[Decision]:
        """Forget extensions and served buses whose bounds have passed; decides nothing."""
        now_s = _ts(now)
        self._active_until = {
            eui: until
            for eui, until in self._active_until.items()
            if now_s < until + self.min_cross_green_s or eui in self._pending
        }
        self._served = {k: t for k, t in self._served.items() if now_s - t < self.rearm_s}
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        """Every signal back on its own cycle (after an operator's override of the group)."""
        _ts(now)
        return [
            IssueCommand(
                command=command_pb2.Command(
                    target=command_pb2.Target(group=self.group),
                    asset_class=ASSET_CLASS,
                    set_signal_mode=command_pb2.SetSignalMode(
                        phase=telemetry_pb2.SignalPhase.SIGNAL_PHASE_UNSPECIFIED
                    ),
                ),
                reason="signals back on their normal cycle",
            )
        ]

    # --- state -------------------------------------------------------------------------------

    @property
    def bus_delay_saved_s(self) -> float:
        return self._saved_s

    def snapshot(self) -> Snapshot:
        return {
            "version": _SNAPSHOT_VERSION,
            "active_until": dict(self._active_until),
            "served": dict(self._served),
            "pending": dict(self._pending),
            "phase": dict(self._phase),
            "faults": sorted(self._faults),
            "saved_s": self._saved_s,
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            if snapshot["version"] != _SNAPSHOT_VERSION:
                raise InvalidArgumentError(f"snapshot version {snapshot['version']} is unknown")
            state: dict[str, Any] = {
                "active": {str(k): float(v) for k, v in snapshot["active_until"].items()},
                "served": {str(k): float(v) for k, v in snapshot["served"].items()},
                "pending": {str(k): int(v) for k, v in snapshot["pending"].items()},
                "phase": {str(k): int(v) for k, v in snapshot["phase"].items()},
                "faults": {str(e) for e in snapshot["faults"]},
                "saved": float(snapshot["saved_s"]),
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"traffic snapshot is malformed: {exc!r}") from exc
        self._active_until = state["active"]
        self._served = state["served"]
        self._pending = state["pending"]
        self._phase = state["phase"]
        self._faults = state["faults"]
        self._saved_s = state["saved"]


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return TrafficPolicy(group, devices)
