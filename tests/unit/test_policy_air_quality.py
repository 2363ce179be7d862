"""Air quality: EEA index bands per pollutant, the worst one per station, alarms without flapping."""

from datetime import UTC, datetime

import orjson
import pytest

from actors.air_quality import (
    EEA_BOUNDS,
    AirQualityPolicy,
    Band,
    make_policy,
    pollutant_band,
    station_index,
)
from actors.decisions import ClearAlarm, Decision, RaiseAlarm, ReportMetric
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

NOW = datetime(2024, 1, 15, 8, 0, tzinfo=UTC)
EUI = "70b3d57ed0000c01"
STATION = Device(
    dev_eui=EUI,
    name="air_quality-dijon-00001",
    asset_class=assets_pb2.AIR_QUALITY,
    group="dijon",
    commune="Dijon",
    latitude=47.32,
    longitude=5.04,
    transport=assets_pb2.LORAWAN,
    application_id="app",
)
CLEAN = {"no2": 8.0, "o3": 40.0, "pm10": 10.0, "pm25": 4.0}  # good on all four

BOUNDARIES = [
    (pollutant, i, bound)
    for pollutant, bounds in EEA_BOUNDS.items()
    for i, bound in enumerate(bounds)
]


@pytest.mark.parametrize(("pollutant", "i", "bound"), BOUNDARIES)
def test_band_boundaries_per_pollutant(pollutant: str, i: int, bound: float) -> None:
    # A value at a bound belongs to the lower band; just above it, to the next.
    assert pollutant_band(pollutant, bound) == Band(i + 1)
    assert pollutant_band(pollutant, bound + 0.1) == Band(i + 2)


def test_eea_bounds_are_the_2024_revision() -> None:
    assert EEA_BOUNDS["pm25"] == (5, 15, 50, 90, 140)
    assert EEA_BOUNDS["pm10"] == (15, 45, 120, 195, 270)
    assert EEA_BOUNDS["no2"] == (10, 25, 60, 100, 150)
    assert EEA_BOUNDS["o3"] == (60, 100, 120, 160, 180)
    assert pollutant_band("no2", 0.0) == Band.GOOD
    assert pollutant_band("pm25", 10_000.0) == Band.EXTREMELY_POOR
    assert Band.VERY_POOR.label == "very poor"


def test_the_worst_pollutant_sets_the_station_index() -> None:
    assert station_index(CLEAN) == (Band.GOOD, "no2")
    assert station_index({**CLEAN, "o3": 170.0}) == (Band.VERY_POOR, "o3")
    assert station_index({**CLEAN, "pm25": 60.0, "no2": 30.0}) == (Band.POOR, "pm25")
    with pytest.raises(InvalidArgumentError, match=r"^pollutant:"):
        pollutant_band("so2", 10.0)


def reading(**ugm3: float) -> telemetry_pb2.Telemetry:
    values = {**CLEAN, **ugm3}
    return telemetry_pb2.Telemetry(
        dev_eui=EUI,
        asset_class=assets_pb2.AIR_QUALITY,
        group="dijon",
        air_quality=telemetry_pb2.AirQualityReading(
            no2_ugm3=values["no2"],
            o3_ugm3=values["o3"],
            pm10_ugm3=values["pm10"],
            pm25_ugm3=values["pm25"],
            temperature_c=5.0,
            humidity_pct=70.0,
        ),
    )


def alarms(decisions: list[Decision]) -> list[tuple[str, int | None]]:
    """(kind, severity) of alarm decisions: ("raise", MINOR), ("clear", None)."""
    out: list[tuple[str, int | None]] = []
    for d in decisions:
        if isinstance(d, RaiseAlarm):
            assert (d.originator, d.type) == (EUI, "air_quality_poor")
            out.append(("raise", d.severity))
        elif isinstance(d, ClearAlarm):
            out.append(("clear", None))
    return out


def test_alarm_raised_once_escalated_and_cleared() -> None:
    policy = AirQualityPolicy("dijon", [STATION])
    assert alarms(policy.on_telemetry([reading()], NOW)) == []
    assert alarms(policy.on_telemetry([reading(no2=70.0)], NOW)) == [
        ("raise", operations_pb2.MINOR)
    ]
    assert alarms(policy.on_telemetry([reading(no2=80.0)], NOW)) == []  # still poor: once
    assert alarms(policy.on_telemetry([reading(no2=120.0)], NOW)) == [
        ("raise", operations_pb2.MAJOR)
    ]
    assert alarms(policy.on_telemetry([reading(no2=300.0)], NOW)) == []  # extremely poor: MAJOR
    assert alarms(policy.on_telemetry([reading(no2=70.0)], NOW)) == [
        ("raise", operations_pb2.MINOR)
    ]
    assert alarms(policy.on_telemetry([reading(no2=30.0)], NOW)) == [("clear", None)]
    assert policy.bands() == {EUI: "moderate"}


def test_hysteresis_keeps_an_alarm_hovering_at_a_bound_from_flapping() -> None:
    policy = AirQualityPolicy("dijon", [STATION], hysteresis=0.10)
    out: list[Decision] = []
    for no2 in (61.0, 59.0, 61.0, 58.0, 60.5, 55.0):  # poor bound 60; clears at <= 54
        out += policy.on_telemetry([reading(no2=no2)], NOW)
    assert alarms(out) == [("raise", operations_pb2.MINOR)]
    assert alarms(policy.on_telemetry([reading(no2=54.0)], NOW)) == [("clear", None)]

    out = []
    for no2 in (101.0, 99.0, 101.0, 95.0):  # very poor bound 100; steps down at <= 90
        out += policy.on_telemetry([reading(no2=no2)], NOW)
    assert alarms(out) == [("raise", operations_pb2.MAJOR)]
    assert alarms(policy.on_telemetry([reading(no2=89.0)], NOW)) == [
        ("raise", operations_pb2.MINOR)
    ]


def test_the_index_is_reported_when_the_band_changes() -> None:
    policy = AirQualityPolicy("dijon", [STATION])
    first = policy.on_telemetry([reading()], NOW)
    assert first == [ReportMetric("air_quality.index", 1, {"station": EUI, "zone": "dijon"})]
    assert policy.on_telemetry([reading(no2=9.0)], NOW) == []
    assert policy.on_telemetry([reading(pm25=20.0)], NOW) == [
        ReportMetric("air_quality.index", 3, {"station": EUI, "zone": "dijon"})
    ]


def test_snapshot_restore_round_trip_keeps_the_alarm_level() -> None:
    policy = make_policy("dijon", [STATION])
    policy.on_telemetry([reading(pm10=150.0)], NOW)  # poor: MINOR raised
    snap = orjson.loads(orjson.dumps(policy.snapshot()))
    reborn = AirQualityPolicy("dijon", [STATION])
    reborn.restore(snap)
    assert reborn.snapshot() == policy.snapshot()
    assert alarms(reborn.on_telemetry([reading(pm10=160.0)], NOW)) == []  # not raised again
    assert alarms(reborn.on_telemetry([reading(pm10=20.0)], NOW)) == [("clear", None)]
