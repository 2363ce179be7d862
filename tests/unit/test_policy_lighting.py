"""Street lighting policy: the group's dimming profile by time of night, faults, energy,
snapshots. The lamps act on presence themselves: the policy never commands one lamp."""

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from actors import solar
from actors.decisions import (
    ClearAlarm,
    Decision,
    IssueCommand,
    RaiseAlarm,
    ReportMetric,
    RequestTask,
)
from actors.lighting import (
    BASELINE_METRIC,
    DEEP_NIGHT,
    ENERGY_METRIC,
    EVENING,
    LightingPolicy,
    make_policy,
)
from bridges.downlink_frame import decode_command, encode_command
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, command_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

GROUP = "dijon-1"
LAMP_A, LAMP_B, LAMP_C = "00000000000000a1", "00000000000000a2", "00000000000000a3"
WINTER_DAY = date(2024, 12, 10)
SUMMER_DAY = date(2024, 6, 10)


def _lamp(eui: str, lat: float = 47.3220, lon: float = 5.0415) -> Device:
    return Device(
        dev_eui=eui,
        name=f"lamp-{eui[-2:]}",
        asset_class=assets_pb2.AssetClass.STREET_LAMP,
        group=GROUP,
        commune="Dijon",
        latitude=lat,
        longitude=lon,
        transport=assets_pb2.Transport.LORAWAN,
        application_id="app",
    )


DEVICES = [_lamp(LAMP_A), _lamp(LAMP_B, 47.3230), _lamp(LAMP_C, 47.3240)]
DEVICES_EUI = (LAMP_A, LAMP_B, LAMP_C)


def _reading(
    eui: str,
    at: datetime,
    *,
    presence: int = 0,
    fault: bool = False,
    pct: float = 0.0,
    power: float = 0.0,
    profile_id: int = 0,
) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.AssetClass.STREET_LAMP,
        group=GROUP,
        observed_at_ms=int(at.timestamp() * 1000),
        lamp=telemetry_pb2.LampReading(
            brightness_pct=pct,
            presence_count=presence,
            power_w=power,
            fault=fault,
            profile_id=profile_id,
        ),
    )


def _commands(decisions: Sequence[Decision]) -> list[IssueCommand]:
    return [d for d in decisions if isinstance(d, IssueCommand)]


def _profile(command: IssueCommand) -> command_pb2.LampProfile:
    assert command.command.WhichOneof("action") == "set_lamp_profile"
    return command.command.set_lamp_profile


def _night_pct(command: IssueCommand) -> float:
    return _profile(command).night_pct


def _target(command: IssueCommand) -> tuple[str, str]:
    kind = command.command.target.WhichOneof("kind")
    assert kind is not None
    return kind, getattr(command.command.target, kind)


