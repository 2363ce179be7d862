"""What a policy decides: plain values the actor shell carries out.

A policy never talks to the world; it returns these, and the shell turns them
into ledger entries and downlinks, alarms, tasks and notifications through the
control state. Commands carry no id or epoch here: the post assigns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.citypost.v1 import command_pb2, operations_pb2


@dataclass(frozen=True)
class IssueCommand:
    """Send `command` (target, asset class and action set; no id, epoch or TTL yet)."""

    command: command_pb2.Command
    reason: str
    ttl_s: float | None = None  # None: the post's default TTL


@dataclass(frozen=True)
class RaiseAlarm:
    """Raise (or keep) the one active alarm of (originator, type)."""

    originator: str
    type: str
    severity: operations_pb2.Severity.ValueType
    detail: str
    # (originator, type) of the active alarm of its cause: kept and listed under it, not
    # annunciated. None: an alarm in its own right.
    cause: tuple[str, str] | None = None
    suppressed_count: int = 0  # a cause alarm: how many alarms it suppresses now
    chattering: bool = False


@dataclass(frozen=True)
class ClearAlarm:
    """The cause of (originator, type) is gone."""

    originator: str
    type: str
    detail: str = ""


@dataclass(frozen=True)
class OpenIncident:
    kind: operations_pb2.IncidentKind.ValueType
    source: operations_pb2.IncidentSource.ValueType
    latitude: float
    longitude: float
    commune: str
    detail: str
    priority: int  # 1 (highest) .. 5
    originator: str  # the device or reporter, to avoid opening the same incident twice


@dataclass(frozen=True)
class RequestTask:
    department: operations_pb2.Department.ValueType
    kind: str
    priority: int  # 1 (highest) .. 5
    latitude: float
    longitude: float
    detail: str
    origin: str  # the alarm key or incident that asks for it; one open task per (origin, kind)


@dataclass(frozen=True)
class Notify:
    """A message for a registered contact (the relatives of a water-meter volunteer)."""

    recipient: str
    message: str
    origin: str


@dataclass(frozen=True)
class ReportMetric:
    """A figure the post reports (energy saved, bus delay saved, free spaces)."""

    name: str
    value: float
    attributes: dict[str, str] = field(default_factory=dict)


Decision = (
    IssueCommand | RaiseAlarm | ClearAlarm | OpenIncident | RequestTask | Notify | ReportMetric
)
