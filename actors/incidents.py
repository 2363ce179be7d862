"""Incidents -> tasks for the departments of the six former posts; citizen report checks.

Pure functions. Which department answers which kind of incident:

| incident | departments (task kind) |
|---|---|
| accident | police (attend_accident), roads (clear_roadway) |
| fire | police (secure_fire_perimeter) |
| demonstration | police (police_demonstration), municipal police (manage_demonstration_traffic) |
| fault | roads (repair_fault) |
| snow/ice | snow service (treat_snow_ice) |
| other | citizen services (assess_report) |

Fires go to the police only: the fire brigade (SDIS 21, the département's
fire and rescue service) is not one of the city's six posts, so the post can
only secure the perimeter and make sure the brigade was called; the task
says so.
"""

from __future__ import annotations

import math
import unicodedata
from typing import TypeAlias

from actors.decisions import OpenIncident, RequestTask
from actors.geo import haversine_m
from citypost.errors import InvalidArgumentError
from fleet.dijon import BOUNDS, COMMUNES
from protos.citypost.v1 import operations_pb2

Kind: TypeAlias = operations_pb2.IncidentKind.ValueType
Dept: TypeAlias = operations_pb2.Department.ValueType

_FIRE_NOTE = "the fire brigade (SDIS 21) is not a city department: check it was alerted (18/112)"

# kind -> ((department, task kind, note), ...)
ROUTING: dict[Kind, tuple[tuple[Dept, str, str], ...]] = {
    operations_pb2.INCIDENT_ACCIDENT: (
        (operations_pb2.POLICE, "attend_accident", ""),
        (operations_pb2.ROADS, "clear_roadway", ""),
    ),
    operations_pb2.INCIDENT_FIRE: ((operations_pb2.POLICE, "secure_fire_perimeter", _FIRE_NOTE),),
    operations_pb2.INCIDENT_DEMONSTRATION: (
        (operations_pb2.POLICE, "police_demonstration", ""),
        (operations_pb2.MUNICIPAL_POLICE, "manage_demonstration_traffic", ""),
    ),
    operations_pb2.INCIDENT_FAULT: ((operations_pb2.ROADS, "repair_fault", ""),),
    operations_pb2.INCIDENT_SNOW_ICE: ((operations_pb2.SNOW_SERVICE, "treat_snow_ice", ""),),
    operations_pb2.INCIDENT_OTHER: ((operations_pb2.CITIZEN_SERVICES, "assess_report", ""),),
}

# The priority an incident gets when its source does not say better (1 highest .. 5).
DEFAULT_PRIORITY: dict[Kind, int] = {
    operations_pb2.INCIDENT_FIRE: 1,
    operations_pb2.INCIDENT_ACCIDENT: 2,
    operations_pb2.INCIDENT_SNOW_ICE: 2,
    operations_pb2.INCIDENT_DEMONSTRATION: 3,
    operations_pb2.INCIDENT_FAULT: 4,
    operations_pb2.INCIDENT_OTHER: 4,
}

MAX_TEXT_CHARS = 500
_ALLOWED_CONTROLS = frozenset("\n\t")


def kind_name(kind: Kind) -> str:
    """INCIDENT_SNOW_ICE -> "snow_ice"."""
    return operations_pb2.IncidentKind.Name(kind).removeprefix("INCIDENT_").lower()


def incident_origin(incident: OpenIncident) -> str:
    """A stable reference for an incident that has no id yet: kind and originator."""
    return f"incident:{kind_name(incident.kind)}:{incident.originator}"


def tasks_for(incident: OpenIncident, *, origin: str | None = None) -> list[RequestTask]:
    """One task per department that answers this kind, at the incident's place and priority.

    `origin` is the incident's id once the post has one; tasks are deduplicated on it.
    """
    routes = ROUTING.get(incident.kind)
    if routes is None:
        raise InvalidArgumentError(f"kind: no department answers incident kind {incident.kind}")
    source = operations_pb2.IncidentSource.Name(incident.source).lower()
    base = f"{kind_name(incident.kind)} reported by {source}"
    if incident.commune:
        base += f" in {incident.commune}"
    if incident.detail:
        base += f": {incident.detail}"
    return [
        RequestTask(
            department=department,
            kind=task_kind,
            priority=min(5, max(1, incident.priority)),
            latitude=incident.latitude,
            longitude=incident.longitude,
            detail=f"{base} ({note})" if note else base,
            origin=origin or incident_origin(incident),
        )
        for department, task_kind, note in routes
    ]


def parse_kind(kind: int | str) -> Kind:
    """An IncidentKind number or name ("INCIDENT_FIRE", "fire", "snow_ice"); raises naming `kind`."""
    if isinstance(kind, bool):
        raise InvalidArgumentError("kind: must be an incident kind, not a boolean")
    if isinstance(kind, int):
        if kind in ROUTING:
            return operations_pb2.IncidentKind.ValueType(kind)
        raise InvalidArgumentError(f"kind: unknown incident kind {kind}")
    if isinstance(kind, str):
        name = kind.strip().upper().replace("-", "_").replace("/", "_")
        if not name.startswith("INCIDENT_"):
            name = "INCIDENT_" + name
        try:
            value = operations_pb2.IncidentKind.Value(name)
        except ValueError:
            value = operations_pb2.INCIDENT_KIND_UNSPECIFIED
        if value in ROUTING:
            return value
        raise InvalidArgumentError(f"kind: unknown incident kind {kind[:40]!r}")
    raise InvalidArgumentError("kind: must be an incident kind name or number")


def nearest_commune(latitude: float, longitude: float) -> str:
    return min(
        COMMUNES, key=lambda c: haversine_m(latitude, longitude, c.latitude, c.longitude)
    ).name


def validate_citizen_report(
    kind: int | str,
    lat: float,
    lon: float,
    text: str,
    *,
    reporter: str = "citizen",
    max_text_chars: int = MAX_TEXT_CHARS,
) -> OpenIncident:
    """A citizen's report checked and turned into an incident; InvalidArgumentError names the field.

    `reporter` is the pseudonymous reporter id (never the citizen's identity).
    """
    value = parse_kind(kind)
    south, west, north, east = BOUNDS
    latitude = _coordinate("latitude", lat)
    longitude = _coordinate("longitude", lon)
    if not south <= latitude <= north:
        raise InvalidArgumentError(
            f"latitude: {latitude} is outside the metropolis ({south}..{north})"
        )
    if not west <= longitude <= east:
        raise InvalidArgumentError(
            f"longitude: {longitude} is outside the metropolis ({west}..{east})"
        )
    detail = _clean_text(text, max_text_chars)
    return OpenIncident(
        kind=value,
        source=operations_pb2.CITIZEN,
        latitude=latitude,
        longitude=longitude,
        commune=nearest_commune(latitude, longitude),
        detail=detail,
        priority=DEFAULT_PRIORITY[value],
        originator=reporter,
    )


def _coordinate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name}: must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{name}: must be a finite number")
    return number


def _clean_text(text: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise InvalidArgumentError("text: must be a string")
    cleaned = unicodedata.normalize("NFC", text).strip()
    if not cleaned:
        raise InvalidArgumentError("text: must not be empty")
    if len(cleaned) > max_chars:
        raise InvalidArgumentError(f"text: {len(cleaned)} characters, at most {max_chars}")
    if any(unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROLS for ch in cleaned):
        raise InvalidArgumentError("text: must not contain control characters")
    return cleaned
