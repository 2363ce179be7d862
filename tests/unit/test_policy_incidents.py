"""Incidents -> departments' tasks; citizen report validation that names the field."""

import pytest

from actors.decisions import OpenIncident
from actors.incidents import DEFAULT_PRIORITY, parse_kind, tasks_for, validate_citizen_report
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2 as ops

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def incident(kind: ops.IncidentKind.ValueType, priority: int = 2) -> OpenIncident:
    return OpenIncident(
        kind=kind,
        source=ops.CAMERA_DETECTION,
        latitude=47.3226,
        longitude=5.0350,
        commune="Dijon",
        detail="seen at Darcy",
        priority=priority,
        originator="70b3d57ed0000e01",
    )


@pytest.mark.parametrize(
    ("kind", "departments"),
    [
        (ops.INCIDENT_ACCIDENT, {ops.POLICE, ops.ROADS}),
        (ops.INCIDENT_FIRE, {ops.POLICE}),
        (ops.INCIDENT_DEMONSTRATION, {ops.POLICE, ops.MUNICIPAL_POLICE}),
        (ops.INCIDENT_FAULT, {ops.ROADS}),
        (ops.INCIDENT_SNOW_ICE, {ops.SNOW_SERVICE}),
        (ops.INCIDENT_OTHER, {ops.CITIZEN_SERVICES}),
    ],
)
def test_each_kind_goes_to_the_right_departments(
    kind: ops.IncidentKind.ValueType, departments: set[int]
) -> None:
    tasks = tasks_for(incident(kind, priority=3))
    assert {t.department for t in tasks} == departments
    assert len(tasks) == len(departments)
    for task in tasks:
        assert task.priority == 3
        assert (task.latitude, task.longitude) == (47.3226, 5.0350)
        assert task.origin == tasks[0].origin  # one incident, one origin
        assert "seen at Darcy" in task.detail


def test_fire_says_the_brigade_is_outside_the_city_posts_and_origin_can_be_given() -> None:
    (task,) = tasks_for(incident(ops.INCIDENT_FIRE), origin="incident/42")
    assert "fire brigade" in task.detail
    assert task.origin == "incident/42"


def test_an_incident_without_a_kind_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^kind:"):
        tasks_for(incident(ops.INCIDENT_KIND_UNSPECIFIED))


def test_a_valid_citizen_report_becomes_a_citizen_incident() -> None:
    got = validate_citizen_report(
        "accident", 47.3226, 5.0350, "  Two cars at place Darcy  ", reporter="r:9f3a"
    )
    assert got.kind == ops.INCIDENT_ACCIDENT
    assert got.source == ops.CITIZEN
    assert got.commune == "Dijon"
    assert got.detail == "Two cars at place Darcy"
    assert got.originator == "r:9f3a"
    assert got.priority == DEFAULT_PRIORITY[ops.INCIDENT_ACCIDENT]
    assert parse_kind("INCIDENT_SNOW_ICE") == parse_kind("snow-ice") == ops.INCIDENT_SNOW_ICE
    assert parse_kind(ops.INCIDENT_FAULT) == ops.INCIDENT_FAULT


@pytest.mark.parametrize(
    ("kind", "lat", "lon", "text", "field"),
    [
        ("volcano", 47.32, 5.04, "smoke", "kind"),
        (ops.INCIDENT_KIND_UNSPECIFIED, 47.32, 5.04, "smoke", "kind"),
        (99, 47.32, 5.04, "smoke", "kind"),
        ("fire", 48.85, 5.04, "smoke", "latitude"),  # Paris's latitude
        ("fire", 47.32, 2.35, "smoke", "longitude"),
        ("fire", float("nan"), 5.04, "smoke", "latitude"),
        ("fire", 47.32, float("inf"), "smoke", "longitude"),
        ("fire", 47.32, 5.04, "   ", "text"),
        ("fire", 47.32, 5.04, "x" * 501, "text"),
        ("fire", 47.32, 5.04, "smoke\x00", "text"),
    ],
)
def test_citizen_report_errors_name_the_field(
    kind: int | str, lat: float, lon: float, text: str, field: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{field}:"):
        validate_citizen_report(kind, lat, lon, text)
