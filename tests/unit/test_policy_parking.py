"""Parking: free spaces per zone, and the nearest free spaces for the citizen app."""

from datetime import UTC, datetime

import orjson
import pytest

from actors.decisions import ReportMetric
from actors.parking import ParkingPolicy, make_policy
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import assets_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

NOW = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
ORIGIN = (47.3220, 5.0415)  # place de la Libération, roughly


def _spot(n: int, north_m: float) -> Device:
    # One spot every `north_m` metres north of ORIGIN (1 m of latitude ~ 1/111_195 degree).
    return Device(
        dev_eui=f"70b3d57ed0000b{n:02d}",
        name=f"parking_spot-dijon-{n:05d}",
        asset_class=assets_pb2.PARKING_SPOT,
        group="dijon-1",
        commune="Dijon",
        latitude=ORIGIN[0] + north_m / 111_195,
        longitude=ORIGIN[1],
        transport=assets_pb2.LORAWAN,
        application_id="app",
    )


# Spots at 300 m, 100 m, 200 m and 50 m from ORIGIN, listed out of distance order.
SPOTS = [_spot(1, 300), _spot(2, 100), _spot(3, 200), _spot(4, 50)]
E1, E2, E3, E4 = (s.dev_eui for s in SPOTS)


def reading(eui: str, occupied: bool) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=eui,
        asset_class=assets_pb2.PARKING_SPOT,
        group="dijon-1",
        parking=telemetry_pb2.ParkingReading(occupied=occupied, battery_pct=90.0),
    )


def test_free_count_follows_occupancy_and_is_reported_on_change() -> None:
    policy = ParkingPolicy("dijon-1", SPOTS)
    assert policy.free_spaces() == {"dijon-1": 0}  # nobody heard yet: nothing promised
    out = policy.on_telemetry([reading(e, False) for e in (E1, E2, E3)], NOW)
    assert out == [ReportMetric("parking.free_spaces", 3, {"zone": "dijon-1"})]
    assert policy.on_telemetry([reading(E1, False)], NOW) == []  # unchanged: no report
    out = policy.on_telemetry([reading(E2, True), reading(E4, True)], NOW)
    assert out == [ReportMetric("parking.free_spaces", 2, {"zone": "dijon-1"})]
    assert policy.free_spaces() == {"dijon-1": 2}
    assert policy.capacity() == {"dijon-1": 4}
    assert policy.on_tick(NOW) == []


def test_nearest_free_orders_by_distance_skips_occupied_and_honours_limit() -> None:
    policy = ParkingPolicy("dijon-1", SPOTS)
    policy.on_telemetry([reading(e, False) for e in (E1, E2, E3, E4)], NOW)
    policy.on_telemetry([reading(E4, True)], NOW)  # the nearest one is taken

    found = policy.nearest_free(*ORIGIN, limit=2)
    assert [eui for eui, _ in found] == [E2, E3]
    assert found[0][1] == pytest.approx(100, abs=1)
    assert found[1][1] == pytest.approx(200, abs=1)
    assert [eui for eui, _ in policy.nearest_free(*ORIGIN, limit=10)] == [E2, E3, E1]


@pytest.mark.parametrize(
    ("lat", "lon", "limit", "field"),
    [(47.3, 5.0, 0, "limit"), (91.0, 5.0, 3, "latitude"), (47.3, float("nan"), 3, "longitude")],
)
def test_nearest_free_rejects_bad_queries_naming_the_field(
    lat: float, lon: float, limit: int, field: str
) -> None:
    policy = ParkingPolicy("dijon-1", SPOTS)
    with pytest.raises(InvalidArgumentError, match=f"^{field}:"):
        policy.nearest_free(lat, lon, limit)


def test_snapshot_restore_round_trip_and_the_first_tick_reports_again() -> None:
    policy = make_policy("dijon-1", SPOTS)
    policy.on_telemetry([reading(E1, False), reading(E2, True), reading(E3, False)], NOW)
    snap = orjson.loads(orjson.dumps(policy.snapshot()))
    reborn = ParkingPolicy("dijon-1", SPOTS)
    reborn.restore(snap)
    assert reborn.snapshot() == policy.snapshot()
    assert reborn.free_spaces() == {"dijon-1": 2}
    assert reborn.on_tick(NOW) == [ReportMetric("parking.free_spaces", 2, {"zone": "dijon-1"})]
    with pytest.raises(InvalidArgumentError, match=r"^snapshot:"):
        reborn.restore({"spots": []})
