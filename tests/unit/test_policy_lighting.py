"""Street lighting policy: sun-driven base level, presence holds, faults, energy, snapshots."""

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
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
    ENERGY_METRIC,
    LightingPolicy,
    make_policy,
)
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

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


def _reading(
    eui: str,
    at: datetime,
    *,
    presence: int = 0,
    fault: bool = False,
    pct: float = 0.0,
    power: float = 0.0,
) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.AssetClass.STREET_LAMP,
        group=GROUP,
        observed_at_ms=int(at.timestamp() * 1000),
        lamp=telemetry_pb2.LampReading(
            brightness_pct=pct, presence_count=presence, power_w=power, fault=fault
        ),
    )


def _commands(decisions: Sequence[Decision]) -> list[IssueCommand]:
    return [d for d in decisions if isinstance(d, IssueCommand)]


def _level(command: IssueCommand) -> float:
    return command.command.set_brightness.brightness_pct


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
    """A policy that has put its group at the base level, and the time it did."""
    policy = LightingPolicy(GROUP, DEVICES, **kwargs)
    night = _sunset(WINTER_DAY) + timedelta(hours=2)
    assert [_level(c) for c in _commands(policy.on_tick(night))] == [30.0]
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


# --- base level by the sun -------------------------------------------------------------------


def test_lamps_are_off_at_noon_and_at_the_base_level_after_sunset() -> None:
    policy = make_policy(GROUP, DEVICES)
    noon = policy.on_tick(_utc(WINTER_DAY, 11, 30))
    assert [(_target(c), _level(c)) for c in _commands(noon)] == [(("group", GROUP), 0.0)]
    sunset = _sunset(WINTER_DAY)
    assert _commands(policy.on_tick(sunset - timedelta(minutes=5))) == []
    evening = _commands(policy.on_tick(sunset + timedelta(minutes=5)))
    assert [(_target(c), _level(c)) for c in evening] == [(("group", GROUP), 30.0)]
    assert evening[0].command.asset_class == assets_pb2.AssetClass.STREET_LAMP
    assert not evening[0].command.command_id and not evening[0].command.epoch


def _switch_on_minute(day: date) -> datetime:
    """Tick every minute through the afternoon and evening; when the base level goes out."""
    policy = LightingPolicy(GROUP, DEVICES)
    policy.on_tick(_utc(day, 12))
    for minute in range(12 * 60 + 1, 23 * 60):
        now = _utc(day, 0) + timedelta(minutes=minute)
        if any(_level(c) > 0 for c in _commands(policy.on_tick(now))):
            return now
    raise AssertionError("the lamps never came on")


def test_the_lamps_come_on_at_sunset_which_is_earlier_in_winter() -> None:
    winter_on, summer_on = _switch_on_minute(WINTER_DAY), _switch_on_minute(SUMMER_DAY)
    assert abs(winter_on - _sunset(WINTER_DAY)) <= timedelta(minutes=1)
    assert abs(summer_on - _sunset(SUMMER_DAY)) <= timedelta(minutes=1)
    winter_local = winter_on + timedelta(hours=1)  # CET
    summer_local = summer_on + timedelta(hours=2)  # CEST
    assert winter_local.hour < 17 < 21 <= summer_local.hour


def test_lamps_go_off_at_dawn_with_one_group_command() -> None:
    policy, _ = _night_policy()
    sunrise = solar.sun_times(WINTER_DAY + timedelta(days=1)).sunrise
    assert sunrise is not None
    assert _commands(policy.on_tick(sunrise - timedelta(minutes=2))) == []
    dawn = _commands(policy.on_tick(sunrise + timedelta(minutes=2)))
    assert [(_target(c), _level(c)) for c in dawn] == [(("group", GROUP), 0.0)]


def test_no_command_is_repeated_when_nothing_changes() -> None:
    policy, night = _night_policy()
    for minute in range(1, 120):
        assert _commands(policy.on_tick(night + timedelta(minutes=minute))) == []
    quiet = [_reading(eui, night, pct=30.0, power=18.0) for eui in (LAMP_A, LAMP_B)]
    assert policy.on_telemetry(quiet, night + timedelta(minutes=121)) == []


# --- presence --------------------------------------------------------------------------------


