"""Traffic signal policy: bus priority within safety bounds, delay saved, faults, snapshots."""

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from actors.decisions import (
    ClearAlarm,
    Decision,
    IssueCommand,
    RaiseAlarm,
    ReportMetric,
    RequestTask,
)
from actors.geo import bearing_deg, haversine_m
from actors.traffic import (
    DELAY_SAVED_METRIC,
    TrafficPolicy,
    make_policy,
)
from bridges.registry import Device
from citypost.errors import ConfigError, InvalidArgumentError
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

GROUP = "dijon"
SIGNAL, OTHER_SIGNAL = "00000000000000b1", "00000000000000b2"
SIGNAL_AT = (47.3226, 5.0350)  # Darcy
OTHER_AT = (47.3400, 5.0600)  # 2.5 km away
BUS_1, BUS_2, BUS_3 = "00000000000000c1", "00000000000000c2", "00000000000000c3"
T0 = datetime(2024, 3, 12, 8, 0, tzinfo=UTC)
M_PER_DEG_LAT = 111_195.0


def _signal(eui: str, at: tuple[float, float]) -> Device:
    return Device(
        dev_eui=eui,
        name=f"signal-{eui[-2:]}",
        asset_class=assets_pb2.AssetClass.TRAFFIC_SIGNAL,
        group=GROUP,
        commune="Dijon",
        latitude=at[0],
        longitude=at[1],
        transport=assets_pb2.Transport.IP,
        application_id="app",
    )


DEVICES = [_signal(SIGNAL, SIGNAL_AT), _signal(OTHER_SIGNAL, OTHER_AT)]


def _bus(
    eui: str,
    metres_south: float,
    *,
    heading: float = 0.0,
    speed: float = 30.0,
    line: int = 3,
    delay: float = 60.0,
) -> telemetry_pb2.Telemetry:
    """A bus `metres_south` of SIGNAL (negative: north of it)."""
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.AssetClass.BUS,
        group=f"l{line}",
        vehicle=telemetry_pb2.VehicleReading(
            latitude=SIGNAL_AT[0] - metres_south / M_PER_DEG_LAT,
            longitude=SIGNAL_AT[1],
            speed_kmh=speed,
            heading_deg=heading,
            line=line,
            delay_s=delay,
        ),
    )


def _signal_reading(
    eui: str = SIGNAL,
    *,
    served: bool = False,
    fault: bool = False,
    phase: int = telemetry_pb2.SignalPhase.GREEN,
) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.AssetClass.TRAFFIC_SIGNAL,
        group=GROUP,
        traffic_signal=telemetry_pb2.TrafficSignalReading(
            phase=telemetry_pb2.SignalPhase.ValueType(phase),
            bus_priority_active=served,
            fault=fault,
        ),
    )


def _extensions(decisions: Sequence[Decision]) -> list[tuple[str, int]]:
    out = []
    for d in decisions:
        assert isinstance(d, IssueCommand)
        assert d.command.WhichOneof("action") == "signal_priority"
        assert d.command.asset_class == assets_pb2.AssetClass.TRAFFIC_SIGNAL
        out.append((d.command.target.dev_eui, d.command.signal_priority.extend_green_ms))
    return out


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- geometry --------------------------------------------------------------------------------


def test_haversine_and_bearing() -> None:
    assert haversine_m(47.0, 5.0, 48.0, 5.0) == pytest.approx(111_195, rel=1e-3)
    east = haversine_m(47.32, 5.0, 47.32, 6.0)
    assert east == pytest.approx(111_195 * math.cos(math.radians(47.32)), rel=2e-3)
    assert bearing_deg(47.3, 5.0, 47.4, 5.0) == pytest.approx(0.0, abs=0.01)
    assert bearing_deg(47.3, 5.0, 47.3, 5.1) == pytest.approx(90.0, abs=0.1)
    assert bearing_deg(47.3, 5.0, 47.2, 5.0) == pytest.approx(180.0, abs=0.01)
    assert bearing_deg(47.3, 5.1, 47.3, 5.0) == pytest.approx(270.0, abs=0.1)


# --- priority --------------------------------------------------------------------------------


def test_an_approaching_bus_gets_one_extension_within_bounds() -> None:
    policy = make_policy(GROUP, DEVICES)
    granted = _extensions(policy.on_telemetry([_bus(BUS_1, 80.0)], T0))
    assert len(granted) == 1
    target, extension_ms = granted[0]
    assert target == SIGNAL
    eta_ms = 80.0 / (30.0 / 3.6) * 1000  # the bus needs this long to reach the stop line
    assert eta_ms < extension_ms <= 15_000


