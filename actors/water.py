"""Water meters of elderly volunteers: no water drawn for hours -> the relatives are told.

A volunteer's meter reports the litres drawn since its previous uplink
(hourly). When no water has been drawn for `no_water_hours` (default 8),
not counting the hours of the quiet period (default 23:00-06:00, Paris time:
sleeping is not a reason to worry), the policy raises one "no_water_drawn"
alarm and notifies each registered contact once. When water flows again it
clears the alarm and tells the same contacts. A meter that flags a leak gets
a "water_leak" alarm.

What leaves the policy about a household is only what the alert needs: a
pseudonymous contact reference and "no water drawn at the registered home
since HH:MM". A meter that stops reporting is not counted as a dry home
beyond `stale_after_h` after its last uplink: silence is not evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from actors.decisions import ClearAlarm, Decision, IssueCommand, Notify, RaiseAlarm
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

PARIS = ZoneInfo("Europe/Paris")
NO_WATER = "no_water_drawn"
LEAK = "water_leak"


def quiet_seconds(
    start: datetime, end: datetime, quiet_start: time, quiet_end: time, tz: tzinfo
) -> float:
    """Seconds of [start, end) that fall in the daily quiet period (local wall-clock times).

    Works across midnight (23:00-06:00) and DST changes; equal bounds mean no quiet period.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start or quiet_start == quiet_end:
        return 0.0
    overnight = quiet_end < quiet_start
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    total = 0.0
    while day <= last:
        # Compare in UTC: datetimes sharing a tzinfo subtract as wall-clock times.
        q_start = datetime.combine(day, quiet_start, tz).astimezone(UTC)
        end_day = day + timedelta(days=1) if overnight else day
        q_end = datetime.combine(end_day, quiet_end, tz).astimezone(UTC)
        overlap = (min(end, q_end) - max(start, q_start)).total_seconds()
        if overlap > 0:
            total += overlap
        day += timedelta(days=1)
    return total


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class _Meter:
    dry_since_ms: int | None = None  # last uplink with water drawn (or the first dry one heard)
    last_seen_ms: int | None = None
    alarm: bool = False  # a no_water_drawn episode is open (alarm raised, contacts told)
    leak: bool = False


