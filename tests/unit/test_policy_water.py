"""Water meters of elderly volunteers: the no-water alarm, its quiet period, the relatives' notes."""

from datetime import UTC, datetime, time, timedelta

import orjson
import pytest

from actors.decisions import ClearAlarm, Decision, Notify, RaiseAlarm
from actors.water import PARIS, WaterPolicy, make_policy, quiet_seconds
from bridges.registry import Device
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

EUI = "70b3d57ed0000a01"
OTHER = "70b3d57ed0000a02"


def _meter(eui: str) -> Device:
    return Device(
        dev_eui=eui,
        name=f"water_meter-talant-{eui[-2:]}",
        asset_class=assets_pb2.WATER_METER,
        group="talant",
        commune="Talant",
        latitude=47.3372,
        longitude=5.0058,
        transport=assets_pb2.LORAWAN,
        application_id="app",
    )


DEVICES = [_meter(EUI), _meter(OTHER)]
CONTACTS = {EUI: ("contact:daughter-17", "contact:neighbour-4")}


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """A January day in Paris (UTC+1), as the aware UTC time the post hands to policies."""
    return datetime(2024, 1, day, hour, minute, tzinfo=PARIS).astimezone(UTC)


def uplink(litres: float, eui: str = EUI, leak: bool = False) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.WATER_METER,
        group="talant",
        water_meter=telemetry_pb2.WaterMeterReading(
            litres_since_last=litres, leak_suspected=leak, battery_pct=80.0
        ),
    )


def run_hours(
    policy: WaterPolicy, start: datetime, hours: int, litres: float = 0.0
) -> list[Decision]:
    """Hourly uplinks from `start` (exclusive) with ticks every 10 minutes in between."""
    out: list[Decision] = []
    for h in range(1, hours + 1):
        for m in range(10, 60, 10):
            out += policy.on_tick(start + timedelta(hours=h - 1, minutes=m))
        out += policy.on_telemetry([uplink(litres)], start + timedelta(hours=h))
    return out


def test_eight_dry_hours_in_the_daytime_raise_one_alarm_and_notify_each_relative_once() -> None:
    policy = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    assert policy.on_telemetry([uplink(12.0)], local(15, 7)) == []

    before = run_hours(policy, local(15, 7), 7)  # dry until 14:00: 7 h
    assert before == []

    at_limit = run_hours(policy, local(15, 14), 1)  # 15:00: 8 h without water
    alarms = [d for d in at_limit if isinstance(d, RaiseAlarm)]
    notes = [d for d in at_limit if isinstance(d, Notify)]
    assert [(a.originator, a.type, a.severity) for a in alarms] == [
        (EUI, "no_water_drawn", operations_pb2.MAJOR)
    ]
    assert sorted(n.recipient for n in notes) == sorted(CONTACTS[EUI])
    assert {n.message for n in notes} == {"no water drawn at the registered home since 07:00"}

    # Still dry all afternoon: nothing repeated.
    assert run_hours(policy, local(15, 15), 4) == []

    flowing = policy.on_telemetry([uplink(30.0)], local(15, 19, 30))
    clears = [d for d in flowing if isinstance(d, ClearAlarm)]
    notes = [d for d in flowing if isinstance(d, Notify)]
    assert [(c.originator, c.type) for c in clears] == [(EUI, "no_water_drawn")]
    assert sorted(n.recipient for n in notes) == sorted(CONTACTS[EUI])
    assert all(n.message.startswith("water flowing again") for n in notes)
    assert policy.on_tick(local(15, 20)) == []


def test_dry_hours_inside_the_quiet_period_do_not_count() -> None:
    policy = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    policy.on_telemetry([uplink(5.0)], local(15, 22))  # last tap at 22:00
    night = run_hours(policy, local(15, 22), 8)  # until 06:00: only 22:00-23:00 counts
    assert night == []
    assert policy.dry_seconds(EUI, local(16, 6)) == pytest.approx(3600)

    # The quiet period is excluded, not forgiven: 1 h + 06:00-13:00 reaches the limit.
    morning = run_hours(policy, local(16, 6), 6)
    assert not any(isinstance(d, RaiseAlarm) for d in morning)
    at_limit = run_hours(policy, local(16, 12), 1)
    assert [d.type for d in at_limit if isinstance(d, RaiseAlarm)] == ["no_water_drawn"]
    # Across days the note carries the date, or 22:00 would read as tonight.
    notes = {d.message for d in at_limit if isinstance(d, Notify)}
    assert notes == {"no water drawn at the registered home since 15/01 22:00"}