def test_presence_raises_one_lamp_which_drops_back_after_the_hold() -> None:
    policy, night = _night_policy()
    t0 = night + timedelta(minutes=10)
    raised = _commands(policy.on_telemetry([_reading(LAMP_A, t0, presence=2)], t0))
    assert [(_target(c), _level(c)) for c in raised] == [(("dev_eui", LAMP_A), 100.0)]
    # Still held at 4 minutes; more presence while raised extends the hold, sends nothing.
    assert _commands(policy.on_tick(t0 + timedelta(minutes=4))) == []
    t1 = t0 + timedelta(minutes=4, seconds=30)
    assert _commands(policy.on_telemetry([_reading(LAMP_A, t1, presence=1)], t1)) == []
    assert _commands(policy.on_tick(t0 + timedelta(minutes=6))) == []
    dropped = _commands(policy.on_tick(t1 + timedelta(minutes=5)))
    assert [(_target(c), _level(c)) for c in dropped] == [(("dev_eui", LAMP_A), 30.0)]
    assert _commands(policy.on_tick(t1 + timedelta(minutes=6))) == []


def test_the_hold_time_is_a_tunable() -> None:
    policy, night = _night_policy(hold_s=60.0)
    policy.on_telemetry([_reading(LAMP_B, night, presence=1)], night)
    dropped = _commands(policy.on_tick(night + timedelta(seconds=61)))
    assert [(_target(c), _level(c)) for c in dropped] == [(("dev_eui", LAMP_B), 30.0)]


def test_stale_presence_raises_nothing() -> None:
    policy, night = _night_policy()
    old = night - timedelta(minutes=6)  # counted before the hold would have ended
    assert policy.on_telemetry([_reading(LAMP_A, old, presence=4)], night) == []
    recent = night - timedelta(minutes=4)
    raised = _commands(policy.on_telemetry([_reading(LAMP_A, recent, presence=4)], night))
    assert [_target(c) for c in raised] == [("dev_eui", LAMP_A)]
    # The hold runs from when the pedestrians were seen, not from when the uplink arrived.
    assert _commands(policy.on_tick(night + timedelta(seconds=59))) == []
    assert len(_commands(policy.on_tick(night + timedelta(seconds=61)))) == 1


def test_raises_are_bounded_per_minute() -> None:
    policy, night = _night_policy(raises_per_min=2)
    batch = [_reading(eui, night, presence=1) for eui in (LAMP_A, LAMP_B, LAMP_C)]
    raised = _commands(policy.on_telemetry(batch, night))
    assert [_target(c)[1] for c in raised] == [LAMP_A, LAMP_B]
    assert policy.raises_skipped == 1
    later = night + timedelta(minutes=1)
    raised = _commands(policy.on_telemetry([_reading(LAMP_C, later, presence=1)], later))
    assert [_target(c)[1] for c in raised] == [LAMP_C]


def test_presence_by_day_commands_nothing() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    noon = _utc(WINTER_DAY, 11)
    policy.on_tick(noon)
    assert policy.on_telemetry([_reading(LAMP_A, noon, presence=5)], noon) == []
    assert _commands(policy.on_tick(noon + timedelta(minutes=10))) == []


def test_desired_commands_give_the_base_level_then_the_held_lamps() -> None:
    policy, night = _night_policy()
    policy.on_telemetry([_reading(LAMP_C, night, presence=1)], night)
    desired = policy.desired_commands(night + timedelta(minutes=1))
    assert [(_target(c), _level(c)) for c in desired] == [
        (("group", GROUP), 30.0),
        (("dev_eui", LAMP_C), 100.0),
    ]
    # They are what the group now holds: the next tick adds nothing.
    assert _commands(policy.on_tick(night + timedelta(minutes=2))) == []


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


def test_a_faulty_lamp_is_not_raised_on_presence() -> None:
    policy, night = _night_policy()
    decisions = policy.on_telemetry([_reading(LAMP_A, night, presence=3, fault=True)], night)
    assert _commands(decisions) == []


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
    for minute in range(0, 20):
        now = night + timedelta(minutes=minute)
        out += policy.on_tick(now)
        if minute == 3:
            out += policy.on_telemetry([_reading(LAMP_B, now, presence=1)], now)
        if minute == 4:
            out += policy.on_telemetry([_reading(LAMP_A, now, pct=30, power=18)], now)
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


def test_bad_input_is_refused_with_citypost_errors() -> None:
    policy = LightingPolicy(GROUP, DEVICES)
    with pytest.raises(InvalidArgumentError):
        policy.restore({"version": 1})
    with pytest.raises(InvalidArgumentError):
        policy.on_tick(datetime(2024, 1, 1, 12))
    with pytest.raises(ConfigError):
        LightingPolicy(GROUP, DEVICES, base_pct=120.0)
    with pytest.raises(ConfigError):
        LightingPolicy(GROUP, DEVICES, hold_s=0.0)