def test_the_extension_never_exceeds_the_maximum() -> None:
    policy = TrafficPolicy(GROUP, DEVICES, max_extension_s=8.0, clearance_s=2.0)
    # 40 m at 30 km/h is 4.8 s away: 6.8 s with the clearance, under the 8 s cap.
    assert _extensions(policy.on_telemetry([_bus(BUS_1, 40.0)], T0))[0][1] <= 8_000
    # 80 m is 9.6 s away: the bus could not clear within 8 s, so nothing (yet).
    far = TrafficPolicy(GROUP, DEVICES, max_extension_s=8.0, clearance_s=2.0)
    assert far.on_telemetry([_bus(BUS_1, 80.0)], T0) == []


def test_no_stacking_and_a_minimum_green_for_the_crossing_flow() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    [(_, extension_ms)] = _extensions(policy.on_telemetry([_bus(BUS_1, 80.0)], T0))
    end_s = extension_ms / 1000
    # A second bus during the active extension gets nothing extra, nor does the first again.
    assert policy.on_telemetry([_bus(BUS_2, 60.0), _bus(BUS_1, 40.0)], _at(3)) == []
    # After the extension, within the crossing flow's minimum green: still nothing.
    policy.on_tick(_at(end_s + 1))
    assert policy.on_telemetry([_bus(BUS_3, 60.0)], _at(end_s + 19)) == []
    # Past the minimum green, the next bus is served.
    granted = _extensions(policy.on_telemetry([_bus(BUS_3, 60.0)], _at(end_s + 20.5)))
    assert [t for t, _ in granted] == [SIGNAL]


def test_a_bus_is_served_once_per_approach() -> None:
    policy = TrafficPolicy(GROUP, DEVICES, min_cross_green_s=5.0, rearm_s=120.0)
    assert len(policy.on_telemetry([_bus(BUS_1, 80.0)], T0)) == 1
    assert policy.on_telemetry([_bus(BUS_1, 30.0)], _at(60)) == []
    assert len(policy.on_telemetry([_bus(BUS_1, 80.0)], _at(200))) == 1


@pytest.mark.parametrize(
    ("reading", "why"),
    [
        (_bus(BUS_1, 80.0, heading=180.0), "moving away"),
        (_bus(BUS_1, -80.0, heading=0.0), "past the junction"),
        (_bus(BUS_1, 80.0, heading=90.0), "crossing on another street"),
        (_bus(BUS_1, 80.0, line=0), "not in service on a line"),
        (_bus(BUS_1, 80.0, speed=0.0), "stopped"),
        (_bus(BUS_1, 400.0), "too far"),
        (_bus(BUS_1, 80.0, delay=-20.0), "ahead of schedule"),
    ],
)
def test_no_priority_for_a_bus_that_does_not_need_it(
    reading: telemetry_pb2.Telemetry, why: str
) -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    assert policy.on_telemetry([reading], T0) == [], why


def test_only_lines_the_signal_serves_get_priority() -> None:
    policy = TrafficPolicy(GROUP, DEVICES, lines_by_signal={SIGNAL: [1, 2]})
    assert policy.on_telemetry([_bus(BUS_1, 80.0, line=3)], T0) == []
    assert len(policy.on_telemetry([_bus(BUS_2, 80.0, line=2)], T0)) == 1


def test_company_cars_are_not_buses() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    car = _bus(BUS_1, 80.0)
    car.asset_class = assets_pb2.AssetClass.COMPANY_CAR
    assert policy.on_telemetry([car], T0) == []


def test_a_faulty_or_flashing_signal_grants_nothing() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    policy.on_telemetry([_signal_reading(phase=telemetry_pb2.SignalPhase.FLASHING_AMBER)], T0)
    assert policy.on_telemetry([_bus(BUS_1, 80.0)], T0) == []
    policy.on_telemetry([_signal_reading(fault=True)], _at(1))
    policy.on_telemetry(
        [_signal_reading(fault=True, phase=telemetry_pb2.SignalPhase.GREEN)], _at(2)
    )
    assert policy.on_telemetry([_bus(BUS_2, 80.0)], _at(3)) == []
    policy.on_telemetry([_signal_reading()], _at(4))
    assert len(policy.on_telemetry([_bus(BUS_3, 80.0)], _at(5))) == 1


# --- delay saved -----------------------------------------------------------------------------


