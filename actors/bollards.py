"""Bollards of the protected old town: access by allow-list, a declared fail-safe position.

Who passes: emergency vehicles always; residents on the allow-list (plates);
deliveries within the delivery windows (local time), and only registered
delivery vehicles when a delivery list is given. A granted request lowers the
bollard (unless it already is) and schedules its raise after `passage_s`; the
raise waits while the bollard, since it was lowered, reports a vehicle on it.
Outside passages every bollard stands RAISED (the old town is closed).

Fail-safe: each bollard declares a position (LOWERED by default, so that
emergency services are never locked out). `fail_safe_commands()` puts the group
in it and holds it there, with no scheduled raise, until `release_fail_safe`.
Faults raise a major alarm and one repair task for the roads department.
Operator overrides are the shell's (see actors.policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, time
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from actors.decisions import ClearAlarm, Decision, IssueCommand, RaiseAlarm, RequestTask
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError, NotFoundError
from protos.citypost.v1 import assets_pb2, command_pb2, operations_pb2, telemetry_pb2

ASSET_CLASS = assets_pb2.AssetClass.BOLLARD
LOWERED = telemetry_pb2.BollardPosition.LOWERED
RAISED = telemetry_pb2.BollardPosition.RAISED
FAULT_ALARM = "bollard_fault"
REPAIR_TASK = "repair_bollard"
AccessKind = Literal["resident", "delivery", "emergency", "other"]
ACCESS_KINDS: frozenset[str] = frozenset(get_args(AccessKind))
DEFAULT_DELIVERY_WINDOWS: tuple[tuple[time, time], ...] = ((time(6, 0), time(11, 0)),)
_SNAPSHOT_VERSION = 1


def normalise_plate(vehicle_id: str) -> str:
    """`ab-123 cd` -> `AB123CD`: plates are compared without case, spaces or dashes."""
    return "".join(ch for ch in vehicle_id.upper() if ch.isalnum())


def _ts(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgumentError("now must be an aware datetime")
    return now.timestamp()


def _in_window(at: time, window: tuple[time, time]) -> bool:
    start, end = window
    if start <= end:
        return start <= at < end
    return at >= start or at < end  # a window across midnight


class BollardPolicy:
    """Access control and fault handling for one group of bollards."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        residents: Iterable[str] = (),
        delivery_vehicles: Iterable[str] | None = None,
        delivery_windows: Sequence[tuple[time, time]] = DEFAULT_DELIVERY_WINDOWS,
        timezone: str = "Europe/Paris",
        passage_s: float = 30.0,
        fail_safe: Mapping[str, int] | None = None,
    ) -> None:
        if passage_s <= 0:
            raise ConfigError(f"passage_s must be > 0, got {passage_s}")
        try:
            self.timezone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"timezone {timezone!r} is unknown") from exc
        for start, end in delivery_windows:
            if start == end:
                raise ConfigError(f"delivery window {start}-{end} is empty")
        self.group = group
        self.passage_s = passage_s
        self.residents = frozenset(normalise_plate(p) for p in residents)
        self.delivery_vehicles = (
            None
            if delivery_vehicles is None
            else frozenset(normalise_plate(p) for p in delivery_vehicles)
        )
        self.delivery_windows = tuple(delivery_windows)
        self._devices = {d.dev_eui: d for d in devices if d.asset_class == ASSET_CLASS}
        declared = dict(fail_safe or {})
        for eui, position in declared.items():
            if eui not in self._devices:
                raise ConfigError(f"fail_safe names {eui}, which is not a bollard of {group}")
            if position not in (LOWERED, RAISED):
                raise ConfigError(f"fail_safe position of {eui} must be LOWERED or RAISED")
        self.fail_safe_positions: Mapping[str, int] = {
            eui: declared.get(eui, LOWERED) for eui in sorted(self._devices)
        }
        self._commanded: dict[str, int] = {}  # what the policy last commanded, per bollard
        self._raise_at: dict[str, float] = {}  # bollard -> when to raise it after a passage
        self._lowered_at: dict[str, float] = {}  # bollard -> when the policy lowered it
        self._vehicle_seen_at: dict[str, float] = {}  # bollard -> latest reading with a vehicle
        self._faults: set[str] = set()
        self._fail_safe = False

    # --- access ------------------------------------------------------------------------------

    def delivery_window_open(self, now: datetime) -> bool:
        local = now.astimezone(self.timezone).time()
        return any(_in_window(local, w) for w in self.delivery_windows)

    def _windows_text(self) -> str:
        spans = ", ".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in self.delivery_windows)
        return f"{spans} ({self.timezone.key})"

    def request_access(
        self, vehicle_id: str, kind: AccessKind, bollard: str, now: datetime
    ) -> tuple[bool, str, list[Decision]]:
        """(granted, reason, decisions): lowers the bollard and schedules its raise when granted."""
        now_s = _ts(now)
        if bollard not in self._devices:
            raise NotFoundError(f"bollard {bollard!r} is not in group {self.group}")
        if kind not in ACCESS_KINDS:
            raise InvalidArgumentError(f"kind must be one of {sorted(ACCESS_KINDS)}, got {kind!r}")
        plate = normalise_plate(vehicle_id)
        if not plate:
            raise InvalidArgumentError("vehicle_id must name a vehicle")
        if self._fail_safe:
            if self.fail_safe_positions[bollard] == LOWERED:
                return True, "fail-safe engaged: the bollard stands lowered", []
            return False, "fail-safe engaged: the bollard is held raised until an operator acts", []
        granted, reason = self._decide(plate, kind, now)
        if not granted:
            return False, reason, []
        if bollard in self._faults:
            if kind != "emergency":
                return False, f"bollard {bollard} is out of order (fault reported)", []
            reason += f"; bollard {bollard} reports a fault and may not move"
        self._raise_at[bollard] = max(self._raise_at.get(bollard, 0.0), now_s + self.passage_s)
        decisions: list[Decision] = []
        if self._commanded.get(bollard) != LOWERED:
            self._commanded[bollard] = LOWERED
            self._lowered_at[bollard] = now_s
            decisions.append(self._command(bollard, LOWERED, f"access: {kind} {plate}"))
        return True, reason, decisions

    def _decide(self, plate: str, kind: str, now: datetime) -> tuple[bool, str]:
        if kind == "emergency":
            return True, "emergency vehicle: always granted"
        if kind == "resident":
            if plate in self.residents:
                return True, "resident on the allow-list"
            return False, f"{plate} is not on the residents' allow-list"
        if kind == "delivery":
            if self.delivery_vehicles is not None and plate not in self.delivery_vehicles:
                return False, f"{plate} is not a registered delivery vehicle"
            if not self.delivery_window_open(now):
                local = now.astimezone(self.timezone)
                return False, (
                    f"deliveries are allowed {self._windows_text()} only; it is {local:%H:%M}"
                )
            return True, "delivery within its time window"
        return False, f"{plate} has no access right: the old town is closed to other vehicles"

    # --- commands ----------------------------------------------------------------------------

    def _command(self, eui: str | None, position: int, reason: str) -> IssueCommand:
        target = (
            command_pb2.Target(group=self.group) if eui is None else command_pb2.Target(dev_eui=eui)
        )
        return IssueCommand(
            command=command_pb2.Command(
                target=target,
                asset_class=ASSET_CLASS,
                set_bollard_position=command_pb2.SetBollardPosition(
                    position=telemetry_pb2.BollardPosition.ValueType(position)
                ),
            ),
            reason=reason,
        )

    def _positions(self, wanted: Mapping[str, int], reason: str) -> list[IssueCommand]:
        """One group command when every bollard wants the same position, else one each."""
        self._commanded.update(wanted)
        positions = set(wanted.values())
        if len(positions) == 1:
            return [self._command(None, positions.pop(), reason)]
        return [self._command(eui, wanted[eui], reason) for eui in sorted(wanted)]

    def fail_safe_commands(self) -> list[IssueCommand]:
        """Put every bollard in its fail-safe position and hold it there (no scheduled raise)."""
        self._fail_safe = True
        self._raise_at.clear()
        return self._positions(self.fail_safe_positions, "fail-safe position")

    def release_fail_safe(self, now: datetime) -> list[IssueCommand]:
        """Leave fail-safe: back to the normal state (every bollard raised)."""
        self._fail_safe = False
        return self.desired_commands(now)

    @property
    def fail_safe_engaged(self) -> bool:
        return self._fail_safe

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        """Every bollard raised but those held lowered for a passage; the fail-safe while engaged.

        With a passage under way the commands go one per bollard: a group RAISED could be
        delivered after the lowering and close the bollard under the vehicle.
        """
        now_s = _ts(now)
        if self._fail_safe:
            return self._positions(self.fail_safe_positions, "fail-safe position")
        if not self._devices:
            return []
        wanted = {
            eui: LOWERED if self._raise_at.get(eui, 0.0) > now_s else RAISED
            for eui in sorted(self._devices)
        }
        return self._positions(wanted, "old town closed outside passages")

    # --- events ------------------------------------------------------------------------------

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_s = _ts(now)
        decisions: list[Decision] = []
        for item in batch:
            if item.WhichOneof("reading") != "bollard":
                continue
            eui, reading = item.dev_eui, item.bollard
            observed = item.observed_at_ms / 1000 if item.observed_at_ms > 0 else now_s
            if reading.vehicle_present:
                self._vehicle_seen_at[eui] = max(self._vehicle_seen_at.get(eui, 0.0), observed)
            else:
                self._vehicle_seen_at.pop(eui, None)
            if reading.fault and eui not in self._faults:
                self._faults.add(eui)
                decisions.extend(self._fault_raised(eui))
            elif not reading.fault and eui in self._faults:
                self._faults.discard(eui)
                decisions.append(ClearAlarm(eui, FAULT_ALARM, "the bollard reports no fault"))
        return decisions

    def _centre(self) -> tuple[float, float]:
        """Where a device missing from the group's list is taken to be (for its repair task)."""
        devices = list(self._devices.values())
        if not devices:
            return 47.32, 5.04  # Dijon
        return (
            sum(d.latitude for d in devices) / len(devices),
            sum(d.longitude for d in devices) / len(devices),
        )

    def _fault_raised(self, eui: str) -> list[Decision]:
        device = self._devices.get(eui)
        name = device.name if device else eui
        detail = f"bollard {name} ({eui}) reports a fault"
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

    def on_tick(self, now: datetime) -> list[Decision]:
        """Raise the bollards whose passage is over, unless a vehicle is reported on them."""
        now_s = _ts(now)
        decisions: list[Decision] = []
        if self._fail_safe:
            return decisions
        for eui, at in sorted(self._raise_at.items()):
            if now_s < at:
                continue
            seen = self._vehicle_seen_at.get(eui)
            if seen is not None and seen >= self._lowered_at.get(eui, 0.0):
                # Never raise onto a vehicle: try again after another passage time.
                self._raise_at[eui] = now_s + self.passage_s
                continue
            del self._raise_at[eui]
            if self._commanded.get(eui) != RAISED:
                self._commanded[eui] = RAISED
                decisions.append(self._command(eui, RAISED, "passage over"))
        return decisions

    # --- state -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return {
            "version": _SNAPSHOT_VERSION,
            "commanded": dict(self._commanded),
            "raise_at": dict(self._raise_at),
            "lowered_at": dict(self._lowered_at),
            "vehicle_seen_at": dict(self._vehicle_seen_at),
            "faults": sorted(self._faults),
            "fail_safe": self._fail_safe,
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            if snapshot["version"] != _SNAPSHOT_VERSION:
                raise InvalidArgumentError(f"snapshot version {snapshot['version']} is unknown")
            state: dict[str, Any] = {
                "commanded": {str(k): int(v) for k, v in snapshot["commanded"].items()},
                "raise_at": {str(k): float(v) for k, v in snapshot["raise_at"].items()},
                "lowered_at": {str(k): float(v) for k, v in snapshot["lowered_at"].items()},
                "seen": {str(k): float(v) for k, v in snapshot["vehicle_seen_at"].items()},
                "faults": {str(e) for e in snapshot["faults"]},
                "fail_safe": bool(snapshot["fail_safe"]),
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"bollard snapshot is malformed: {exc!r}") from exc
        self._commanded = state["commanded"]
        self._raise_at = state["raise_at"]
        self._lowered_at = state["lowered_at"]
        self._vehicle_seen_at = state["seen"]
        self._faults = state["faults"]
        self._fail_safe = state["fail_safe"]


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return BollardPolicy(group, devices)
