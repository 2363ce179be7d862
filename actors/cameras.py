"""Cameras: status and detections (no video) -> offline alarms and incidents.

A camera is offline when it says so; that raises "camera_offline" (MINOR),
cleared by an uplink that says it is online again (after the rule's delay-off,
actors.alarm_rules). A camera that stops reporting is silent, which the post
judges for every device alike, in the data's own time (post.silence_watch).

A detection opens one incident per episode: the episode starts when the
camera reports an event other than the one it reported before, and ends
when it reports no event (or goes offline). The same accident seen on
twenty uplinks is one incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.decisions import ClearAlarm, Decision, IssueCommand, OpenIncident, RaiseAlarm
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2, telemetry_pb2

ALARM = "camera_offline"
NO_EVENT = telemetry_pb2.NO_EVENT

# CameraEvent -> (incident kind, priority 1..5, words for the operator)
EVENTS: dict[int, tuple[operations_pb2.IncidentKind.ValueType, int, str]] = {
    telemetry_pb2.ACCIDENT: (operations_pb2.INCIDENT_ACCIDENT, 2, "accident"),
    telemetry_pb2.FIRE: (operations_pb2.INCIDENT_FIRE, 1, "fire"),
    telemetry_pb2.CROWD: (operations_pb2.INCIDENT_DEMONSTRATION, 3, "crowd"),
    telemetry_pb2.STOPPED_VEHICLE: (operations_pb2.INCIDENT_OTHER, 3, "stopped vehicle"),
}


@dataclass
class _Camera:
    event: int = NO_EVENT  # the event of the episode in progress
    offline_alarm: bool = False


class CameraPolicy:
    """Implements `actors.policy.Policy` for CAMERA; cameras take no commands here."""

    def __init__(self, group: str, devices: Sequence[Device]) -> None:
        self.group = group
        self._devices = {d.dev_eui: d for d in devices}
        self._cameras: dict[str, _Camera] = {d.dev_eui: _Camera() for d in devices}

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        out: list[Decision] = []
        for item in batch:
            camera = self._cameras.get(item.dev_eui)
            if camera is None or item.WhichOneof("reading") != "camera":
                continue
            out.extend(self._apply(item.dev_eui, camera, item.camera))
        return out

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def _apply(self, eui: str, camera: _Camera, r: telemetry_pb2.CameraReading) -> list[Decision]:
        out: list[Decision] = []
        if not r.online:
            camera.event = NO_EVENT  # an outage ends any episode
            if not camera.offline_alarm:
                camera.offline_alarm = True
                out.append(RaiseAlarm(eui, ALARM, operations_pb2.MINOR, "camera reports offline"))
            return out
        if camera.offline_alarm:
            camera.offline_alarm = False
            out.append(ClearAlarm(eui, ALARM, "camera back online"))
        event = r.event if r.event in EVENTS else NO_EVENT
        if event != camera.event and event != NO_EVENT:
            out.append(self._incident(eui, event, r))
        camera.event = event
        return out

    def _incident(self, eui: str, event: int, r: telemetry_pb2.CameraReading) -> OpenIncident:
        kind, priority, words = EVENTS[event]
        device = self._devices[eui]
        return OpenIncident(
            kind=kind,
            source=operations_pb2.CAMERA_DETECTION,
            latitude=device.latitude,
            longitude=device.longitude,
            commune=device.commune,
            detail=(
                f"{words} detected by camera {device.name} "
                f"({r.people_count} people, {r.vehicle_count} vehicles in view)"
            ),
            priority=priority,
            originator=eui,
        )

    # --- state ---

    def snapshot(self) -> Snapshot:
        return {
            "cameras": {
                eui: {
                    "event": c.event,
                    "offline_alarm": c.offline_alarm,
                }
                for eui, c in self._cameras.items()
            },
        }

    def restore(self, snapshot: Snapshot) -> None:
        try:
            cameras: dict[str, Any] = snapshot["cameras"]
            restored = {
                eui: _Camera(int(s["event"]), bool(s["offline_alarm"]))
                for eui, s in cameras.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"snapshot: not a camera snapshot ({exc!r})") from exc
        self._cameras = {eui: restored.get(eui, _Camera()) for eui in self._cameras}


def make_policy(group: str, devices: Sequence[Device]) -> Policy:
    return CameraPolicy(group, devices)
