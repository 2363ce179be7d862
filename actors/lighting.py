"""Street lighting: off by day, a dimmed base level at night, full for passers-by.

Night is when the sun is below `switch_elevation_deg` at the group's location
(by default sunset to sunrise, computed by `actors.solar`, not fixed hours).
The base level goes to the whole group as one group command at dusk and dawn;
a lamp that reports presence is raised with its own command for `hold_s` from
when it saw the pedestrians, then put back to the base level. Presence already
older than the hold (a late or replayed uplink) raises nothing, and at most
`raises_per_min` lamps of the group are raised per minute: each raise costs a
ledger entry and two downlinks, and a busy commune reports presence on most
uplinks of the night. Faults raise a minor alarm and one repair
task for the roads department, cleared when the lamp reports no fault.

Energy: each lamp's reported power is integrated between its readings; the
baseline is what the same lit hours would have used at 100 % (the lamp's rated
power, estimated from its readings, else `rated_w`). Both totals are reported
per group, so the saving of dimming can be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from actors import solar
from actors.decisions import (
    ClearAlarm,
    Decision,
    IssueCommand,
    RaiseAlarm,
    ReportMetric,
    RequestTask,
)
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, command_pb2, operations_pb2, telemetry_pb2

ASSET_CLASS = assets_pb2.AssetClass.STREET_LAMP
FAULT_ALARM = "lamp_fault"
REPAIR_TASK = "repair_lamp"
ENERGY_METRIC = "lighting.energy_wh"
BASELINE_METRIC = "lighting.baseline_wh"
# A rated power is only estimated from a reading bright enough for the standby draw not to matter.
_MIN_PCT_FOR_RATING = 20.0
_SNAPSHOT_VERSION = 1


def _ts(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgumentError("now must be an aware datetime")
    return now.timestamp()


class LightingPolicy:
    """The lighting policy of one group of street lamps."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        base_pct: float = 30.0,
        presence_pct: float = 100.0,
        hold_s: float = 300.0,
        switch_elevation_deg: float = solar.SUNRISE_SUNSET_DEG,
        rated_w: float = 60.0,
        metric_interval_s: float = 900.0,
        max_gap_s: float = 3600.0,
        raises_per_min: int = 30,
    ) -> None:
        if not 0.0 <= base_pct <= 100.0:
            raise ConfigError(f"base_pct must be within 0..100, got {base_pct}")
        if not base_pct <= presence_pct <= 100.0:
            raise ConfigError(f"presence_pct must be within base_pct..100, got {presence_pct}")
        for name, value in (
            ("hold_s", hold_s),
            ("rated_w", rated_w),
            ("metric_interval_s", metric_interval_s),
            ("max_gap_s", max_gap_s),
            ("raises_per_min", raises_per_min),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        self.group = group
        self.base_pct = base_pct
        self.presence_pct = presence_pct
        self.hold_s = hold_s
        self.switch_elevation_deg = switch_elevation_deg
        self.rated_w = rated_w
        self.metric_interval_s = metric_interval_s
        self.max_gap_s = max_gap_s
        self.raises_per_min = raises_per_min
        self._devices = {d.dev_eui: d for d in devices}
        if devices:
            self.latitude = sum(d.latitude for d in devices) / len(devices)
            self.longitude = sum(d.longitude for d in devices) / len(devices)
        else:
            self.latitude, self.longitude = solar.DIJON_LATITUDE, solar.DIJON_LONGITUDE
        self._reset()

    def _reset(self) -> None:
        self._group_level: float | None = None  # what the last group command set
        self._lamp_level: dict[str, float] = {}  # lamps commanded away from the group level
        self._holds: dict[str, float] = {}  # devEui -> end of its presence hold (POSIX s)
        self._faults: set[str] = set()
        # devEui -> (observed at, power W, lit, faulty) of its previous reading
        self._last: dict[str, tuple[float, float, bool, bool]] = {}
        self._rated: dict[str, float] = {}  # devEui -> estimated full-power draw, W
        self._energy_wh = 0.0
        self._baseline_wh = 0.0
        self._reported: tuple[float, float] | None = None  # totals at the last report
        self._reported_at: float | None = None
        self._raise_minute = 0  # the minute (POSIX s // 60) the raise count is for
        self._raises_in_minute = 0
        self.raises_skipped = 0  # over budget; not state worth restoring

    # --- what the policy wants -------------------------------------------------------------

    def level_at(self, now: datetime) -> float:
        """The group's base level at `now`: 0 by day, `base_pct` at night."""
        elevation = solar.elevation_deg(now, self.latitude, self.longitude)
        return self.base_pct if elevation < self.switch_elevation_deg else 0.0

    def _group_command(self, level: float, reason: str) -> IssueCommand:
        return IssueCommand(
            command=command_pb2.Command(
                target=command_pb2.Target(group=self.group),
                asset_class=ASSET_CLASS,
                set_brightness=command_pb2.SetBrightness(brightness_pct=level),
            ),
            reason=reason,
        )

    def _lamp_command(self, dev_eui: str, level: float, reason: str) -> IssueCommand:
        return IssueCommand(
            command=command_pb2.Command(
                target=command_pb2.Target(dev_eui=dev_eui),
                asset_class=ASSET_CLASS,
                set_brightness=command_pb2.SetBrightness(brightness_pct=level),
            ),
            reason=reason,
        )

    # --- events ------------------------------------------------------------------------------

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_s = _ts(now)
        level = self.level_at(now)
        decisions: list[Decision] = []
        for item in batch:
            if item.WhichOneof("reading") != "lamp":
                continue
            reading, eui = item.lamp, item.dev_eui
            decisions.extend(self._fault(eui, reading.fault))
            observed = item.observed_at_ms / 1000 if item.observed_at_ms > 0 else now_s
            self._account(eui, reading, observed)
            if reading.presence_count > 0 and level > 0 and not reading.fault:
                decisions.extend(self._raise(eui, now_s, observed, reading.presence_count))
        return decisions

    def _raise(self, eui: str, now_s: float, observed: float, count: int) -> list[Decision]:
        until = min(observed, now_s) + self.hold_s
        if until <= now_s:
            return []  # the pedestrians are long gone
        current = self._lamp_level.get(eui, self._group_level)
        if current == self.presence_pct:
            self._holds[eui] = max(self._holds.get(eui, 0.0), until)
            return []  # already raised (or the group is at full): the hold is extended
        minute = int(now_s // 60)
        if minute != self._raise_minute:
            self._raise_minute, self._raises_in_minute = minute, 0
        if self._raises_in_minute >= self.raises_per_min:
            self.raises_skipped += 1
            return []
        self._raises_in_minute += 1
        self._holds[eui] = until
        self._lamp_level[eui] = self.presence_pct
        return [self._lamp_command(eui, self.presence_pct, f"presence: {count} pedestrian(s)")]

    def _fault(self, eui: str, fault: bool) -> list[Decision]:
        if fault and eui not in self._faults:
            self._faults.add(eui)
            device = self._devices.get(eui)
            name = device.name if device else eui
            lat = device.latitude if device else self.latitude
            lon = device.longitude if device else self.longitude
            detail = f"street lamp {name} ({eui}) reports a fault"
            return [
                RaiseAlarm(eui, FAULT_ALARM, operations_pb2.Severity.MINOR, detail),
                RequestTask(
                    department=operations_pb2.Department.ROADS,
                    kind=REPAIR_TASK,
                    priority=3,
                    latitude=lat,
                    longitude=lon,
                    detail=detail,
                    origin=f"{eui}/{FAULT_ALARM}",
                ),
            ]
        if not fault and eui in self._faults:
            self._faults.discard(eui)
            return [ClearAlarm(eui, FAULT_ALARM, "the lamp reports no fault")]
        return []

    def _account(self, eui: str, reading: telemetry_pb2.LampReading, observed: float) -> None:
        """Integrate the previous reading's draw up to this one (sample and hold)."""
        lit = reading.brightness_pct > 0 and not reading.fault
        if lit and reading.brightness_pct >= _MIN_PCT_FOR_RATING and reading.power_w > 0:
            self._rated[eui] = reading.power_w * 100.0 / reading.brightness_pct
        previous = self._last.get(eui)
        if previous is not None and observed <= previous[0]:
            return  # a duplicate or late uplink: its interval was counted already
        if previous is not None:
            at, power, was_lit, was_faulty = previous
            elapsed = observed - at
            if elapsed <= self.max_gap_s:  # past a long silence the lamp's state is unknown
                hours = elapsed / 3600.0
                self._energy_wh += power * hours
                if was_lit:
                    self._baseline_wh += self._rated.get(eui, self.rated_w) * hours
                elif not was_faulty:
                    self._baseline_wh += power * hours  # off or standby: the same without dimming
        self._last[eui] = (observed, reading.power_w, lit, reading.fault)

    def on_tick(self, now: datetime) -> list[Decision]:
        now_s = _ts(now)
        decisions: list[Decision] = []
        level = self.level_at(now)
        if level != self._group_level:
            decisions.extend(self._set_group(level, now_s))
        for eui, until in sorted(self._holds.items()):
            if now_s < until:
                continue
            del self._holds[eui]
            if eui in self._lamp_level and self._group_level is not None:
                del self._lamp_level[eui]
                decisions.append(self._lamp_command(eui, self._group_level, "presence hold over"))
        decisions.extend(self._metrics(now_s))
        return decisions

    def _set_group(self, level: float, now_s: float) -> list[IssueCommand]:
        reason = "night: base level" if level > 0 else "day: lamps off"
        out = [self._group_command(level, reason)]
        self._group_level = level
        # The group command resets every lamp, raised ones included.
        self._lamp_level.clear()
        if level == 0:
            self._holds.clear()
        for eui, until in sorted(self._holds.items()):
            if now_s < until and level != self.presence_pct:
                self._lamp_level[eui] = self.presence_pct
                out.append(self._lamp_command(eui, self.presence_pct, "presence hold"))
        return out

    def _metrics(self, now_s: float) -> list[Decision]:
        totals = (round(self._energy_wh, 3), round(self._baseline_wh, 3))
        due = self._reported_at is None or now_s - self._reported_at >= self.metric_interval_s
        if not due or totals == self._reported:
            return []
        self._reported, self._reported_at = totals, now_s
        attributes = {"group": self.group}
        return [
            ReportMetric(ENERGY_METRIC, totals[0], dict(attributes)),
            ReportMetric(BASELINE_METRIC, totals[1], dict(attributes)),
        ]

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        """The base level as one group command, then the lamps still held by presence."""
        now_s = _ts(now)
        level = self.level_at(now)
        self._holds = {eui: t for eui, t in self._holds.items() if now_s < t}
        return self._set_group(level, now_s)

    # --- state -------------------------------------------------------------------------------

    @property
    def energy_wh(self) -> float:
        return self._energy_wh

    @property
    def baseline_wh(self) -> float:
        return self._baseline_wh

    @property
    def active_faults(self) -> frozenset[str]:
        return frozenset(self._faults)

    def snapshot(self) -> Snapshot:
        return {
            "version": _SNAPSHOT_VERSION,
            "group_level": self._group_level,
            "lamp_level": dict(self._lamp_level),
            "holds": dict(self._holds),
            "faults": sorted(self._faults),
            "last": {eui: list(v) for eui, v in self._last.items()},
            "rated": dict(self._rated),
            "energy_wh": self._energy_wh,
            "baseline_wh": self._baseline_wh,
            "reported": None if self._reported is None else list(self._reported),
            "reported_at": self._reported_at,
            "raise_minute": self._raise_minute,
            "raises_in_minute": self._raises_in_minute,
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            if snapshot["version"] != _SNAPSHOT_VERSION:
                raise InvalidArgumentError(f"snapshot version {snapshot['version']} is unknown")
            group_level = snapshot["group_level"]
            reported = snapshot["reported"]
            reported_at = snapshot["reported_at"]
            state: dict[str, Any] = {
                "group_level": None if group_level is None else float(group_level),
                "lamp_level": {str(k): float(v) for k, v in snapshot["lamp_level"].items()},
                "holds": {str(k): float(v) for k, v in snapshot["holds"].items()},
                "faults": {str(e) for e in snapshot["faults"]},
                "last": {
                    str(k): (float(v[0]), float(v[1]), bool(v[2]), bool(v[3]))
                    for k, v in snapshot["last"].items()
                },
                "rated": {str(k): float(v) for k, v in snapshot["rated"].items()},
                "energy": float(snapshot["energy_wh"]),
                "baseline": float(snapshot["baseline_wh"]),
                "reported": None if reported is None else (float(reported[0]), float(reported[1])),
                "reported_at": None if reported_at is None else float(reported_at),
                "raise_minute": int(snapshot["raise_minute"]),
                "raises_in_minute": int(snapshot["raises_in_minute"]),
            }
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise InvalidArgumentError(f"lighting snapshot is malformed: {exc!r}") from exc
        self._group_level = state["group_level"]
        self._lamp_level = state["lamp_level"]
        self._holds = state["holds"]
        self._faults = state["faults"]
        self._last = state["last"]
        self._rated = state["rated"]
        self._energy_wh = state["energy"]
        self._baseline_wh = state["baseline"]
        self._reported = state["reported"]
        self._reported_at = state["reported_at"]
        self._raise_minute = state["raise_minute"]
        self._raises_in_minute = state["raises_in_minute"]


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return LightingPolicy(group, devices)
