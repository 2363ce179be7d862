"""Bollard policy: allow-list access, passage and raise, fail-safe, faults, snapshots."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from actors.bollards import (
    LOWERED,
    RAISED,
    BollardPolicy,
    make_policy,
    normalise_plate,
)
from actors.decisions import ClearAlarm, Decision, IssueCommand, RaiseAlarm, RequestTask
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError, NotFoundError
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

GROUP = "dijon"
B1, B2, B3 = "00000000000000d1", "00000000000000d2", "00000000000000d3"
RESIDENT = "AB-123-CD"
# Winter: Paris is UTC+1. 07:00 Paris = 06:00 UTC; 14:00 Paris = 13:00 UTC.
WINTER_MORNING = datetime(2024, 1, 16, 6, 0, tzinfo=UTC)
WINTER_AFTERNOON = datetime(2024, 1, 16, 13, 0, tzinfo=UTC)
SMALL_HOURS = datetime(2024, 1, 16, 2, 0, tzinfo=UTC)


def _bollard(eui: str, lat: float) -> Device:
    return Device(
        dev_eui=eui,
        name=f"bollard-{eui[-2:]}",
        asset_class=assets_pb2.AssetClass.BOLLARD,
        group=GROUP,
        commune="Dijon",
        latitude=lat,
        longitude=5.0405,
        transport=assets_pb2.Transport.LORAWAN,
        application_id="app",
    )


DEVICES = [_bollard(B1, 47.3170), _bollard(B2, 47.3270), _bollard(B3, 47.3220)]


def _policy(**kwargs: Any) -> BollardPolicy:
    return BollardPolicy(GROUP, DEVICES, residents=[RESIDENT], **kwargs)


def _reading(
    eui: str, at: datetime, *, vehicle: bool = False, fault: bool = False
) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.AssetClass.BOLLARD,
        group=GROUP,
        observed_at_ms=int(at.timestamp() * 1000),
        bollard=telemetry_pb2.BollardReading(
            position=telemetry_pb2.BollardPosition.LOWERED, vehicle_present=vehicle, fault=fault
        ),
    )


def _moves(decisions: Sequence[Decision]) -> list[tuple[str, str, int]]:
    """(target kind, target, position) of each command."""
    out: list[tuple[str, str, int]] = []
    for d in decisions:
        assert isinstance(d, IssueCommand)
        assert d.command.asset_class == assets_pb2.AssetClass.BOLLARD
        kind = d.command.target.WhichOneof("kind")
        assert kind is not None
        out.append((kind, getattr(d.command.target, kind), d.command.set_bollard_position.position))
    return out


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("when", [SMALL_HOURS, WINTER_MORNING, WINTER_AFTERNOON])
def test_emergency_vehicles_are_always_granted(when: datetime) -> None:
    policy = make_policy(GROUP, DEVICES)
    assert isinstance(policy, BollardPolicy)
    granted, reason, decisions = policy.request_access("SAMU-21", "emergency", B2, when)
    assert granted and "emergency" in reason
    assert _moves(decisions) == [("dev_eui", B2, LOWERED)]


def test_a_delivery_outside_its_window_is_refused_with_the_window_in_the_reason() -> None:
    policy = _policy()
    granted, reason, decisions = policy.request_access("DEL-1", "delivery", B1, WINTER_AFTERNOON)
    assert not granted and decisions == []
    assert "06:00-11:00" in reason and "Europe/Paris" in reason and "14:00" in reason
    granted, _, decisions = policy.request_access("DEL-1", "delivery", B1, WINTER_MORNING)
    assert granted and _moves(decisions) == [("dev_eui", B1, LOWERED)]


def test_delivery_windows_follow_local_time_across_daylight_saving() -> None:
    policy = _policy()
    # In July Paris is UTC+2: 04:00 UTC is 06:00 there (open), 03:30 UTC is 05:30 (closed).
    assert policy.request_access("DEL-1", "delivery", B1, datetime(2024, 7, 2, 4, 0, tzinfo=UTC))[0]
    assert not policy.request_access(
        "DEL-1", "delivery", B1, datetime(2024, 7, 2, 3, 30, tzinfo=UTC)
    )[0]
    # 10:30 UTC is 11:30 in winter: closed; 09:30 UTC is 10:30: open.
    assert not policy.request_access(
        "DEL-1", "delivery", B1, datetime(2024, 1, 16, 10, 30, tzinfo=UTC)
    )[0]
    assert policy.request_access("DEL-1", "delivery", B1, datetime(2024, 1, 16, 9, 30, tzinfo=UTC))[
        0
    ]


def test_registered_delivery_vehicles_and_custom_windows() -> None:
    policy = _policy(delivery_vehicles=["FR-777-XX"], delivery_windows=[(time(22, 0), time(2, 0))])
    granted, reason, _ = policy.request_access(
        "GB-1", "delivery", B1, SMALL_HOURS - timedelta(hours=2)
    )
    assert not granted and "not a registered delivery vehicle" in reason
    # 23:00 Paris, inside a window across midnight.
    assert policy.request_access("fr 777 xx", "delivery", B1, SMALL_HOURS - timedelta(hours=2))[0]
    assert not policy.request_access("FR777XX", "delivery", B1, WINTER_MORNING)[0]


def test_unknown_vehicles_are_refused_with_a_reason() -> None:
    policy = _policy()
    granted, reason, decisions = policy.request_access("ZZ-999-ZZ", "resident", B1, WINTER_MORNING)
    assert not granted and decisions == []
    assert "ZZ999ZZ" in reason and "allow-list" in reason
    granted, reason, decisions = policy.request_access("ZZ-999-ZZ", "other", B1, WINTER_MORNING)
    assert not granted and decisions == [] and "no access right" in reason


def test_residents_are_granted_whatever_the_plate_spelling() -> None:
    assert normalise_plate(" ab 123-cd ") == "AB123CD"
    granted, reason, decisions = _policy().request_access("ab 123 cd", "resident", B3, SMALL_HOURS)
    assert granted and "resident" in reason and _moves(decisions) == [("dev_eui", B3, LOWERED)]


def test_bad_requests_raise_citypost_errors() -> None:
    policy = _policy()
    with pytest.raises(NotFoundError):
        policy.request_access(RESIDENT, "resident", "ffffffffffffffff", WINTER_MORNING)
    with pytest.raises(InvalidArgumentError):
        policy.request_access(RESIDENT, "tourist", B1, WINTER_MORNING)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        policy.request_access(" - ", "emergency", B1, WINTER_MORNING)
    with pytest.raises(InvalidArgumentError):
        policy.request_access(RESIDENT, "resident", B1, datetime(2024, 1, 16, 7))
    with pytest.raises(ConfigError):
        _policy(passage_s=0.0)
    with pytest.raises(ConfigError):
        _policy(fail_safe={B1: telemetry_pb2.BollardPosition.MOVING})
    with pytest.raises(ConfigError):
        _policy(timezone="Europe/Dijon")


# --- passage ---------------------------------------------------------------------------------


def test_the_bollard_is_raised_again_after_the_passage_time() -> None:
    policy = _policy(passage_s=30.0)
    policy.request_access(RESIDENT, "resident", B1, WINTER_MORNING)
    assert policy.on_tick(WINTER_MORNING + timedelta(seconds=29)) == []
    raised = policy.on_tick(WINTER_MORNING + timedelta(seconds=31))
    assert _moves(raised) == [("dev_eui", B1, RAISED)]
    assert policy.on_tick(WINTER_MORNING + timedelta(seconds=90)) == []


def test_a_second_grant_while_lowered_sends_nothing_and_extends_the_passage() -> None:
    policy = _policy(passage_s=30.0)
    policy.request_access(RESIDENT, "resident", B1, WINTER_MORNING)
    later = WINTER_MORNING + timedelta(seconds=20)
    granted, _, decisions = policy.request_access("SAMU", "emergency", B1, later)
    assert granted and decisions == []
    assert policy.on_tick(WINTER_MORNING + timedelta(seconds=35)) == []
    assert _moves(policy.on_tick(later + timedelta(seconds=31))) == [("dev_eui", B1, RAISED)]


def test_a_bollard_is_never_raised_onto_a_reported_vehicle() -> None:
    policy = _policy(passage_s=30.0)
    t0 = WINTER_MORNING
    # A vehicle seen before the lowering (waiting at the raised bollard) does not hold it.
    policy.on_telemetry([_reading(B1, t0 - timedelta(seconds=10), vehicle=True)], t0)
    policy.request_access(RESIDENT, "resident", B1, t0)
    policy.on_telemetry([_reading(B1, t0 + timedelta(seconds=20), vehicle=True)], t0)
    assert policy.on_tick(t0 + timedelta(seconds=31)) == []
    assert policy.on_tick(t0 + timedelta(seconds=62)) == []
    policy.on_telemetry([_reading(B1, t0 + timedelta(seconds=70))], t0)
    assert _moves(policy.on_tick(t0 + timedelta(seconds=93))) == [("dev_eui", B1, RAISED)]


# --- fail-safe and the desired state ---------------------------------------------------------


def test_fail_safe_commands_cover_every_bollard_with_one_group_command() -> None:
    policy = _policy()
    assert set(policy.fail_safe_positions) == {B1, B2, B3}
    assert _moves(policy.fail_safe_commands()) == [("group", GROUP, LOWERED)]


def test_declared_fail_safe_positions_are_commanded_per_bollard() -> None:
    policy = _policy(fail_safe={B2: RAISED})
    moves = _moves(policy.fail_safe_commands())
    assert sorted(moves) == [
        ("dev_eui", B1, LOWERED),
        ("dev_eui", B2, RAISED),
        ("dev_eui", B3, LOWERED),
    ]
    granted, reason, _ = policy.request_access("SAMU", "emergency", B2, WINTER_MORNING)
    assert not granted and "held raised" in reason


def test_fail_safe_holds_until_released() -> None:
    policy = _policy(passage_s=30.0)
    policy.request_access(RESIDENT, "resident", B1, WINTER_MORNING)
    policy.fail_safe_commands()
    assert policy.fail_safe_engaged
    # No scheduled raise undoes the fail-safe; everyone can pass a lowered bollard.
    assert policy.on_tick(WINTER_MORNING + timedelta(minutes=5)) == []
    granted, _, decisions = policy.request_access("X", "other", B3, WINTER_MORNING)
    assert granted and decisions == []
    assert _moves(policy.desired_commands(WINTER_MORNING)) == [("group", GROUP, LOWERED)]
    released = policy.release_fail_safe(WINTER_MORNING + timedelta(minutes=6))
    assert _moves(released) == [("group", GROUP, RAISED)]
    assert not policy.fail_safe_engaged


def test_desired_state_keeps_a_passage_open_with_per_bollard_commands() -> None:
    policy = _policy(passage_s=30.0)
    assert _moves(policy.desired_commands(WINTER_MORNING)) == [("group", GROUP, RAISED)]
    policy.request_access(RESIDENT, "resident", B2, WINTER_MORNING)
    during = policy.desired_commands(WINTER_MORNING + timedelta(seconds=10))
    assert sorted(_moves(during)) == [
        ("dev_eui", B1, RAISED),
        ("dev_eui", B2, LOWERED),
        ("dev_eui", B3, RAISED),
    ]


# --- faults ----------------------------------------------------------------------------------


def test_a_bollard_fault_raises_one_major_alarm_and_one_task_then_clears() -> None:
    policy = _policy()
    first = policy.on_telemetry([_reading(B3, WINTER_MORNING, fault=True)], WINTER_MORNING)
    [alarm] = [d for d in first if isinstance(d, RaiseAlarm)]
    [task] = [d for d in first if isinstance(d, RequestTask)]
    assert len(first) == 2
    assert (alarm.originator, alarm.type, alarm.severity) == (
        B3,
        "bollard_fault",
        operations_pb2.Severity.MAJOR,
    )
    assert task.department == operations_pb2.Department.ROADS and task.kind == "repair_bollard"
    later = WINTER_MORNING + timedelta(minutes=5)
    assert policy.on_telemetry([_reading(B3, later, fault=True)], later) == []
    # A faulty bollard refuses ordinary access but still tries to let emergencies through.
    granted, reason, _ = policy.request_access(RESIDENT, "resident", B3, later)
    assert not granted and "out of order" in reason
    granted, _, decisions = policy.request_access("SAMU", "emergency", B3, later)
    assert granted and _moves(decisions) == [("dev_eui", B3, LOWERED)]
    fixed = WINTER_MORNING + timedelta(minutes=10)
    assert policy.on_telemetry([_reading(B3, fixed)], fixed) == [
        ClearAlarm(B3, "bollard_fault", "the bollard reports no fault")
    ]


# --- snapshot --------------------------------------------------------------------------------


def _tail(policy: BollardPolicy) -> list[object]:
    t = WINTER_MORNING
    out: list[object] = []
    out += policy.on_tick(t + timedelta(seconds=20))
    out += policy.on_telemetry([_reading(B2, t + timedelta(seconds=21))], t)
    out += policy.on_tick(t + timedelta(seconds=40))
    out.append(policy.request_access(RESIDENT, "resident", B1, t + timedelta(seconds=41)))
    out.append(policy.request_access("DEL", "delivery", B3, t + timedelta(seconds=42)))
    out += policy.on_tick(t + timedelta(seconds=80))
    return out


def test_snapshot_then_restore_gives_the_same_decisions() -> None:
    policy = _policy(passage_s=30.0)
    policy.request_access(RESIDENT, "resident", B1, WINTER_MORNING)
    policy.request_access("SAMU", "emergency", B2, WINTER_MORNING)
    policy.on_telemetry(
        [_reading(B2, WINTER_MORNING, vehicle=True), _reading(B3, WINTER_MORNING, fault=True)],
        WINTER_MORNING,
    )
    restored = _policy(passage_s=30.0)
    restored.restore(json.loads(json.dumps(policy.snapshot())))
    original_tail, restored_tail = _tail(policy), _tail(restored)
    assert original_tail == restored_tail
    assert any(isinstance(d, IssueCommand) for d in original_tail)
    with pytest.raises(InvalidArgumentError):
        restored.restore({"version": 1, "commanded": {B1: "up"}})
