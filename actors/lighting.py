"""Street lighting: the group's dimming profile, a few group commands a day; faults; energy.

The lamps' controllers run the profile themselves (TALQ-style): each is lit while
the sun is below the profile's elevation at the lamp, at the profile's night level,
and its own presence sensor raises it to the boost level until the hold after the
last passer-by. So the post sends no command per pedestrian (a busy commune would
need thousands a night, far past what EU868 duty cycles let a gateway send): the
policy only chooses which profile the group runs, and changes it by one group
command (one multicast) when the time of night asks for another.

The schedule, in local time (Europe/Paris by default), two profiles:
- the evening profile, from `deep_night_end` (05:30) to `deep_night_start` (23:00):
  `evening_pct` (60 %) as night level. It goes out in the early morning and stays over
  the day, when the lamps are off by the sun anyway, so it is in place well before dusk
  and no command is due at dusk: that is when all groups of the city would want the
  radio at once. The morning's commuters before sunrise get the evening level too.
- the deep-night profile, from 23:00 to 05:30: `deep_night_pct` (30 %), when streets
  are empty and presence detection lights the few passers-by.
Both boost to `boost_pct` (100 %) for `boost_hold_s` (300 s) and switch at
`switch_elevation_deg` (sunset by default). So a group gets two profile commands a
day, plus one when the policy starts or the post takes over (`desired_commands`).

Profile ids are derived from the profile's content (a CRC of its wire values, in
2..65535; 1 is the lamps' factory profile, 0 a fixed level): both posts compute the
same ids with no state shared, the same profile keeps its id from night to night,
and a changed configuration gives a new id, so the lamps' reported profile_id tells
which profile they run. The post confirms a group command by that report.

Faults raise a minor alarm and one repair task for the roads department, cleared when
the lamp reports no fault.

Energy: each lamp's reported power is integrated between its readings; the baseline
is what the same lit hours would have used at 100 % (the lamp's rated power,
estimated from its readings, else `rated_w`). Both totals are reported per group, so
the saving of dimming can be shown.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from bridges.downlink_frame import BOOST_HOLD_MAX_S, ON_BELOW_ELEVATION_RANGE_DEG, PROFILE_ID_MAX
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, command_pb2, operations_pb2, telemetry_pb2

ASSET_CLASS = assets_pb2.AssetClass.STREET_LAMP
FAULT_ALARM = "lamp_fault"
REPAIR_TASK = "repair_lamp"
ENERGY_METRIC = "lighting.energy_wh"
BASELINE_METRIC = "lighting.baseline_wh"
FACTORY_PROFILE_ID = 1  # what a lamp runs out of the box (fleet.behaviours.FACTORY_PROFILE)
FIRST_PROFILE_ID = 2  # the policy's profile ids: FIRST_PROFILE_ID..PROFILE_ID_MAX
EVENING, DEEP_NIGHT = "evening", "deep night"
# A rated power is only estimated from a reading bright enough for the standby draw not to matter.
_MIN_PCT_FOR_RATING = 20.0
_SNAPSHOT_VERSION = 2


def _ts(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgumentError("now must be an aware datetime")
    return now.timestamp()


def profile_id_for(
    on_below_elevation_deg: float,
    night_pct: float,
    boost_pct: float,
    boost_hold_s: int,
    salt: int = 0,
) -> int:
    """The id of a profile with these wire values: a CRC-32 of them, in 2..65535."""
    key = f"{on_below_elevation_deg:.2f}|{night_pct:.2f}|{boost_pct:.2f}|{boost_hold_s:d}|{salt:d}"
    span = PROFILE_ID_MAX - FIRST_PROFILE_ID + 1
    return FIRST_PROFILE_ID + zlib.crc32(key.encode()) % span


def _profile(
    on_below_elevation_deg: float,
    night_pct: float,
    boost_pct: float,
    boost_hold_s: int,
    taken: dict[int, command_pb2.LampProfile],
) -> command_pb2.LampProfile:
    """A profile at the wire's resolution, with an id no other profile in `taken` has."""
    values = (round(on_below_elevation_deg, 2), round(night_pct, 2), round(boost_pct, 2))
    salt = 0
    while True:
        profile = command_pb2.LampProfile(
            profile_id=profile_id_for(*values, boost_hold_s, salt),
            on_below_elevation_deg=values[0],
            night_pct=values[1],
            boost_pct=values[2],
            boost_hold_s=boost_hold_s,
        )
        other = taken.get(profile.profile_id)
        if other is None or other == profile:
            return profile
        salt += 1  # two different profiles on one id: the later one takes another


