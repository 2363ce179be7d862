"""Cameras: one incident per detection episode, offline alarms from status and from silence."""

from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import orjson
import pytest

from actors.cameras import CameraPolicy, make_policy
from actors.decisions import ClearAlarm, Decision, OpenIncident, RaiseAlarm
from actors.policy import Policy
from bridges.registry import Device
from protos.citypost.v1 import assets_pb2, operations_pb2, telemetry_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T0 = datetime(2024, 6, 1, 14, 0, tzinfo=UTC)
CAM = Device(
    dev_eui="70b3d57ed0000e01",
    name="camera-dijon-00001",
    asset_class=assets_pb2.CAMERA,
    group="dijon",
    commune="Dijon",
    latitude=47.3226,
    longitude=5.0350,
    transport=assets_pb2.IP,
    application_id="app",
)
EV = telemetry_pb2.CameraEvent
Event: TypeAlias = telemetry_pb2.CameraEvent.ValueType


def status(event: Event = EV.NO_EVENT, online: bool = True) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=CAM.dev_eui,
        asset_class=assets_pb2.CAMERA,
        group="dijon",
        camera=telemetry_pb2.CameraReading(
            online=online, people_count=12, vehicle_count=30, event=event
        ),
    )


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def feed(policy: Policy, events: list[Event], start: int = 0) -> list[Decision]:
    out: list[Decision] = []
    for i, event in enumerate(events):
        out += policy.on_telemetry([status(event)], minute(start + i))
        out += policy.on_tick(minute(start + i))
    return out


def incidents(decisions: list[Decision]) -> list[OpenIncident]:
    return [d for d in decisions if isinstance(d, OpenIncident)]


def test_one_incident_per_event_episode() -> None:
    policy = CameraPolicy("dijon", [CAM])
    out = feed(policy, [EV.NO_EVENT, EV.ACCIDENT, EV.ACCIDENT, EV.ACCIDENT, EV.ACCIDENT])
    (incident,) = incidents(out)
    assert incident.kind == operations_pb2.INCIDENT_ACCIDENT
    assert incident.source == operations_pb2.CAMERA_DETECTION
    assert (incident.latitude, incident.longitude, incident.commune) == (47.3226, 5.0350, "Dijon")
    assert incident.originator == CAM.dev_eui
    assert "accident" in incident.detail

    # The event turns into a fire without a gap: a new episode.
    assert [i.kind for i in incidents(feed(policy, [EV.FIRE, EV.FIRE], 5))] == [
        operations_pb2.INCIDENT_FIRE
    ]
    # The scene clears, then another accident: a new incident.
    again = feed(policy, [EV.NO_EVENT, EV.ACCIDENT, EV.ACCIDENT], 7)
    assert len(incidents(again)) == 1


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (EV.ACCIDENT, operations_pb2.INCIDENT_ACCIDENT),
        (EV.FIRE, operations_pb2.INCIDENT_FIRE),
        (EV.CROWD, operations_pb2.INCIDENT_DEMONSTRATION),
        (EV.STOPPED_VEHICLE, operations_pb2.INCIDENT_OTHER),
    ],
)
def test_each_detection_maps_to_its_incident_kind(
    event: Event, kind: operations_pb2.IncidentKind.ValueType
) -> None:
    (incident,) = incidents(feed(CameraPolicy("dijon", [CAM]), [event]))
    assert incident.kind == kind
    assert 1 <= incident.priority <= 5


def test_offline_status_raises_once_and_online_clears() -> None:
    policy = CameraPolicy("dijon", [CAM])
    first = policy.on_telemetry([status(online=False)], minute(0))
    assert [(d.type, d.severity) for d in first if isinstance(d, RaiseAlarm)] == [
        ("camera_offline", operations_pb2.MINOR)
    ]
    assert policy.on_telemetry([status(online=False)], minute(1)) == []
    back = policy.on_telemetry([status()], minute(2))
    assert [(d.originator, d.type) for d in back if isinstance(d, ClearAlarm)] == [
        (CAM.dev_eui, "camera_offline")
    ]
    assert len(back) == 1


def test_silence_is_not_the_camera_policy_s_to_judge() -> None:
    # A camera that stops reporting is silent like any device: post.silence_watch judges
    # that in the data's own time. The policy raises only what a camera says.
    policy = CameraPolicy("dijon", [CAM])
    policy.on_telemetry([status()], minute(0))
    assert [policy.on_tick(minute(m)) for m in (1, 5, 60, 600)] == [[], [], [], []]


def test_snapshot_restore_does_not_reopen_an_episode_in_progress() -> None:
    policy = make_policy("dijon", [CAM])
    feed(policy, [EV.CROWD, EV.CROWD])
    snap = orjson.loads(orjson.dumps(policy.snapshot()))
    reborn = CameraPolicy("dijon", [CAM])
    reborn.restore(snap)
    assert reborn.snapshot() == policy.snapshot()
    assert incidents(feed(reborn, [EV.CROWD, EV.CROWD], 2)) == []
    assert len(incidents(feed(reborn, [EV.NO_EVENT, EV.CROWD], 4))) == 1