def _utc(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _sunset(day: date) -> datetime:
    sunset = solar.sun_times(day).sunset
    assert sunset is not None
    return sunset


def _night_policy(**kwargs: Any) -> tuple[LightingPolicy, datetime]:
    """A policy that has sent its group the evening profile, and the time it did."""
    policy = LightingPolicy(GROUP, DEVICES, **kwargs)
    night = _sunset(WINTER_DAY) + timedelta(hours=2)
    assert [_night_pct(c) for c in _commands(policy.on_tick(night))] == [60.0]
    return policy, night


# --- the sun ---------------------------------------------------------------------------------


def test_dusk_in_december_is_hours_earlier_than_in_june_at_dijon() -> None:
    winter, summer = solar.sun_times(date(2024, 12, 21)), solar.sun_times(date(2024, 6, 21))
    assert winter.sunset is not None and summer.sunset is not None
    assert winter.dusk is not None and summer.dusk is not None
    # Published almanac values for Dijon: about 16:52 CET and 21:40 CEST.
    assert _utc(date(2024, 12, 21), 15, 45) < winter.sunset < _utc(date(2024, 12, 21), 16, 0)
    assert _utc(date(2024, 6, 21), 19, 32) < summer.sunset < _utc(date(2024, 6, 21), 19, 48)
    winter_dusk = winter.dusk.hour * 60 + winter.dusk.minute
    summer_dusk = summer.dusk.hour * 60 + summer.dusk.minute
    assert summer_dusk - winter_dusk > 3.5 * 60
    # Civil twilight follows sunset, and lasts longer in June than in December.
    assert winter.sunset < winter.dusk and summer.sunset < summer.dusk
    assert summer.dusk - summer.sunset > winter.dusk - winter.sunset
    assert winter.dawn is not None and winter.sunrise is not None
    assert winter.dawn < winter.sunrise < winter.noon < winter.sunset


def test_event_times_are_where_the_sun_crosses_its_thresholds() -> None:
    times = solar.sun_times(WINTER_DAY)
    assert times.sunset is not None and times.dusk is not None
    elev = solar.elevation_deg
    lat, lon = solar.DIJON_LATITUDE, solar.DIJON_LONGITUDE
    assert elev(times.sunset, lat, lon) == pytest.approx(solar.SUNRISE_SUNSET_DEG, abs=0.01)
    assert elev(times.dusk, lat, lon) == pytest.approx(solar.CIVIL_TWILIGHT_DEG, abs=0.01)
    # At the December solstice the noon sun stands 90 - 47.3 - 23.4 degrees high.
    noon = solar.sun_times(date(2024, 12, 21)).noon
    assert elev(noon, lat, lon) == pytest.approx(19.2, abs=0.2)


def test_polar_night_has_no_sunrise_and_naive_time_is_refused() -> None:
    polar = solar.sun_times(date(2024, 12, 21), 78.2, 15.6)  # Svalbard
    assert polar.sunrise is None and polar.sunset is None
    with pytest.raises(InvalidArgumentError):
        solar.elevation_deg(datetime(2024, 1, 1, 12), 47.3, 5.0)
    with pytest.raises(InvalidArgumentError):
        solar.elevation_deg(datetime(2024, 1, 1, 12, tzinfo=UTC), 95.0, 5.0)


# --- the group's profile ---------------------------------------------------------------------


def test_the_first_tick_sends_the_group_its_profile_once() -> None:
    policy = make_policy(GROUP, DEVICES)
    noon = _commands(policy.on_tick(_utc(WINTER_DAY, 11, 30)))
    assert [_target(c) for c in noon] == [("group", GROUP)]
    assert noon[0].command.asset_class == assets_pb2.AssetClass.STREET_LAMP
    assert not noon[0].command.command_id and not noon[0].command.epoch
    assert _profile(noon[0]) == command_pb2.LampProfile(
        profile_id=_profile(noon[0]).profile_id,
        on_below_elevation_deg=-0.83,  # sunset, at the wire's resolution
        night_pct=60.0,
        boost_pct=100.0,
        boost_hold_s=300,
    )
    # Dusk needs no command: the lamps switch on by the sun themselves.
    sunset = _sunset(WINTER_DAY)
    for minute in range(-60, 120):
        assert _commands(policy.on_tick(sunset + timedelta(minutes=minute))) == []


def _day_of_ticks(
    policy: LightingPolicy, start: datetime, hours: int
) -> tuple[list[tuple[datetime, IssueCommand]], list[Decision]]:
    """Tick every minute and feed every lamp's uplink every 15 minutes, with presence on
    every one, lamp C failed from the 10th to the 15th hour; the commands with their
    times, and every decision."""
    commands: list[tuple[datetime, IssueCommand]] = []
    everything: list[Decision] = []
    for minute in range(hours * 60):
        now = start + timedelta(minutes=minute)
        decisions = policy.on_tick(now)
        if minute % 15 == 0:
            lit = solar.elevation_deg(now, 47.32, 5.04) < solar.SUNRISE_SUNSET_DEG
            broken = 600 <= minute < 900
            batch = [
                _reading(
                    eui,
                    now,
                    presence=3,
                    pct=100.0 if lit else 0.0,
                    power=0.0 if not lit or (eui == LAMP_C and broken) else 60.5,
                    fault=eui == LAMP_C and broken,
                    profile_id=1,
                )
                for eui in DEVICES_EUI
            ]
            decisions += policy.on_telemetry(batch, now)
        everything += decisions
        commands += [(now, c) for c in _commands(decisions)]
    return commands, everything


@pytest.mark.parametrize(("day", "utc_offset_h"), [(WINTER_DAY, 1), (SUMMER_DAY, 2)])
def test_two_days_take_a_handful_of_group_profile_commands(day: date, utc_offset_h: int) -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    commands, everything = _day_of_ticks(policy, _utc(day, 10), 48)
    assert all(_target(c) == ("group", GROUP) for _, c in commands)  # never one lamp
    assert all(c.command.WhichOneof("action") == "set_lamp_profile" for _, c in commands)
    # The first tick, then deep night at 23:00 and the evening profile back at 05:30 (local).
    local = [(t + timedelta(hours=utc_offset_h)).time() for t, _ in commands]
    assert local == [time(10 + utc_offset_h), time(23), time(5, 30), time(23), time(5, 30)]
    levels = [_night_pct(c) for _, c in commands]
    assert levels == [60.0, 30.0, 60.0, 30.0, 60.0]
    ids = [_profile(c).profile_id for _, c in commands]
    assert ids[0] == ids[2] == ids[4] != ids[1] == ids[3]  # a profile keeps its id
    assert all(2 <= i <= 65535 for i in ids)  # 0 is a fixed level, 1 the factory profile
    # Faults still raise their alarm (and task) and clear it.
    raised = [d for d in everything if isinstance(d, RaiseAlarm)]
    cleared = [d for d in everything if isinstance(d, ClearAlarm)]
    assert [(a.originator, a.type) for a in raised] == [(LAMP_C, "lamp_fault")]
    assert [(a.originator, a.type) for a in cleared] == [(LAMP_C, "lamp_fault")]
    assert [t.kind for t in everything if isinstance(t, RequestTask)] == ["repair_lamp"]
    # Energy still goes out, from the reported power.
    metrics = [d for d in everything if isinstance(d, ReportMetric)]
    assert {m.name for m in metrics} == {ENERGY_METRIC, BASELINE_METRIC}
    assert policy.energy_wh > 0 and policy.baseline_wh >= policy.energy_wh


def test_the_deep_night_follows_local_time_across_daylight_saving() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    assert policy.period_at(_utc(WINTER_DAY, 21, 59)) == EVENING  # 22:59 CET
    assert policy.period_at(_utc(WINTER_DAY, 22, 0)) == DEEP_NIGHT  # 23:00 CET
    assert policy.period_at(_utc(SUMMER_DAY, 21, 0)) == DEEP_NIGHT  # 23:00 CEST
    assert policy.period_at(_utc(SUMMER_DAY, 3, 29)) == DEEP_NIGHT  # 05:29 CEST
    assert policy.period_at(_utc(SUMMER_DAY, 3, 30)) == EVENING
    assert policy.profile_at(_utc(SUMMER_DAY, 1)) == policy.deep_night
    assert policy.profile_at(_utc(SUMMER_DAY, 12)) == policy.evening


def test_profile_ids_come_from_the_content() -> None:
    one, two = LightingPolicy(GROUP, DEVICES), LightingPolicy("other", DEVICES[:1])
    # Both posts, any group: the same profile has the same id, with no state shared.
    assert (one.evening, one.deep_night) == (two.evening, two.deep_night)
    assert one.evening.profile_id != one.deep_night.profile_id
    brighter = LightingPolicy(GROUP, DEVICES, deep_night_pct=35.0)
    assert brighter.evening == one.evening
    assert brighter.deep_night.profile_id != one.deep_night.profile_id
    # One profile all night: the schedule's switches change nothing, so nothing goes out.
    flat = LightingPolicy(GROUP, DEVICES, evening_pct=40.0, deep_night_pct=40.0)
    assert flat.evening == flat.deep_night
    commands, _ = _day_of_ticks(flat, _utc(WINTER_DAY, 10), 24)
    assert len(commands) == 1


def test_the_profile_goes_on_air_in_one_small_frame() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    [issue] = policy.desired_commands(_utc(WINTER_DAY, 23))
    command = command_pb2.Command()
    command.CopyFrom(issue.command)
    command.command_id, command.epoch = str(uuid.uuid4()), 5
    frame = encode_command(command)
    assert len(frame) <= 51
    device = decode_command(frame)
    assert device.value == policy.deep_night.profile_id
    assert device.profile is not None and device.profile.night_pct == 30.0


def test_desired_commands_give_the_current_profile_as_one_group_command() -> None:
    policy, _ = _night_policy()
    late = _utc(WINTER_DAY, 23, 30)  # 00:30 CET: deep night
    desired = policy.desired_commands(late)
    assert [(_target(c), _night_pct(c)) for c in desired] == [(("group", GROUP), 30.0)]
    assert "deep night" in desired[0].reason
    # That is what the group now runs: the next tick adds nothing.
    assert _commands(policy.on_tick(late + timedelta(minutes=1))) == []
    # Asked again (the post took over, an override ended): the same command again.
    assert policy.desired_commands(late + timedelta(minutes=2)) == desired


def test_presence_commands_nothing() -> None:
    policy, night = _night_policy()
    busy = [_reading(eui, night, presence=40, pct=60.0, power=36.5) for eui in DEVICES_EUI]
    assert policy.on_telemetry(busy, night) == []
    assert _commands(policy.on_tick(night + timedelta(minutes=10))) == []


# --- faults ----------------------------------------------------------------------------------


def test_a_fault_raises_one_alarm_and_one_task_and_clears_when_fixed() -> None:
    policy, night = _night_policy()
    first = policy.on_telemetry([_reading(LAMP_B, night, fault=True)], night)
    alarms = [d for d in first if isinstance(d, RaiseAlarm)]
    tasks = [d for d in first if isinstance(d, RequestTask)]
    assert len(first) == 2 and len(alarms) == 1 and len(tasks) == 1
    assert alarms[0].originator == LAMP_B and alarms[0].type == "lamp_fault"
    assert alarms[0].severity == operations_pb2.Severity.MINOR
    assert tasks[0].department == operations_pb2.Department.ROADS
    assert tasks[0].kind == "repair_lamp"
    assert (tasks[0].latitude, tasks[0].longitude) == (47.3230, 5.0415)
    later = night + timedelta(minutes=15)
    assert policy.on_telemetry([_reading(LAMP_B, later, fault=True)], later) == []
    assert policy.active_faults == {LAMP_B}
    fixed = night + timedelta(minutes=30)
    cleared = policy.on_telemetry([_reading(LAMP_B, fixed, pct=30, power=18)], fixed)
    assert cleared == [ClearAlarm(LAMP_B, "lamp_fault", "the lamp reports no fault")]
    again = night + timedelta(minutes=45)
    assert policy.on_telemetry([_reading(LAMP_B, again, pct=30, power=18)], again) == []


def test_a_faulty_lamp_takes_no_command() -> None:
    policy, night = _night_policy()
    decisions = policy.on_telemetry([_reading(LAMP_A, night, presence=3, fault=True)], night)
    assert _commands(decisions) == [] and len(decisions) == 2  # the alarm and the task


# --- energy ----------------------------------------------------------------------------------


def test_energy_is_reported_against_a_full_power_baseline() -> None:
    policy, night = _night_policy(metric_interval_s=600.0)
    t0 = night + timedelta(minutes=1)
    # A 60 W lamp at 30 % draws 18 W; two readings 15 minutes apart cover a quarter hour.
    policy.on_telemetry([_reading(LAMP_A, t0, pct=30.0, power=18.0)], t0)
    t1 = t0 + timedelta(minutes=15)
    policy.on_telemetry([_reading(LAMP_A, t1, pct=30.0, power=18.0)], t1)
    assert policy.energy_wh == pytest.approx(4.5)
    assert policy.baseline_wh == pytest.approx(15.0)
    metrics = [d for d in policy.on_tick(t1) if isinstance(d, ReportMetric)]
    assert {(m.name, m.value) for m in metrics} == {(ENERGY_METRIC, 4.5), (BASELINE_METRIC, 15.0)}
    assert all(m.attributes == {"group": GROUP} for m in metrics)
    # Nothing new, nothing reported; a late duplicate uplink counts nothing.
    assert policy.on_tick(t1 + timedelta(minutes=20)) == []
    policy.on_telemetry([_reading(LAMP_A, t0, pct=30.0, power=18.0)], t1)
    assert policy.energy_wh == pytest.approx(4.5)


def test_unlit_hours_cost_nothing_in_either_total_and_long_gaps_are_skipped() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    noon = _utc(WINTER_DAY, 11)
    policy.on_telemetry([_reading(LAMP_A, noon)], noon)
    policy.on_telemetry([_reading(LAMP_A, noon + timedelta(hours=1))], noon)
    assert (policy.energy_wh, policy.baseline_wh) == (0.0, 0.0)
    # Lit, then silent for three hours: the silence is not counted.
    t0 = noon + timedelta(hours=2)
    policy.on_telemetry([_reading(LAMP_B, t0, pct=100.0, power=60.0)], t0)
    policy.on_telemetry([_reading(LAMP_B, t0 + timedelta(hours=3), pct=100.0, power=60.0)], t0)
    assert (policy.energy_wh, policy.baseline_wh) == (0.0, 0.0)


# --- snapshot --------------------------------------------------------------------------------


def _scenario_tail(policy: LightingPolicy, night: datetime) -> list[Decision]:
    out: list[Decision] = []
    for minute in range(0, 8 * 60, 5):  # through 23:00 and past midnight
        now = night + timedelta(minutes=minute)
        out += policy.on_tick(now)
        if minute == 15:
            out += policy.on_telemetry([_reading(LAMP_B, now, presence=1)], now)
        if minute == 20:
            out += policy.on_telemetry([_reading(LAMP_A, now, pct=30, power=18)], now)
        if minute == 25:
            out += policy.on_telemetry([_reading(LAMP_C, now, pct=30, power=18)], now)
    out += policy.on_tick(night + timedelta(days=1))
    return out


def test_snapshot_then_restore_gives_the_same_decisions() -> None:
    policy, night = _night_policy(metric_interval_s=60.0)
    t0 = night + timedelta(minutes=1)
    policy.on_telemetry(
        [
            _reading(LAMP_A, t0, presence=2, pct=30, power=18),
            _reading(LAMP_C, t0, fault=True),
        ],
        t0,
    )
    snapshot = json.loads(json.dumps(policy.snapshot()))
    restored = LightingPolicy(GROUP, DEVICES, metric_interval_s=60.0)
    restored.restore(snapshot)
    later = night + timedelta(minutes=2)
    original_tail, restored_tail = _scenario_tail(policy, later), _scenario_tail(restored, later)
    assert original_tail == restored_tail
    assert any(isinstance(d, IssueCommand) for d in original_tail)
    assert any(isinstance(d, ReportMetric) for d in original_tail)
    assert any(isinstance(d, ClearAlarm) for d in original_tail)
    # The restored policy knows what the group was sent: its first tick repeats nothing.
    again = LightingPolicy(GROUP, DEVICES, metric_interval_s=60.0)
    again.restore(snapshot)
    assert _commands(again.on_tick(later)) == []


def test_bad_input_is_refused_with_citypost_errors() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    with pytest.raises(InvalidArgumentError, match="malformed"):
        policy.restore({"version": 2})
    # A snapshot of the per-lamp presence policy (version 1) is not read as this one.
    old = {
        "version": 1,
        "group_level": 30.0,
        "lamp_level": {},
        "holds": {},
        "faults": [],
        "last": {},
        "rated": {},
        "energy_wh": 0.0,
        "baseline_wh": 0.0,
        "reported": None,
        "reported_at": None,
        "raise_minute": 0,
        "raises_in_minute": 0,
    }
    with pytest.raises(InvalidArgumentError, match="version 1 is unknown"):
        policy.restore(old)
    with pytest.raises(InvalidArgumentError):
        policy.on_tick(datetime(2024, 1, 1, 12))
    for bad in (
        {"evening_pct": 120.0},
        {"deep_night_pct": -1.0},
        {"boost_pct": 50.0},  # below the evening level
        {"boost_hold_s": 4000},
        {"switch_elevation_deg": -12.0},
        {"deep_night_start": time(1), "deep_night_end": time(1)},
        {"timezone": "Europe/Atlantis"},
        {"rated_w": 0.0},
    ):
        with pytest.raises(ConfigError):
            LightingPolicy(GROUP, DEVICES, **bad)