class LightingPolicy:
    """The lighting policy of one group of street lamps."""

    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        *,
        evening_pct: float = 60.0,
        deep_night_pct: float = 30.0,
        boost_pct: float = 100.0,
        boost_hold_s: int = 300,
        deep_night_start: time = time(23, 0),
        deep_night_end: time = time(5, 30),
        timezone: str = "Europe/Paris",
        switch_elevation_deg: float = solar.SUNRISE_SUNSET_DEG,
        rated_w: float = 60.0,
        metric_interval_s: float = 900.0,
        max_gap_s: float = 3600.0,
    ) -> None:
        for name, pct in (("evening_pct", evening_pct), ("deep_night_pct", deep_night_pct)):
            if not 0.0 <= pct <= 100.0:
                raise ConfigError(f"{name} must be within 0..100, got {pct}")
        if not max(evening_pct, deep_night_pct) <= boost_pct <= 100.0:
            raise ConfigError(
                f"boost_pct must be within the night levels' maximum..100, got {boost_pct}"
            )
        if not 0 <= boost_hold_s <= BOOST_HOLD_MAX_S or int(boost_hold_s) != boost_hold_s:
            raise ConfigError(
                f"boost_hold_s must be whole seconds within 0..{BOOST_HOLD_MAX_S}, "
                f"got {boost_hold_s}"
            )
        low, high = ON_BELOW_ELEVATION_RANGE_DEG
        if not low <= switch_elevation_deg <= high:
            raise ConfigError(
                f"switch_elevation_deg must be within {low:g}..{high:g}, got {switch_elevation_deg}"
            )
        if deep_night_start == deep_night_end:
            raise ConfigError(f"the deep night {deep_night_start}-{deep_night_end} is empty")
        try:
            self.timezone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"timezone {timezone!r} is unknown") from exc
        for name, value in (
            ("rated_w", rated_w),
            ("metric_interval_s", metric_interval_s),
            ("max_gap_s", max_gap_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        self.group = group
        self.deep_night_start = deep_night_start
        self.deep_night_end = deep_night_end
        self.rated_w = rated_w
        self.metric_interval_s = metric_interval_s
        self.max_gap_s = max_gap_s
        taken: dict[int, command_pb2.LampProfile] = {}
        hold = int(boost_hold_s)
        self.evening = _profile(switch_elevation_deg, evening_pct, boost_pct, hold, taken)
        taken[self.evening.profile_id] = self.evening
        self.deep_night = _profile(switch_elevation_deg, deep_night_pct, boost_pct, hold, taken)
        self._devices = {d.dev_eui: d for d in devices}
        if devices:
            self.latitude = sum(d.latitude for d in devices) / len(devices)
            self.longitude = sum(d.longitude for d in devices) / len(devices)
        else:
            self.latitude, self.longitude = solar.DIJON_LATITUDE, solar.DIJON_LONGITUDE
        self._reset()

    def _reset(self) -> None:
        self._sent_profile_id: int | None = None  # the profile of the last group command
        self._faults: set[str] = set()
        # devEui -> (observed at, power W, lit, faulty) of its previous reading
        self._last: dict[str, tuple[float, float, bool, bool]] = {}
        self._rated: dict[str, float] = {}  # devEui -> estimated full-power draw, W
        self._energy_wh = 0.0
        self._baseline_wh = 0.0
        self._reported: tuple[float, float] | None = None  # totals at the last report
        self._reported_at: float | None = None

    # --- what the policy wants -------------------------------------------------------------

    def period_at(self, now: datetime) -> str:
        """EVENING or DEEP_NIGHT: which part of the schedule `now` falls in, by local time."""
        _ts(now)
        at = now.astimezone(self.timezone).time()
        start, end = self.deep_night_start, self.deep_night_end
        deep = start <= at < end if start < end else at >= start or at < end
        return DEEP_NIGHT if deep else EVENING

    def profile_at(self, now: datetime) -> command_pb2.LampProfile:
        """The profile the group should run at `now`."""
        return self.deep_night if self.period_at(now) == DEEP_NIGHT else self.evening

    def _group_command(self, now: datetime) -> IssueCommand:
        period = self.period_at(now)
        profile = self.deep_night if period == DEEP_NIGHT else self.evening
        self._sent_profile_id = profile.profile_id
        reason = (
            f"{period} profile {profile.profile_id}: {profile.night_pct:g} % at night, "
            f"{profile.boost_pct:g} % for {profile.boost_hold_s} s on presence"
        )
        command = command_pb2.Command(
            target=command_pb2.Target(group=self.group),
            asset_class=ASSET_CLASS,
            set_lamp_profile=profile,
        )
        return IssueCommand(command=command, reason=reason)

    # --- events ------------------------------------------------------------------------------

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        now_s = _ts(now)
        decisions: list[Decision] = []
        for item in batch:
            if item.WhichOneof("reading") != "lamp":
                continue
            reading, eui = item.lamp, item.dev_eui
            decisions.extend(self._fault(eui, reading.fault))
            observed = item.observed_at_ms / 1000 if item.observed_at_ms > 0 else now_s
            self._account(eui, reading, observed)
        return decisions

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
        if self.profile_at(now).profile_id != self._sent_profile_id:
            decisions.append(self._group_command(now))
        decisions.extend(self._metrics(now_s))
        return decisions

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
        """The profile the group should run now, as one group command."""
        return [self._group_command(now)]

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
            "sent_profile_id": self._sent_profile_id,
            "faults": sorted(self._faults),
            "last": {eui: list(v) for eui, v in self._last.items()},
            "rated": dict(self._rated),
            "energy_wh": self._energy_wh,
            "baseline_wh": self._baseline_wh,
            "reported": None if self._reported is None else list(self._reported),
            "reported_at": self._reported_at,
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            if snapshot["version"] != _SNAPSHOT_VERSION:
                raise InvalidArgumentError(f"snapshot version {snapshot['version']} is unknown")
            sent = snapshot["sent_profile_id"]
            reported = snapshot["reported"]
            reported_at = snapshot["reported_at"]
            state: dict[str, Any] = {
                "sent": None if sent is None else int(sent),
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
            }
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise InvalidArgumentError(f"lighting snapshot is malformed: {exc!r}") from exc
        self._sent_profile_id = state["sent"]
        self._faults = state["faults"]
        self._last = state["last"]
        self._rated = state["rated"]
        self._energy_wh = state["energy"]
        self._baseline_wh = state["baseline"]
        self._reported = state["reported"]
        self._reported_at = state["reported_at"]


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return LightingPolicy(group, devices)
