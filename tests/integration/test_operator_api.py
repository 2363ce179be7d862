"""OperatorService on a real gRPC server over a real dispatcher and the in-memory control state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from actors.decisions import RaiseAlarm
from api.operator import operator_service
from api.server import start_server
from bridges import chirpstack
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.sinks import MemorySink
from cluster.ports import free_port
from failover.control_state import Change, InMemoryControlState
from post.asset_board import AssetBoard
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
    telemetry_pb2,
)
from protos.metadata import OPERATOR_METADATA, WATCH_REVISION_METADATA

pytestmark = pytest.mark.integration

AC = assets_pb2.AssetClass
CLAIRE = ((OPERATOR_METADATA, "op-claire"),)
DIJON = operations_pb2.GeoPoint(latitude=47.322, longitude=5.041)
T0 = 1_800_000_000_000


def _device(i: int, asset_class: AC.ValueType, group: str, commune: str) -> Device:
    return Device(
        dev_eui=f"{i:016x}",
        name=f"{group}-{i}",
        asset_class=asset_class,
        group=group,
        commune=commune,
        latitude=47.32,
        longitude=5.04,
        transport=assets_pb2.LORAWAN,
        application_id=application_id("dijon", asset_class),
    )


DEVICES = [
    *(_device(i, AC.STREET_LAMP, "talant", "Talant") for i in range(1, 4)),
    *(_device(i, AC.STREET_LAMP, "chenove", "Chenôve") for i in range(4, 6)),
    *(_device(i, AC.BOLLARD, "old-town", "Dijon") for i in range(6, 8)),
    *(_device(i, AC.TRAFFIC_SIGNAL, "centre", "Dijon") for i in range(8, 10)),
    _device(10, AC.WATER_METER, "volunteers", "Dijon"),
]
LAMP, BOLLARD, SIGNAL, METER = DEVICES[0], DEVICES[5], DEVICES[7], DEVICES[9]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 1  # every reading moves on: ids built from time stay distinct
        return self.now


class CountingState(InMemoryControlState):
    """Counts open watches, so a test sees the server close its watch when a client leaves."""

    open_watches = 0

    async def watch(self, from_revision: int, *, prefix: str = "") -> AsyncGenerator[Change, None]:
        self.open_watches += 1
        try:
            async for change in super().watch(from_revision, prefix=prefix):
                yield change
        finally:
            self.open_watches -= 1


class Rig:
    def __init__(
        self,
        stub: operator_pb2_grpc.OperatorServiceAsyncStub,
        state: CountingState,
        dispatcher: Dispatcher,
        sent: list[tuple[str, bytes]],
        board: AssetBoard,
    ) -> None:
        self.stub = stub
        self.board = board
        self.state = state
        self.dispatcher = dispatcher
        self.sent = sent
        self.audit_failure = ""  # what the post's audit file says of its last write

    async def call(self, method: str, request: Any, who: str = "op-claire") -> Any:
        return await getattr(self.stub, method)(request, metadata=((OPERATOR_METADATA, who),))

    async def ledger(self) -> list[control_state_pb2.CommandRecord]:
        page = await self.state.list("ledger/", control_state_pb2.CommandRecord, limit=1000)
        return [e.value for e in page.entries]

    async def audit(self) -> list[control_state_pb2.AuditEntry]:
        page = await self.state.list("audit/", control_state_pb2.AuditEntry, limit=1000)
        return [e.value for e in page.entries]

    async def raise_alarm(
        self,
        device: Device,
        severity: operations_pb2.Severity.ValueType = operations_pb2.MINOR,
        kind: str = "fault",
    ) -> operations_pb2.Alarm:
        actor = f"policy:{AC.Name(device.asset_class).lower()}/{device.group}"
        await self.dispatcher.apply(actor, [RaiseAlarm(device.dev_eui, kind, severity, "broken")])
        page = await self.state.list("state/alarms/", operations_pb2.Alarm, limit=1000)
        [alarm] = [
            e.value
            for e in page.entries
            if e.value.originator == device.dev_eui and e.value.type == kind
        ]
        return alarm


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    state = CountingState(epoch=3)
    clock = Clock()
    sent: list[tuple[str, bytes]] = []
    registry = DeviceRegistry(DEVICES)
    dispatcher = Dispatcher(
        state=state,
        registry=registry,
        publish=lambda d: sent.append((d.topic, d.payload)),
        epoch=lambda: 3,
        wall_ms=clock,
    )
    latest = MemorySink()
    board = AssetBoard(registry)
    lit = [
        telemetry_pb2.Telemetry(
            dev_eui=LAMP.dev_eui,
            asset_class=AC.STREET_LAMP,
            group="talant",
            lamp=telemetry_pb2.LampReading(brightness_pct=40.0, power_w=22.0),
        )
    ]
    latest.submit(lit)
    board.submit(lit)
    port = free_port()
    rigs: list[Rig] = []
    service = operator_service(
        dispatcher,
        state,
        registry,
        latest,
        board,
        wall_ms=clock,
        audit_failure=lambda: rigs[0].audit_failure,
    )
    server, _ = await start_server([service], port=port, deadline_s=5.0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    rigs.append(Rig(operator_pb2_grpc.OperatorServiceStub(channel), state, dispatcher, sent, board))
    try:
        yield rigs[0]
    finally:
        await channel.close()
        await state.close()
        await server.stop(grace=None)


def _lamp_group_command(pct: float = 30.0) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant"),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


# --- happy paths ------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_assets_list_with_filters_and_get(rig: Rig) -> None:
    every = await rig.call("ListAssets", operator_pb2.ListAssetsRequest())
    assert every.total == len(DEVICES) and len(every.assets) == len(DEVICES)
    assert [a.dev_eui for a in every.assets] == sorted(d.dev_eui for d in DEVICES)
    lamps = await rig.call("ListAssets", operator_pb2.ListAssetsRequest(asset_class=AC.STREET_LAMP))
    assert lamps.total == 5
    chenove = await rig.call("ListAssets", operator_pb2.ListAssetsRequest(commune="chenôve"))
    assert {a.group for a in chenove.assets} == {"chenove"} and chenove.total == 2
    old_town = await rig.call("ListAssets", operator_pb2.ListAssetsRequest(group="old-town"))
    assert {a.dev_eui for a in old_town.assets} == {DEVICES[5].dev_eui, DEVICES[6].dev_eui}

    await rig.raise_alarm(BOLLARD)
    alarmed = await rig.call("ListAssets", operator_pb2.ListAssetsRequest(only_alarmed=True))
    assert [(a.dev_eui, a.active_alarms) for a in alarmed.assets] == [(BOLLARD.dev_eui, 1)]

    lamp = await rig.call("GetAsset", operator_pb2.GetAssetRequest(dev_eui=LAMP.dev_eui.upper()))
    assert lamp.name == LAMP.name and lamp.commune == "Talant" and not lamp.overridden
    assert lamp.HasField("last_telemetry") and lamp.last_telemetry.lamp.brightness_pct == 40.0
    silent = await rig.call("GetAsset", operator_pb2.GetAssetRequest(dev_eui=METER.dev_eui))
    assert not silent.HasField("last_telemetry") and silent.active_alarms == 0


@pytest.mark.timeout(30)
async def test_send_command_goes_to_the_ledger_and_the_group_and_is_audited(rig: Rig) -> None:
    record = await rig.call(
        "SendCommand",
        operator_pb2.SendCommandRequest(
            idempotency_key="k-1", command=_lamp_group_command(), ttl_ms=20_000, reason="event"
        ),
    )
    assert record.status == command_pb2.SENT and record.expected_acks == 3
    assert record.issued_by == "op-claire" and record.command.epoch == 3
    assert record.command.ttl_ms == 20_000 and record.idempotency_key == "k-1"
    assert record.multicast and len(rig.sent) == 1  # one multicast for the group's lamps
    got = await rig.call(
        "GetCommand", operator_pb2.GetCommandRequest(command_id=record.command.command_id)
    )
    assert got == record
    one = await rig.call(
        "SendCommand",
        operator_pb2.SendCommandRequest(
            idempotency_key="k-2",
            command=command_pb2.Command(
                target=command_pb2.Target(dev_eui=BOLLARD.dev_eui),
                set_bollard_position=command_pb2.SetBollardPosition(position=telemetry_pb2.LOWERED),
            ),
        ),
    )
    assert one.command.asset_class == AC.BOLLARD and one.expected_acks == 1
    ack = chirpstack.Ack(
        "",
        T0,
        chirpstack.DeviceInfo(application_id=BOLLARD.application_id, dev_eui=BOLLARD.dev_eui),
        one.command.command_id,
        True,
        1,
    )
    await rig.dispatcher.on_acks([ack])
    acked = await rig.call(
        "ListCommands", operator_pb2.ListCommandsRequest(status=command_pb2.ACKED)
    )
    assert [c.command.command_id for c in acked.commands] == [one.command.command_id]
    every = await rig.call("ListCommands", operator_pb2.ListCommandsRequest())
    assert len(every.commands) == 2
    issued = [e for e in await rig.audit() if e.action == "command.issue"]
    assert {e.actor for e in issued} == {"op-claire"}
    assert {e.target for e in issued} == {
        f"command/{record.command.command_id}",
        f"command/{one.command.command_id}",
    }


@pytest.mark.timeout(30)
async def test_the_same_key_twice_acts_once_even_when_concurrent(rig: Rig) -> None:
    request = operator_pb2.SendCommandRequest(idempotency_key="once", command=_lamp_group_command())
    first = await rig.call("SendCommand", request)
    again = await rig.call("SendCommand", request)
    assert again.command.command_id == first.command.command_id
    assert len(await rig.ledger()) == 1 and len(rig.sent) == 1
    together = operator_pb2.SendCommandRequest(
        idempotency_key="together", command=_lamp_group_command(50)
    )
    a, b = await asyncio.gather(
        rig.call("SendCommand", together), rig.call("SendCommand", together)
    )
    assert a.command.command_id == b.command.command_id != first.command.command_id
    assert len(await rig.ledger()) == 2 and len(rig.sent) == 2
    # The key is the first request's: reusing it for another kind of write is refused.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.call(
            "CreateTask",
            operator_pb2.CreateTaskRequest(
                idempotency_key="once", department=operations_pb2.ROADS, kind="k", location=DIJON
            ),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (caught.value.details() or "")


@pytest.mark.timeout(30)
async def test_override_set_listed_then_ended_early_hands_the_group_back(rig: Rig) -> None:
    held = await rig.call(
        "SetOverride",
        operator_pb2.SetOverrideRequest(
            idempotency_key="o-1",
            asset_class=AC.STREET_LAMP,
            group="talant",
            action=command_pb2.Command(
                set_brightness=command_pb2.SetBrightness(brightness_pct=100)
            ),
            duration_ms=3_600_000,
            reason="night market",
        ),
    )
    assert held.set_by == "op-claire" and held.ends_at_ms - held.starts_at_ms == 3_600_000
    assert len(rig.sent) == 1  # the override's action went to the whole group: one multicast
    lamp = await rig.call("GetAsset", operator_pb2.GetAssetRequest(dev_eui=LAMP.dev_eui))
    assert lamp.overridden
    active = await rig.call("ListOverrides", operator_pb2.ListOverridesRequest(active_only=True))
    assert [o.override_id for o in active.overrides] == [held.override_id]

    ended = await rig.call(
        "EndOverride",
        operator_pb2.EndOverrideRequest(idempotency_key="e-1", override_id=held.override_id),
    )
    assert ended.ends_at_ms < held.ends_at_ms
    active = await rig.call("ListOverrides", operator_pb2.ListOverridesRequest(active_only=True))
    assert list(active.overrides) == []
    every = await rig.call("ListOverrides", operator_pb2.ListOverridesRequest())
    assert [o.override_id for o in every.overrides] == [held.override_id]
    lamp = await rig.call("GetAsset", operator_pb2.GetAssetRequest(dev_eui=LAMP.dev_eui))
    assert not lamp.overridden
    # The post's ledger loop resumes the group's policy from this list.
    assert [o.override_id for o in rig.dispatcher.expired_overrides()] == [held.override_id]
    actions = [(e.action, e.actor) for e in await rig.audit() if e.action.startswith("override")]
    assert sorted(actions) == [("override.end", "op-claire"), ("override.set", "op-claire")]


@pytest.mark.timeout(30)
async def test_alarms_listed_acknowledged_and_cleared_by_the_operator(rig: Rig) -> None:
    minor = await rig.raise_alarm(LAMP, operations_pb2.MINOR)
    major = await rig.raise_alarm(BOLLARD, operations_pb2.MAJOR)
    severe = await rig.call(
        "ListAlarms", operator_pb2.ListAlarmsRequest(min_severity=operations_pb2.MAJOR)
    )
    assert [a.alarm_id for a in severe.alarms] == [major.alarm_id]
    lamps = await rig.call("ListAlarms", operator_pb2.ListAlarmsRequest(asset_class=AC.STREET_LAMP))
    assert [a.alarm_id for a in lamps.alarms] == [minor.alarm_id]

    request = operator_pb2.AlarmActionRequest(
        idempotency_key="a-1", alarm_id=minor.alarm_id, comment="crew informed"
    )
    acked = await rig.call("AcknowledgeAlarm", request)
    assert acked.state == operations_pb2.ACTIVE_ACK and acked.acknowledged_by == "op-claire"
    assert await rig.call("AcknowledgeAlarm", request) == acked  # a retry, not a second ack
    unacked = await rig.call(
        "ListAlarms", operator_pb2.ListAlarmsRequest(states=[operations_pb2.ACTIVE_UNACK])
    )
    assert [a.alarm_id for a in unacked.alarms] == [major.alarm_id]

    cleared = await rig.call(
        "ClearAlarm",
        operator_pb2.AlarmActionRequest(idempotency_key="c-1", alarm_id=minor.alarm_id),
    )
    assert cleared.state == operations_pb2.CLEARED_ACK
    lamp = await rig.call("GetAsset", operator_pb2.GetAssetRequest(dev_eui=LAMP.dev_eui))
    assert lamp.active_alarms == 0
    notes = {(e.action, e.actor) for e in await rig.audit() if e.target.endswith(minor.alarm_id)}
    assert {("alarm.ack", "op-claire"), ("alarm.clear", "op-claire")} <= notes
    ack_note = next(e for e in await rig.audit() if e.action == "alarm.ack")
    assert "crew informed" in ack_note.detail


@pytest.mark.timeout(30)
async def test_incident_opens_department_tasks_which_are_assigned_and_closed(rig: Rig) -> None:
    incident = await rig.call(
        "CreateIncident",
        operator_pb2.CreateIncidentRequest(
            idempotency_key="i-1",
            kind=operations_pb2.INCIDENT_ACCIDENT,
            location=DIJON,
            detail="two cars, rue de la Liberté",
        ),
    )
    assert incident.source == operations_pb2.OPERATOR and incident.reported_by == "op-claire"
    assert incident.priority == 2 and incident.commune  # the accident default; commune found
    opened = await rig.call("ListIncidents", operator_pb2.ListIncidentsRequest(open_only=True))
    assert [i.incident_id for i in opened.incidents] == [incident.incident_id]
    tasks = (await rig.call("ListTasks", operator_pb2.ListTasksRequest())).tasks
    assert {(t.department, t.kind) for t in tasks} == {
        (operations_pb2.POLICE, "attend_accident"),
        (operations_pb2.ROADS, "clear_roadway"),
    }
    assert {t.origin for t in tasks} == {f"incident/{incident.incident_id}"}

    task = await rig.call(
        "CreateTask",
        operator_pb2.CreateTaskRequest(
            idempotency_key="t-1",
            department=operations_pb2.WASTE,
            kind="collect_bulky_waste",
            location=DIJON,
            detail="sofa on the pavement",
        ),
    )
    assert task.status == operations_pb2.OPEN and task.priority == 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.call(
            "CloseTask", operator_pb2.CloseTaskRequest(idempotency_key="t-2", task_id=task.task_id)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "assign it" in (caught.value.details() or "")
    assigned = await rig.call(
        "AssignTask",
        operator_pb2.AssignTaskRequest(
            idempotency_key="t-3", task_id=task.task_id, assignee="waste-team-2"
        ),
    )
    assert assigned.status == operations_pb2.ASSIGNED and assigned.assignee == "waste-team-2"
    done = await rig.call(
        "CloseTask",
        operator_pb2.CloseTaskRequest(idempotency_key="t-4", task_id=task.task_id, comment="ok"),
    )
    assert done.status == operations_pb2.DONE
    police = next(t for t in tasks if t.department == operations_pb2.POLICE)
    cancelled = await rig.call(
        "CloseTask",
        operator_pb2.CloseTaskRequest(
            idempotency_key="t-5", task_id=police.task_id, cancelled=True
        ),
    )
    assert cancelled.status == operations_pb2.CANCELLED
    live = await rig.call(
        "ListTasks",
        operator_pb2.ListTasksRequest(statuses=[operations_pb2.OPEN, operations_pb2.ASSIGNED]),
    )
    assert [t.kind for t in live.tasks] == ["clear_roadway"]
    waste = await rig.call(
        "ListTasks", operator_pb2.ListTasksRequest(department=operations_pb2.WASTE)
    )
    assert [t.task_id for t in waste.tasks] == [task.task_id]
    flow = [e.action for e in await rig.audit() if e.target == f"task/{task.task_id}"]
    assert sorted(flow) == sorted(["task.create", "task.assign", "task.start", "task.done"])


# --- bad inputs -------------------------------------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OP = operator_pb2
C = command_pb2


def _send(**fields: Any) -> operator_pb2.SendCommandRequest:
    fields.setdefault("idempotency_key", "bad")
    return OP.SendCommandRequest(**fields)


def _override(**fields: Any) -> operator_pb2.SetOverrideRequest:
    base: dict[str, Any] = {
        "idempotency_key": "bad",
        "asset_class": AC.STREET_LAMP,
        "group": "talant",
        "action": C.Command(set_brightness=C.SetBrightness(brightness_pct=50)),
        "duration_ms": 600_000,
    }
    base.update(fields)
    return OP.SetOverrideRequest(**base)


def _task(**fields: Any) -> operator_pb2.CreateTaskRequest:
    base: dict[str, Any] = {
        "idempotency_key": "bad",
        "department": operations_pb2.ROADS,
        "kind": "repair",
        "location": DIJON,
    }
    base.update(fields)
    return OP.CreateTaskRequest(**base)


def _incident(**fields: Any) -> operator_pb2.CreateIncidentRequest:
    base: dict[str, Any] = {
        "idempotency_key": "bad",
        "kind": operations_pb2.INCIDENT_FIRE,
        "location": DIJON,
        "detail": "smoke",
    }
    base.update(fields)
    return OP.CreateIncidentRequest(**base)


LAMP_TO = C.Target(dev_eui=LAMP.dev_eui)
BAD_INPUTS: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("no key", "SendCommand", OP.SendCommandRequest(command=_lamp_group_command()), INVALID, "idempotency_key"),
    ("long key", "SendCommand", _send(idempotency_key="k" * 129, command=_lamp_group_command()), INVALID, "idempotency_key"),
    ("no command", "SendCommand", _send(), INVALID, "command:"),
    ("no target", "SendCommand", _send(command=C.Command(set_brightness=C.SetBrightness())), INVALID, "command.target: name a dev_eui or a group"),
    ("no action", "SendCommand", _send(command=C.Command(target=LAMP_TO)), INVALID, "command.action"),
    ("brightness 150", "SendCommand", _send(command=C.Command(target=LAMP_TO, set_brightness=C.SetBrightness(brightness_pct=150))), INVALID, "brightness_pct"),
    ("lamp told a bollard position", "SendCommand", _send(command=C.Command(target=LAMP_TO, set_bollard_position=C.SetBollardPosition(position=telemetry_pb2.RAISED))), INVALID, "command.set_bollard_position"),
    ("bollard MOVING", "SendCommand", _send(command=C.Command(target=C.Target(dev_eui=BOLLARD.dev_eui), set_bollard_position=C.SetBollardPosition(position=telemetry_pb2.MOVING))), INVALID, "position"),
    ("green too long", "SendCommand", _send(command=C.Command(target=C.Target(dev_eui=SIGNAL.dev_eui), signal_priority=C.SignalPriority(extend_green_ms=60_000))), INVALID, "extend_green_ms"),
    ("meter commanded", "SendCommand", _send(command=C.Command(target=C.Target(dev_eui=METER.dev_eui), set_brightness=C.SetBrightness())), INVALID, "command.asset_class"),
    ("group without class", "SendCommand", _send(command=C.Command(target=C.Target(group="talant"), set_brightness=C.SetBrightness())), INVALID, "command.asset_class"),
    ("wrong class for device", "SendCommand", _send(command=C.Command(asset_class=AC.BOLLARD, target=LAMP_TO, set_brightness=C.SetBrightness())), INVALID, "command.asset_class"),
    ("ttl too short", "SendCommand", _send(command=_lamp_group_command(), ttl_ms=10), INVALID, "ttl_ms"),
    ("ttl too long", "SendCommand", _send(command=_lamp_group_command(), ttl_ms=3_600_001), INVALID, "ttl_ms"),
    ("unknown device", "SendCommand", _send(command=C.Command(target=C.Target(dev_eui="00000000000000ff"), set_brightness=C.SetBrightness())), NOT_FOUND, "command.target.dev_eui"),
    ("unknown group", "SendCommand", _send(command=C.Command(asset_class=AC.STREET_LAMP, target=C.Target(group="nowhere"), set_brightness=C.SetBrightness())), NOT_FOUND, "command.target.group"),
    ("no command id", "GetCommand", OP.GetCommandRequest(), INVALID, "command_id"),
    ("unknown command", "GetCommand", OP.GetCommandRequest(command_id="nope"), NOT_FOUND, "command 'nope' does not exist"),
    ("bad status", "ListCommands", OP.ListCommandsRequest(status=command_pb2.CommandStatus.ValueType(99)), INVALID, "status"),
    ("page too big", "ListCommands", OP.ListCommandsRequest(page_size=5000), INVALID, "page_size"),
    ("forged token", "ListAlarms", OP.ListAlarmsRequest(page_token="!!"), INVALID, "page_token"),
    ("another list's token", "ListTasks", OP.ListTasksRequest(page_token="bGVkZ2VyL3g="), INVALID, "page_token"),
    ("no dev_eui", "GetAsset", OP.GetAssetRequest(), INVALID, "dev_eui"),
    ("unknown asset", "GetAsset", OP.GetAssetRequest(dev_eui="00000000000000ff"), NOT_FOUND, "does not exist"),
    ("bad class", "ListAssets", OP.ListAssetsRequest(asset_class=AC.ValueType(77)), INVALID, "asset_class"),
    ("override too short", "SetOverride", _override(duration_ms=1_000), INVALID, "duration_ms"),
    ("override too long", "SetOverride", _override(duration_ms=86_400_001), INVALID, "duration_ms"),
    ("override without class", "SetOverride", _override(asset_class=0), INVALID, "asset_class"),
    ("override without group", "SetOverride", _override(group=""), INVALID, "group"),
    ("override without action", "SetOverride", OP.SetOverrideRequest(idempotency_key="bad", asset_class=AC.STREET_LAMP, group="talant", duration_ms=600_000), INVALID, "action"),
    ("override of unknown group", "SetOverride", _override(group="nowhere"), NOT_FOUND, "group"),
    ("end unknown override", "EndOverride", OP.EndOverrideRequest(idempotency_key="bad", override_id="x"), NOT_FOUND, "override 'x' does not exist"),
    ("end without id", "EndOverride", OP.EndOverrideRequest(idempotency_key="bad"), INVALID, "override_id"),
    ("bad min severity", "ListAlarms", OP.ListAlarmsRequest(min_severity=operations_pb2.Severity.ValueType(9)), INVALID, "min_severity"),
    ("unspecified state", "ListAlarms", OP.ListAlarmsRequest(states=[operations_pb2.ALARM_STATE_UNSPECIFIED]), INVALID, "states"),
    ("ack unknown alarm", "AcknowledgeAlarm", OP.AlarmActionRequest(idempotency_key="bad", alarm_id="x"), NOT_FOUND, "alarm 'x' does not exist"),
    ("ack without id", "AcknowledgeAlarm", OP.AlarmActionRequest(idempotency_key="bad"), INVALID, "alarm_id"),
    ("clear unknown alarm", "ClearAlarm", OP.AlarmActionRequest(idempotency_key="bad", alarm_id="x"), NOT_FOUND, "alarm 'x' does not exist"),
    ("incident without kind", "CreateIncident", _incident(kind=0), INVALID, "kind"),
    ("incident without place", "CreateIncident", OP.CreateIncidentRequest(idempotency_key="bad", kind=operations_pb2.INCIDENT_FIRE, detail="smoke"), INVALID, "location"),
    ("incident in Paris", "CreateIncident", _incident(location=operations_pb2.GeoPoint(latitude=48.85, longitude=2.35)), INVALID, "location.latitude"),
    ("incident without detail", "CreateIncident", _incident(detail="  "), INVALID, "detail"),
    ("incident priority 9", "CreateIncident", _incident(priority=9), INVALID, "priority"),
    ("task without department", "CreateTask", _task(department=0), INVALID, "department"),
    ("task without kind", "CreateTask", _task(kind=""), INVALID, "kind"),
    ("task with control chars", "CreateTask", _task(detail="a\x00b"), INVALID, "detail"),
    ("assign to nobody", "AssignTask", OP.AssignTaskRequest(idempotency_key="bad", task_id="x"), PRECONDITION, "no automatic assignment yet: name an assignee"),
    ("assign unknown task", "AssignTask", OP.AssignTaskRequest(idempotency_key="bad", task_id="x", assignee="car"), NOT_FOUND, "task 'x' does not exist"),
    ("close unknown task", "CloseTask", OP.CloseTaskRequest(idempotency_key="bad", task_id="x"), NOT_FOUND, "task 'x' does not exist"),
    ("bad task status", "ListTasks", OP.ListTasksRequest(statuses=[operations_pb2.TaskStatus.ValueType(42)]), INVALID, "statuses"),
]  # fmt: skip


@pytest.mark.timeout(60)
async def test_every_bad_input_gets_its_status_and_a_message_naming_the_field(rig: Rig) -> None:
    for label, method, request, code, words in BAD_INPUTS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.call(method, request)
        assert caught.value.code() == code, label
        assert words in (caught.value.details() or ""), (label, caught.value.details())
    assert rig.sent == [] and await rig.ledger() == []  # nothing bad acted


@pytest.mark.timeout(30)
async def test_state_conflicts_are_failed_preconditions(rig: Rig) -> None:
    alarm = await rig.raise_alarm(LAMP)
    await rig.call(
        "AcknowledgeAlarm", OP.AlarmActionRequest(idempotency_key="p-1", alarm_id=alarm.alarm_id)
    )
    held = await rig.call("SetOverride", _override(idempotency_key="p-2"))
    await rig.call(
        "EndOverride", OP.EndOverrideRequest(idempotency_key="p-3", override_id=held.override_id)
    )
    await rig.call("SetOverride", _override(idempotency_key="p-4"))
    conflicts: list[tuple[str, Any, str]] = [
        (
            "AcknowledgeAlarm",
            OP.AlarmActionRequest(idempotency_key="p-5", alarm_id=alarm.alarm_id),
            "is already acknowledged",
        ),
        (
            "EndOverride",
            OP.EndOverrideRequest(idempotency_key="p-6", override_id=held.override_id),
            "already ended",
        ),
        ("SetOverride", _override(idempotency_key="p-7"), "already held by override"),
    ]
    for method, request, words in conflicts:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.call(method, request)
        assert caught.value.code() == PRECONDITION, method
        assert words in (caught.value.details() or ""), method
    await rig.call(
        "ClearAlarm", OP.AlarmActionRequest(idempotency_key="p-8", alarm_id=alarm.alarm_id)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.call(
            "ClearAlarm", OP.AlarmActionRequest(idempotency_key="p-9", alarm_id=alarm.alarm_id)
        )
    assert caught.value.code() == PRECONDITION


@pytest.mark.timeout(30)
async def test_reserved_operator_ids_are_refused(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.call(
            "SendCommand",
            _send(command=_lamp_group_command()),
            who="policy:street_lamp/talant",
        )
    assert caught.value.code() == INVALID
    assert OPERATOR_METADATA in (caught.value.details() or "")


# --- pagination -------------------------------------------------------------------------


async def _walk(rig: Rig, method: str, request: Any, field: str, id_of: Any) -> list[str]:
    seen: list[str] = []
    pages = 0
    while True:
        reply = await rig.call(method, request)
        items = list(getattr(reply, field))
        assert len(items) <= request.page_size
        seen.extend(id_of(item) for item in items)
        pages += 1
        assert pages < 100
        if not reply.next_page_token:
            return seen
        request.page_token = reply.next_page_token


@pytest.mark.timeout(60)
async def test_pagination_walks_every_item_exactly_once(rig: Rig) -> None:
    created = []
    for i in range(23):
        task = await rig.call(
            "CreateTask",
            _task(
                idempotency_key=f"page-{i}",
                department=operations_pb2.ROADS if i % 3 else operations_pb2.WASTE,
            ),
        )
        created.append(task)
    every = await _walk(
        rig, "ListTasks", OP.ListTasksRequest(page_size=4), "tasks", lambda t: t.task_id
    )
    assert sorted(every) == sorted(t.task_id for t in created) and len(set(every)) == 23
    roads = await _walk(
        rig,
        "ListTasks",
        OP.ListTasksRequest(page_size=5, department=operations_pb2.ROADS),
        "tasks",
        lambda t: t.task_id,
    )
    expected = {t.task_id for t in created if t.department == operations_pb2.ROADS}
    assert sorted(roads) == sorted(expected) and len(roads) == len(expected)
    # Exactly page_size matches: the last page carries no token.
    exact = await rig.call("ListTasks", OP.ListTasksRequest(page_size=23))
    assert len(exact.tasks) == 23 and exact.next_page_token == ""

    for i in range(7):
        await rig.call(
            "SendCommand", _send(idempotency_key=f"pc-{i}", command=_lamp_group_command(i))
        )
    commands = await _walk(
        rig, "ListCommands", OP.ListCommandsRequest(page_size=3), "commands",
        lambda c: c.command.command_id,
    )  # fmt: skip
    assert sorted(commands) == sorted(r.command.command_id for r in await rig.ledger())

    assets = await _walk(
        rig, "ListAssets", OP.ListAssetsRequest(page_size=3), "assets", lambda a: a.dev_eui
    )
    assert assets == sorted(d.dev_eui for d in DEVICES)
    lamps = await _walk(
        rig,
        "ListAssets",
        OP.ListAssetsRequest(page_size=2, asset_class=AC.STREET_LAMP),
        "assets",
        lambda a: a.dev_eui,
    )
    assert lamps == [d.dev_eui for d in DEVICES if d.asset_class == AC.STREET_LAMP]


# --- events -----------------------------------------------------------------------------


async def _next_event(call: Any) -> operator_pb2.Event:
    event = await asyncio.wait_for(call.read(), 10)
    assert isinstance(event, operator_pb2.Event)
    return event


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
async def test_the_map_is_the_registry_as_columns_and_its_states_stream(rig: Rig) -> None:
    amap = await rig.call("GetAssetMap", OP.GetAssetMapRequest())
    assert list(amap.dev_euis) == sorted(d.dev_eui for d in DEVICES)
    assert len(amap.asset_classes) == len(amap.latitudes) == len(DEVICES)
    lamp = list(amap.dev_euis).index(LAMP.dev_eui)
    assert amap.asset_classes[lamp] == AC.STREET_LAMP
    assert abs(amap.latitudes[lamp] - LAMP.latitude) < 1e-5  # float32: under a metre
    assert amap.group_names[amap.groups[lamp]] == LAMP.group
    assert amap.commune_names[amap.communes[lamp]] == LAMP.commune

    call = rig.stub.WatchAssetStates(OP.WatchAssetStatesRequest(interval_ms=200), metadata=CLAIRE)
    first = await asyncio.wait_for(call.read(), 5)
    assert first.snapshot and first.map_id == amap.map_id
    assert len(first.states) == len(DEVICES) and not first.indexes
    assert first.states[lamp] == OP.ACTIVE  # lit at 40 %
    assert first.states[list(amap.dev_euis).index(BOLLARD.dev_eui)] == OP.DISPLAY_STATE_UNSPECIFIED

    def lamp_at(pct: float, fault: bool = False) -> telemetry_pb2.Telemetry:
        reading = telemetry_pb2.LampReading(brightness_pct=pct, fault=fault)
        return telemetry_pb2.Telemetry(
            dev_eui=LAMP.dev_eui, asset_class=AC.STREET_LAMP, lamp=reading
        )

    # Off, then faulty, within one interval: one change, the latest state.
    rig.board.submit([lamp_at(0.0)])
    rig.board.submit([lamp_at(0.0, fault=True)])
    change = await asyncio.wait_for(call.read(), 5)
    assert not change.snapshot and change.sequence > first.sequence
    assert list(change.indexes) == [lamp] and list(change.states) == [OP.FAULT]
    call.cancel()

    bad = rig.stub.WatchAssetStates(OP.WatchAssetStatesRequest(interval_ms=50), metadata=CLAIRE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bad.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interval_ms" in (refused.value.details() or "")


@pytest.mark.timeout(30)
async def test_watch_delivers_an_alarm_raised_after_the_stream_opened(rig: Rig) -> None:
    await rig.raise_alarm(LAMP, kind="before")  # history: not replayed
    call = rig.stub.WatchEvents(OP.WatchEventsRequest(), metadata=CLAIRE)
    metadata = dict(await call.initial_metadata())
    assert int(metadata[WATCH_REVISION_METADATA]) >= 1
    raised = await rig.raise_alarm(BOLLARD, kind="after")
    event = await _next_event(call)
    assert event.WhichOneof("kind") == "alarm" and event.alarm.alarm_id == raised.alarm_id

    # A class filter: the lamp's alarm is left out, the signal's comes through.
    signals = rig.stub.WatchEvents(
        OP.WatchEventsRequest(asset_classes=[AC.TRAFFIC_SIGNAL]), metadata=CLAIRE
    )
    await signals.initial_metadata()
    await rig.raise_alarm(LAMP, kind="lamp-only")
    await rig.raise_alarm(SIGNAL, kind="signal")
    event = await _next_event(signals)
    assert event.alarm.originator == SIGNAL.dev_eui and event.alarm.type == "signal"

    call.cancel()
    signals.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await asyncio.wait_for(_until(lambda: rig.state.open_watches == 0), 10)  # closed server-side
    # The server goes on serving, and new streams see new changes.
    again = rig.stub.WatchEvents(OP.WatchEventsRequest(), metadata=CLAIRE)
    await again.initial_metadata()
    await rig.call("SendCommand", _send(idempotency_key="w-1", command=_lamp_group_command()))
    event = await _next_event(again)
    assert event.WhichOneof("kind") == "command" and event.command.issued_by == "op-claire"
    again.cancel()


@pytest.mark.timeout(30)
async def test_a_watch_resumes_after_the_last_event_it_saw_with_nothing_missed(
    rig: Rig,
) -> None:
    call = rig.stub.WatchEvents(OP.WatchEventsRequest(), metadata=CLAIRE)
    await call.initial_metadata()
    first = await rig.raise_alarm(LAMP, kind="resume-1")
    seen = await _next_event(call)
    assert seen.alarm.alarm_id == first.alarm_id and seen.revision >= 1
    call.cancel()  # the browser's connection drops here
    missed = [await rig.raise_alarm(BOLLARD, kind=f"resume-{n}") for n in (2, 3)]
    resumed = rig.stub.WatchEvents(
        OP.WatchEventsRequest(start_revision=seen.revision + 1), metadata=CLAIRE
    )
    metadata = dict(await resumed.initial_metadata())
    assert int(metadata[WATCH_REVISION_METADATA]) == seen.revision
    got = [await _next_event(resumed) for _ in missed]
    assert [e.alarm.type for e in got] == ["resume-2", "resume-3"]  # none repeated or lost
    assert got[0].revision > seen.revision and got[1].revision > got[0].revision
    resumed.cancel()

    bad = rig.stub.WatchEvents(OP.WatchEventsRequest(start_revision=-1), metadata=CLAIRE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bad.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_revision" in (caught.value.details() or "")


@pytest.mark.timeout(30)
async def test_watch_refuses_telemetry_streaming_for_now(rig: Rig) -> None:
    call = rig.stub.WatchEvents(OP.WatchEventsRequest(include_telemetry=True), metadata=CLAIRE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "include_telemetry" in (caught.value.details() or "")


@pytest.mark.timeout(30)
async def test_while_the_audit_file_fails_mass_commands_wait_and_one_device_still_goes(
    rig: Rig,
) -> None:
    rig.audit_failure = "audit-primary.jsonl: No space left on device"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rig.stub.SendCommand(
            OP.SendCommandRequest(idempotency_key="mass", command=_lamp_group_command())
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "No space left on device" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await rig.stub.SetOverride(_override(idempotency_key="hold"))
    assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rig.dispatcher.pending_commands() == 0  # nothing was written
    one = OP.SendCommandRequest(
        idempotency_key="one",
        command=command_pb2.Command(
            target=command_pb2.Target(dev_eui=LAMP.dev_eui),
            set_brightness=command_pb2.SetBrightness(brightness_pct=100.0),
        ),
    )
    record = await rig.stub.SendCommand(one)
    assert record.status == command_pb2.SENT and rig.sent  # the single safety action went
    rig.audit_failure = ""  # the disk has room again: the group command goes
    again = await rig.stub.SendCommand(
        OP.SendCommandRequest(idempotency_key="mass", command=_lamp_group_command())
    )
    assert again.command.target.group == "talant"