class WaterPolicy:
    """Implements `actors.policy.Policy` for WATER_METER; meters take no commands."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        contacts: Mapping[str, Sequence[str]] | None = None,
        no_water_hours: float = 8.0,
        quiet_start: time = time(23, 0),
        quiet_end: time = time(6, 0),
        tz: tzinfo = PARIS,
        stale_after_h: float = 2.0,
    ) -> None:
        if no_water_hours <= 0:
            raise InvalidArgumentError("no_water_hours: must be positive")
        if stale_after_h <= 0:
            raise InvalidArgumentError("stale_after_h: must be positive")
        self.group = group
        self.no_water_s = no_water_hours * 3600.0
        self.quiet = (quiet_start, quiet_end)
        self.tz = tz
        self.stale_after_ms = int(stale_after_h * 3_600_000)
        given = contacts or {}
        # Default: one pseudonymous reference per home; the outbox resolves it, never this policy.
        self.contacts: dict[str, tuple[str, ...]] = {
            d.dev_eui: tuple(given.get(d.dev_eui, (f"contact:{d.dev_eui}",))) for d in devices
        }
        self._meters: dict[str, _Meter] = {d.dev_eui: _Meter() for d in devices}

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_ms = _ms(now)
        out: list[Decision] = []
        for item in batch:
            meter = self._meters.get(item.dev_eui)
            if meter is None or item.WhichOneof("reading") != "water_meter":
                continue  # the router sends only this group's meters
            at_ms = item.observed_at_ms if 0 < item.observed_at_ms <= now_ms else now_ms
            if meter.last_seen_ms is not None and at_ms < meter.last_seen_ms:
                continue  # late duplicate or out of order: the newer uplink already counted
            reading = item.water_meter
            meter.last_seen_ms = at_ms
            if reading.litres_since_last > 0:
                meter.dry_since_ms = at_ms
                if meter.alarm:
                    meter.alarm = False
                    out.extend(self._flowing_again(item.dev_eui, at_ms))
            elif meter.dry_since_ms is None:
                meter.dry_since_ms = at_ms
            out.extend(self._leak(item.dev_eui, meter, reading.leak_suspected))
            out.extend(self._check_dry(item.dev_eui, meter, now_ms))
        return out

    def on_tick(self, now: datetime) -> list[Decision]:
        now_ms = _ms(now)
        out: list[Decision] = []
        for eui, meter in self._meters.items():
            out.extend(self._check_dry(eui, meter, now_ms))
        return out

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def dry_seconds(self, dev_eui: str, now: datetime) -> float:
        """Seconds without water that count toward the limit (quiet period excluded)."""
        meter = self._meters.get(dev_eui)
        return 0.0 if meter is None else self._counted_s(meter, _ms(now))

    # --- rules ---

    def _counted_s(self, meter: _Meter, now_ms: int) -> float:
        if meter.dry_since_ms is None or meter.last_seen_ms is None:
            return 0.0
        until_ms = min(now_ms, meter.last_seen_ms + self.stale_after_ms)
        if until_ms <= meter.dry_since_ms:
            return 0.0
        start, end = _at(meter.dry_since_ms), _at(until_ms)
        quiet = quiet_seconds(start, end, *self.quiet, self.tz)
        return (end - start).total_seconds() - quiet

    def _check_dry(self, eui: str, meter: _Meter, now_ms: int) -> list[Decision]:
        if meter.alarm or meter.dry_since_ms is None:
            return []
        if now_ms - meter.dry_since_ms < self.no_water_s * 1000:
            return []  # not even the wall-clock time: skip the quiet-period arithmetic
        if self._counted_s(meter, now_ms) < self.no_water_s:
            return []
        meter.alarm = True
        since = self._when(meter.dry_since_ms, now_ms)
        origin = f"{eui}/{NO_WATER}"
        out: list[Decision] = [
            RaiseAlarm(
                eui,
                NO_WATER,
                operations_pb2.MAJOR,
                f"no water drawn since {since} ({self.no_water_s / 3600:g} h outside quiet hours)",
            )
        ]
        message = f"no water drawn at the registered home since {since}"
        out.extend(Notify(who, message, origin) for who in self.contacts.get(eui, ()))
        return out

    def _flowing_again(self, eui: str, at_ms: int) -> list[Decision]:
        when = self._when(at_ms, at_ms)
        origin = f"{eui}/{NO_WATER}"
        out: list[Decision] = [ClearAlarm(eui, NO_WATER, f"water drawn again at {when}")]
        message = f"water flowing again at the registered home at {when}"
        out.extend(Notify(who, message, origin) for who in self.contacts.get(eui, ()))
        return out

    def _leak(self, eui: str, meter: _Meter, suspected: bool) -> list[Decision]:
        if suspected == meter.leak:
            return []
        meter.leak = suspected
        if suspected:
            return [RaiseAlarm(eui, LEAK, operations_pb2.MINOR, "meter reports a suspected leak")]
        return [ClearAlarm(eui, LEAK, "meter no longer reports a leak")]

    def _when(self, at_ms: int, now_ms: int) -> str:
        """HH:MM local; with the date when it is not the same local day as now."""
        local = _at(at_ms).astimezone(self.tz)
        if local.date() == _at(now_ms).astimezone(self.tz).date():
            return local.strftime("%H:%M")
        return local.strftime("%d/%m %H:%M")

    # --- state ---

    def snapshot(self) -> Snapshot:
        return {
            "meters": {
                eui: {
                    "dry_since_ms": m.dry_since_ms,
                    "last_seen_ms": m.last_seen_ms,
                    "alarm": m.alarm,
                    "leak": m.leak,
                }
                for eui, m in self._meters.items()
            }
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            meters: dict[str, Any] = snapshot["meters"]
            restored = {
                eui: _Meter(
                    _opt_int(s["dry_since_ms"]),
                    _opt_int(s["last_seen_ms"]),
                    bool(s["alarm"]),
                    bool(s["leak"]),
                )
                for eui, s in meters.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not a water snapshot ({exc!r})") from exc
        self._meters = {eui: restored.get(eui, _Meter()) for eui in self._meters}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return WaterPolicy(group, devices)
