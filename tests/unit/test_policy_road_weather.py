"""Snow service: ice risk raises an alarm per station and one salting task per route."""

from datetime import UTC, datetime

import orjson
import pytest

from actors.decisions import ClearAlarm, Decision, RaiseAlarm, RequestTask
from actors.road_weather import RoadWeatherPolicy, make_policy
from bridges.registry import Device
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

NOW = datetime(2024, 1, 16, 5, 0, tzinfo=UTC)


def _station(n: int) -> Device:
    return Device(
        dev_eui=f"70b3d57ed0000d{n:02d}",
        name=f"road_weather-talant-{n:05d}",
        asset_class=assets_pb2.ROAD_WEATHER,
        group="talant",
        commune="Talant",
        latitude=47.33 + n / 1000,
        longitude=5.00,
        transport=assets_pb2.LORAWAN,
        application_id="app",
    )


A, B = _station(1), _station(2)


def reading(
    device: Device, road_c: float, humidity: float = 92.0, ice: bool = False
) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=device.dev_eui,
        asset_class=assets_pb2.ROAD_WEATHER,
        group="talant",
        road_weather=telemetry_pb2.RoadWeatherReading(
            road_temperature_c=road_c,
            air_temperature_c=road_c + 1,
            humidity_pct=humidity,
            ice_detected=ice,
        ),
    )


def tasks(decisions: list[Decision]) -> list[RequestTask]:
    return [d for d in decisions if isinstance(d, RequestTask)]


def test_one_task_per_route_while_freezing_then_a_new_one_after_recovery() -> None:
    policy = RoadWeatherPolicy("talant", [A, B])
    assert policy.on_telemetry([reading(A, 4.0), reading(B, 5.0)], NOW) == []

    first = policy.on_telemetry([reading(A, 0.8)], NOW)
    assert [(d.originator, d.type, d.severity) for d in first if isinstance(d, RaiseAlarm)] == [
        (A.dev_eui, "ice_risk", operations_pb2.MAJOR)
    ]
    (task,) = tasks(first)
    assert (task.department, task.kind, task.origin) == (
        operations_pb2.SNOW_SERVICE,
        "salt_route",
        "route:salt-talant",
    )
    assert (task.latitude, task.longitude) == (A.latitude, A.longitude)
    assert task.priority == 2

    # Still freezing, and B on the same route freezes too: an alarm for B, no second task.
    more = policy.on_telemetry([reading(A, -1.0), reading(B, 0.5)], NOW)
    assert tasks(more) == []
    assert [d.originator for d in more if isinstance(d, RaiseAlarm)] == [B.dev_eui]

    # 2 °C is inside the hysteresis gap: nothing clears.
    assert policy.on_telemetry([reading(A, 2.0), reading(B, 2.5)], NOW) == []
    # A recovers; B still at risk keeps the route's task open.
    out = policy.on_telemetry([reading(A, 3.5)], NOW)
    assert [d.originator for d in out if isinstance(d, ClearAlarm)] == [A.dev_eui]
    assert tasks(policy.on_telemetry([reading(A, 0.5)], NOW)) == []  # A again: same route
    policy.on_telemetry([reading(A, 4.0), reading(B, 4.0)], NOW)
    assert policy.open_routes() == []

    # A new frost after recovery asks for a new round.
    assert len(tasks(policy.on_telemetry([reading(B, 0.0)], NOW))) == 1


def test_ice_detected_is_urgent_and_a_dry_cold_road_is_not_a_risk() -> None:
    policy = RoadWeatherPolicy("talant", [A, B])
    assert policy.on_telemetry([reading(B, 0.5, humidity=50.0)], NOW) == []
    out = policy.on_telemetry([reading(A, 1.5, humidity=60.0, ice=True)], NOW)
    (task,) = tasks(out)
    assert task.priority == 1
    assert "ice detected" in task.detail
    # Ice still reported above the recovery temperature keeps the alarm.
    assert policy.on_telemetry([reading(A, 3.5, ice=True)], NOW) == []


def test_stations_on_different_routes_get_a_task_each() -> None:
    routes = {A.dev_eui: "rd-971-combe", B.dev_eui: "bd-de-troyes"}
    policy = RoadWeatherPolicy("talant", [A, B], routes=routes)
    out = policy.on_telemetry([reading(A, 0.0), reading(B, 0.0)], NOW)
    assert sorted(t.origin for t in tasks(out)) == ["route:bd-de-troyes", "route:rd-971-combe"]


def test_snapshot_restore_keeps_the_open_route() -> None:
    policy = make_policy("talant", [A, B])
    policy.on_telemetry([reading(A, 0.0)], NOW)
    snap = orjson.loads(orjson.dumps(policy.snapshot()))
    reborn = RoadWeatherPolicy("talant", [A, B])
    reborn.restore(snap)
    assert reborn.snapshot() == policy.snapshot()
    assert reborn.on_telemetry([reading(A, -0.5), reading(B, 0.2)], NOW) == [
        RaiseAlarm(
            B.dev_eui,
            "ice_risk",
            operations_pb2.MAJOR,
            "risk of ice on salt-talant: road 0.2 °C, humidity 92 % at road_weather-talant-00002",
        )
    ]