def test_delay_saved_is_counted_when_the_signal_confirms_the_priority() -> None:
    policy = TrafficPolicy(GROUP, DEVICES, saved_per_priority_s=13.0)
    policy.on_telemetry([_bus(BUS_1, 80.0)], T0)
    # A reading before the window ends that does not show it yet: the command may be in flight.
    assert policy.on_telemetry([_signal_reading()], _at(1)) == []
    confirmed = policy.on_telemetry([_signal_reading(served=True)], _at(20))
    assert confirmed == [ReportMetric(DELAY_SAVED_METRIC, 13.0, {"group": GROUP})]
    assert policy.on_telemetry([_signal_reading(served=True)], _at(50)) == []
    assert policy.bus_delay_saved_s == 13.0


def test_an_unserved_priority_saves_nothing() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    policy.on_telemetry([_bus(BUS_1, 80.0)], T0)
    assert policy.on_telemetry([_signal_reading()], _at(40)) == []
    assert policy.on_telemetry([_signal_reading(served=True)], _at(70)) == []
    assert policy.bus_delay_saved_s == 0.0


# --- faults ----------------------------------------------------------------------------------


def test_a_signal_fault_raises_one_major_alarm_and_one_task_then_clears() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    first = policy.on_telemetry([_signal_reading(OTHER_SIGNAL, fault=True)], T0)
    [alarm] = [d for d in first if isinstance(d, RaiseAlarm)]
    [task] = [d for d in first if isinstance(d, RequestTask)]
    assert len(first) == 2
    assert (alarm.originator, alarm.type) == (OTHER_SIGNAL, "signal_fault")
    assert alarm.severity == operations_pb2.Severity.MAJOR
    assert (task.department, task.kind) == (operations_pb2.Department.ROADS, "repair_signal")
    assert (task.latitude, task.longitude) == OTHER_AT
    assert policy.on_telemetry([_signal_reading(OTHER_SIGNAL, fault=True)], _at(30)) == []
    cleared = policy.on_telemetry([_signal_reading(OTHER_SIGNAL)], _at(60))
    assert cleared == [ClearAlarm(OTHER_SIGNAL, "signal_fault", "the signal reports no fault")]


# --- snapshot and the group's desired state --------------------------------------------------


def _tail(policy: TrafficPolicy) -> list[Decision]:
    out: list[Decision] = []
    out += policy.on_telemetry([_bus(BUS_2, 60.0)], _at(5))  # during the extension
    out += policy.on_tick(_at(30))
    out += policy.on_telemetry([_bus(BUS_1, 50.0)], _at(40))  # served already
    out += policy.on_telemetry([_signal_reading(served=True)], _at(41))
    out += policy.on_telemetry([_bus(BUS_3, 60.0)], _at(45))
    out += policy.on_telemetry([_signal_reading(OTHER_SIGNAL)], _at(46))
    return out


def test_snapshot_then_restore_gives_the_same_decisions() -> None:
    policy = TrafficPolicy(GROUP, DEVICES)
    policy.on_telemetry([_bus(BUS_1, 80.0), _signal_reading(OTHER_SIGNAL, fault=True)], T0)
    restored = TrafficPolicy(GROUP, DEVICES)
    restored.restore(json.loads(json.dumps(policy.snapshot())))
    original_tail, restored_tail = _tail(policy), _tail(restored)
    assert original_tail == restored_tail
    kinds = {type(d) for d in original_tail}
    assert {IssueCommand, ReportMetric, ClearAlarm} <= kinds


def test_desired_state_is_every_signal_on_its_own_cycle() -> None:
    [command] = TrafficPolicy(GROUP, DEVICES).desired_commands(T0)
    assert command.command.target.group == GROUP
    assert command.command.WhichOneof("action") == "set_signal_mode"
    assert (
        command.command.set_signal_mode.phase == telemetry_pb2.SignalPhase.SIGNAL_PHASE_UNSPECIFIED
    )


def test_bad_input_is_refused_with_citypost_errors() -> None:
    with pytest.raises(ConfigError):
        TrafficPolicy(GROUP, DEVICES, max_extension_s=0.0)
    with pytest.raises(ConfigError):
        TrafficPolicy(GROUP, DEVICES, clearance_s=20.0)
    policy = TrafficPolicy(GROUP, DEVICES)
    with pytest.raises(InvalidArgumentError):
        policy.restore({"version": 1, "active_until": []})
    with pytest.raises(InvalidArgumentError):
        policy.on_telemetry([], datetime(2024, 1, 1))