def test_default_contact_is_one_pseudonymous_reference_per_home() -> None:
    policy = make_policy("talant", DEVICES)
    policy.on_telemetry([uplink(3.0, OTHER)], local(15, 7))
    out = policy.on_telemetry([uplink(0.0, OTHER)], local(15, 15))
    notes = [d for d in out if isinstance(d, Notify)]
    assert [n.recipient for n in notes] == [f"contact:{OTHER}"]
    assert notes[0].origin == f"{OTHER}/no_water_drawn"


def test_a_silent_meter_is_not_taken_for_a_dry_home() -> None:
    policy = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    policy.on_telemetry([uplink(8.0)], local(15, 7))
    policy.on_telemetry([uplink(0.0)], local(15, 9))  # then nothing more from the meter
    out: list[Decision] = []
    for minutes in range(0, 12 * 60, 10):
        out += policy.on_tick(local(15, 9) + timedelta(minutes=minutes))
    assert out == []  # 2 h heard dry + 2 h of grace, short of 8 h


def test_leak_raises_a_minor_alarm_once_and_clears() -> None:
    policy = WaterPolicy("talant", DEVICES)
    first = policy.on_telemetry([uplink(6.0, leak=True)], local(15, 10))
    assert first == [
        RaiseAlarm(EUI, "water_leak", operations_pb2.MINOR, "meter reports a suspected leak")
    ]
    assert policy.on_telemetry([uplink(6.0, leak=True)], local(15, 11)) == []
    cleared = policy.on_telemetry([uplink(6.0, leak=False)], local(15, 12))
    assert [(d.originator, d.type) for d in cleared if isinstance(d, ClearAlarm)] == [
        (EUI, "water_leak")
    ]
    assert len(cleared) == 1


def test_snapshot_restore_keeps_the_episode_and_the_dry_clock() -> None:
    policy = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    policy.on_telemetry([uplink(4.0)], local(15, 7))
    run_hours(policy, local(15, 7), 5)  # 12:00, 5 h dry
    mid = orjson.loads(orjson.dumps(policy.snapshot()))  # JSON-able

    reborn = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    reborn.restore(mid)
    assert reborn.snapshot() == policy.snapshot()
    raised = run_hours(reborn, local(15, 12), 3)  # the dry clock went on: alarm at 15:00
    assert [d.type for d in raised if isinstance(d, RaiseAlarm)] == ["no_water_drawn"]

    after_alarm = reborn.snapshot()
    again = WaterPolicy("talant", DEVICES, contacts=CONTACTS)
    again.restore(after_alarm)
    assert run_hours(again, local(15, 15), 2) == []  # no second alarm, no second note
    cleared = again.on_telemetry([uplink(9.0)], local(15, 18))
    assert any(isinstance(d, ClearAlarm) for d in cleared)


def test_quiet_seconds_across_midnight_and_the_spring_dst_change() -> None:
    q = (time(23), time(6))
    start = local(15, 20)
    assert quiet_seconds(start, start + timedelta(hours=12), *q, PARIS) == 7 * 3600
    assert quiet_seconds(local(15, 12), local(15, 18), *q, PARIS) == 0
    # 30-31 March 2024: clocks jump 02:00 -> 03:00, so that night's quiet period is 6 h.
    evening = datetime(2024, 3, 30, 22, tzinfo=PARIS).astimezone(UTC)
    morning = datetime(2024, 3, 31, 8, tzinfo=PARIS).astimezone(UTC)
    assert quiet_seconds(evening, morning, *q, PARIS) == 6 * 3600
    assert quiet_seconds(evening, morning, time(6), time(6), PARIS) == 0  # no quiet period
