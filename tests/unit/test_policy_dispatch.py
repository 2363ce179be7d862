"""Dispatch: the nearest available car of the department, busy until released."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from actors.dispatch import DispatchPolicy, department_of_group, make_policy
from actors.geo import haversine_m
from bridges.registry import Device
from citypost.errors import InvalidArgumentError, NotFoundError
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

NOW = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
TASK = (47.3220, 5.0415)


def _car(n: int) -> Device:
    return Device(
        dev_eui=f"70b3d57ed0000f{n:02d}",
        name=f"company_car-roads-{n:05d}",
        asset_class=assets_pb2.COMPANY_CAR,
        group="roads-1",
        commune="Dijon",
        latitude=47.3035,
        longitude=5.0535,
        transport=assets_pb2.IP,
        application_id="app",
    )


CARS = [_car(1), _car(2), _car(3)]
C1, C2, C3 = (c.dev_eui for c in CARS)


def fix(eui: str, lat: float, lon: float, at: datetime = NOW) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.COMPANY_CAR,
        group="roads-1",
        observed_at_ms=int(at.timestamp() * 1000),
        vehicle=telemetry_pb2.VehicleReading(latitude=lat, longitude=lon, speed_kmh=30.0),
    )


def fleet() -> DispatchPolicy:
    policy = DispatchPolicy("roads-1", CARS)
    policy.on_telemetry(
        [
            fix(C1, 47.3300, 5.0415),  # ~890 m north of TASK
            fix(C2, 47.3230, 5.0415),  # ~110 m
            fix(C3, 47.3260, 5.0415),  # ~445 m
        ],
        NOW,
    )
    return policy


def test_haversine_matches_a_known_distance() -> None:
    # One minute of latitude is one nautical mile: 1852 m.
    assert haversine_m(47.0, 5.0, 47.0 + 1 / 60, 5.0) == pytest.approx(1853, abs=2)
    assert department_of_group("roads-1") == operations_pb2.ROADS
    assert department_of_group("municipal_police") == operations_pb2.MUNICIPAL_POLICE
    assert department_of_group("line-3") == operations_pb2.DEPARTMENT_UNSPECIFIED


def test_nearest_available_car_is_chosen_busy_skipped_release_frees() -> None:
    policy = fleet()
    assert policy.assign(TASK, operations_pb2.ROADS, NOW, task="t1") == C2
    assert policy.busy_with(C2) == "t1"
    assert policy.assign(TASK, operations_pb2.ROADS, NOW) == C3  # C2 is busy
    assert policy.assign(TASK, operations_pb2.ROADS, NOW) == C1
    assert policy.assign(TASK, operations_pb2.ROADS, NOW) is None  # all three out
    policy.release(C2)
    assert policy.assign(TASK, operations_pb2.ROADS, NOW) == C2
    policy.release(C1)
    policy.release(C1)  # releasing a free car changes nothing
    assert policy.available(NOW) == [C1]


def test_no_car_for_another_department_or_without_a_recent_fix() -> None:
    policy = fleet()
    assert policy.assign(TASK, operations_pb2.POLICE, NOW) is None
    assert DispatchPolicy("roads-1", CARS).assign(TASK, operations_pb2.ROADS, NOW) is None
    later = NOW + timedelta(minutes=11)  # every fix is now older than 10 minutes
    assert policy.assign(TASK, operations_pb2.ROADS, later) is None
    policy.on_telemetry([fix(C1, 47.3300, 5.0415, later)], later)
    assert policy.assign(TASK, operations_pb2.ROADS, later) == C1


def test_positions_follow_the_latest_fix() -> None:
    policy = fleet()
    policy.on_telemetry([fix(C1, 47.3221, 5.0415, NOW + timedelta(seconds=30))], NOW)
    # An older fix arriving late does not move the car back.
    policy.on_telemetry([fix(C1, 47.3300, 5.0415, NOW - timedelta(seconds=30))], NOW)
    assert policy.assign(TASK, operations_pb2.ROADS, NOW) == C1


def test_bad_inputs_raise_citypost_errors() -> None:
    policy = fleet()
    with pytest.raises(NotFoundError, match=r"^dev_eui:"):
        policy.release("ffffffffffffffff")
    with pytest.raises(InvalidArgumentError, match=r"^task_location:"):
        policy.assign((95.0, 5.0), operations_pb2.ROADS, NOW)


def test_snapshot_restore_round_trip_keeps_positions_and_assignments() -> None:
    policy = fleet()
    policy.assign(TASK, operations_pb2.ROADS, NOW, task="t7")
    snap = orjson.loads(orjson.dumps(policy.snapshot()))
    reborn = make_policy("roads-1", CARS)
    assert isinstance(reborn, DispatchPolicy)
    reborn.restore(snap)
    assert reborn.snapshot() == policy.snapshot()
    assert reborn.busy_with(C2) == "t7"
    assert reborn.assign(TASK, operations_pb2.ROADS, NOW) == C3
