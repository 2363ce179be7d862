"""Alarm shelving (ISA-18.2) end to end: ShelveAlarm / UnshelveAlarm and ListAlarms' views on a
real gRPC server, over the real dispatcher writing to a real etcd (the session's, under a city
of its own, with the leader key held by the test), and the console on top.

Authorization: the post's operators' port normally runs `api.authorization.Authorizer`
(tokens bound to workstation certificates, tested with the whole city). Here a stand-in guard
takes the caller's roles from a test metadata key and asks the real `security.policy.Policy`,
so the policy's rule (alarms.handle) and the post's own check of the alarm's class both run.

The post's wall clock is the test's: a shelve's end comes by moving it, and
`Dispatcher.unshelve_expired` (the leader's tick calls it) brings the alarm back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from actors.decisions import ClearAlarm, RaiseAlarm
from api.authorization import Caller
from api.operator import operator_service
from api.server import start_server
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.sinks import MemorySink
from citypost.config import ShelveLimits
from citypost.errors import ConfigError, UnauthenticatedError
from cluster.etcd_local import LocalEtcd
from cluster.ports import free_port
from console.cli import run
from failover import control_state as cs
from failover.etcd_control_state import EtcdControlState
from post.asset_board import AssetBoard
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
)
from protos.metadata import OPERATOR_METADATA
from security.policy import Policy, missing_rules

pytestmark = pytest.mark.integration

AC = assets_pb2.AssetClass
OP = operator_pb2
T0 = 1_800_000_000_000
MINUTE = 60_000
ROLES_METADATA = "x-test-roles"  # the stand-in guard's: comma-separated roles
# Configured maxima (config.alarms.shelve_max_minutes): MAJOR lowered from its default 120.
LIMITS = ShelveLimits(major=45)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _device(i: int, asset_class: AC.ValueType, group: str) -> Device:
    return Device(
        dev_eui=f"{i:016x}",
        name=f"{group}-{i}",
        asset_class=asset_class,
        group=group,
        commune="Dijon",
        latitude=47.32,
        longitude=5.04,
        transport=assets_pb2.LORAWAN,
        application_id=application_id("dijon", asset_class),
    )


LAMP = _device(1, AC.STREET_LAMP, "talant")
OTHER_LAMP = _device(2, AC.STREET_LAMP, "talant")
BOLLARD = _device(3, AC.BOLLARD, "old-town")


class Clock:
    """The post's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class RoleGuard:
    """A stand-in for the operators' Authorizer: the caller's name from the operator metadata,
    the roles from `x-test-roles` (a supervisor when none is sent, as the console sends
    none), and the real policy's decision."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def check_methods(self, methods: Collection[str]) -> None:
        missing = missing_rules(methods, self.policy.rules)
        if missing:
            raise ConfigError(f"no rule for {missing}")

    def admit(
        self, method: str, metadata: Sequence[tuple[str, Any]], context: Any, request: Any
    ) -> Caller:
        given = {key: str(value) for key, value in metadata}
        name = given.get(OPERATOR_METADATA, "")
        roles = tuple(given.get(ROLES_METADATA, "supervisor").split(","))
        caller = Caller(name, roles, grants=self.policy.grants(roles))
        rule = self.policy.rule(method)
        if rule is not None and rule.public:
            return caller
        if not name:
            raise UnauthenticatedError("no operator")
        self.policy.check(method, roles, request)
        return caller


@dataclass
class Rig:
    stub: operator_pb2_grpc.OperatorServiceAsyncStub
    state: EtcdControlState
    dispatcher: Dispatcher
    clock: Clock
    address: str

    async def call(
        self, method: str, request: Any, who: str = "op-claire", roles: str = "supervisor"
    ) -> Any:
        metadata = ((OPERATOR_METADATA, who), (ROLES_METADATA, roles))
        return await getattr(self.stub, method)(request, metadata=metadata)

    async def refused(self, method: str, request: Any, **who: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call(method, request, **who)
        return caught.value

    async def raise_alarm(
        self,
        device: Device | str,
        severity: operations_pb2.Severity.ValueType = operations_pb2.MAJOR,
        kind: str = "lamp_fault",
        cause: tuple[str, str] | None = None,
        suppressed_count: int = 0,
    ) -> operations_pb2.Alarm:
        originator = device if isinstance(device, str) else device.dev_eui
        decision = RaiseAlarm(originator, kind, severity, "broken", cause, suppressed_count)
        await self.dispatcher.apply("policy:street_lamp/talant", [decision])
        return await self.active(originator, kind)

    async def active(self, originator: str, kind: str) -> operations_pb2.Alarm:
        alarms = await self.state.list(cs.ALARMS, operations_pb2.Alarm, limit=1000)
        [alarm] = [
            e.value
            for e in alarms.entries
            if (e.value.originator, e.value.type) == (originator, kind)
            and e.value.state in (operations_pb2.ACTIVE_UNACK, operations_pb2.ACTIVE_ACK)
        ]
        return alarm

    async def stored(self, alarm_id: str) -> operations_pb2.Alarm:
        alarm = await self.state.get(cs.alarm_key(alarm_id), operations_pb2.Alarm)
        assert alarm is not None
        return alarm

    async def listed(self, **request: Any) -> list[str]:
        reply = await self.call("ListAlarms", OP.ListAlarmsRequest(**request))
        return sorted(a.alarm_id for a in reply.alarms)

    async def audit(self, alarm_id: str) -> list[control_state_pb2.AuditEntry]:
        page = await self.state.list(cs.AUDIT, control_state_pb2.AuditEntry, limit=1000)
        return [e.value for e in page.entries if e.value.target == f"alarm/{alarm_id}"]

    async def console(self, *argv: str) -> int:
        """`citypost console` as op-luc (the stand-in guard makes the console's caller a
        supervisor). A blocking gRPC client: in a worker thread, the server runs here."""
        argv = ("--insecure", "--post", self.address, "--operator", "op-luc", *argv)
        return await asyncio.to_thread(run, list(argv))


@pytest.fixture
async def rig(etcd: LocalEtcd) -> AsyncIterator[Rig]:
    city = f"t{uuid.uuid4().hex[:10]}"
    state = EtcdControlState.from_endpoints(etcd.endpoints, city)
    async with etcd.client() as client:
        leader_key = (cs.city_root(city) + cs.LEADER_KEY).encode()
        await client.put(leader_key, b"test")  # this test leads the city: its epoch fences
        held = await client.get(leader_key)
        assert held is not None
        epoch = int(held.create_revision)
        clock = Clock()
        registry = DeviceRegistry([LAMP, OTHER_LAMP, BOLLARD])
        dispatcher = Dispatcher(
            state=state,
            registry=registry,
            publish=lambda downlink: None,
            epoch=lambda: epoch,
            wall_ms=clock,
        )
        await dispatcher.load()
        service = operator_service(
            dispatcher,
            state,
            registry,
            MemorySink(),
            AssetBoard(registry),
            wall_ms=clock,
            shelve_limits=LIMITS,
        )
        port = free_port()
        server, _ = await start_server(
            [service], port=port, deadline_s=10.0, authorizer=RoleGuard(Policy())
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield Rig(
                operator_pb2_grpc.OperatorServiceStub(channel),
                state,
                dispatcher,
                clock,
                f"127.0.0.1:{port}",
            )
        finally:
            await channel.close()
            await server.stop(grace=None)
            await state.close()
            await client.delete_prefix(cs.city_root(city).encode())


def _shelve(
    alarm_id: str, minutes: float = 30, reason: str = "crew on site", key: str = "s-1"
) -> Any:
    return OP.ShelveAlarmRequest(
        idempotency_key=key, alarm_id=alarm_id, minutes=minutes, reason=reason
    )


@pytest.mark.timeout(60)
async def test_a_shelved_alarm_leaves_the_list_is_audited_and_comes_back_by_itself(
    rig: Rig,
) -> None:
    lamp = await rig.raise_alarm(LAMP)
    bollard = await rig.raise_alarm(BOLLARD, operations_pb2.MINOR, "bollard_stuck")
    assert await rig.listed() == sorted([lamp.alarm_id, bollard.alarm_id])

    shelved = await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=30))
    assert shelved.shelved_until_ms == T0 + 30 * MINUTE
    assert (shelved.shelved_by, shelved.shelve_reason) == ("op-claire", "crew on site")
    assert shelved.state == operations_pb2.ACTIVE_UNACK
    assert await rig.stored(lamp.alarm_id) == shelved  # committed in etcd before the answer
    # A retry with the same key answers the same and shelves nothing more.
    assert await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=30)) == shelved

    assert await rig.listed() == [bollard.alarm_id]  # the annunciated view: not shelved
    assert await rig.listed(view=OP.ALARM_VIEW_SHELVED) == [lamp.alarm_id]
    assert await rig.listed(view=OP.ALARM_VIEW_SUPPRESSED) == []
    assert await rig.listed(view=OP.ALARM_VIEW_ALL) == sorted([lamp.alarm_id, bollard.alarm_id])
    # Shelved, it still counts as an active alarm of its asset.
    asset = await rig.call("GetAsset", OP.GetAssetRequest(dev_eui=LAMP.dev_eui))
    assert asset.active_alarms == 1

    [note] = [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.shelve"]
    assert note.actor == "op-claire" and note.outcome == control_state_pb2.AUDIT_OK
    assert "at most 45 for MAJOR" in note.detail and note.detail.endswith(": crew on site")

    rig.clock.now = T0 + 30 * MINUTE - 1
    assert await rig.dispatcher.unshelve_expired() == 0
    assert await rig.listed() == [bollard.alarm_id]
    rig.clock.now = T0 + 30 * MINUTE
    # Its time is up: the list shows it at once, and the leader's tick writes it back.
    assert await rig.listed() == sorted([lamp.alarm_id, bollard.alarm_id])
    assert await rig.dispatcher.unshelve_expired() == 1
    back = await rig.stored(lamp.alarm_id)
    assert (back.shelved_until_ms, back.shelved_by, back.shelve_reason) == (0, "", "")
    assert await rig.listed(view=OP.ALARM_VIEW_SHELVED) == []
    [came_back] = [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.unshelve"]
    assert came_back.actor == "system" and came_back.detail.startswith("shelve time is up")
    assert await rig.dispatcher.unshelve_expired() == 0


@pytest.mark.timeout(60)
async def test_an_operator_unshelves_early_and_a_worse_raise_ends_a_shelve(rig: Rig) -> None:
    lamp = await rig.raise_alarm(LAMP, operations_pb2.MINOR)
    await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=120, key="s-a"))
    request = OP.AlarmActionRequest(idempotency_key="u-a", alarm_id=lamp.alarm_id, comment="fixed")
    back = await rig.call("UnshelveAlarm", request, who="op-luc")
    assert back.shelved_until_ms == 0 and await rig.listed() == [lamp.alarm_id]
    assert await rig.call("UnshelveAlarm", request, who="op-luc") == back  # a retry
    [note] = [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.unshelve"]
    assert note.actor == "op-luc" and note.detail.endswith(": fixed")

    await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=60, key="s-b"))
    assert await rig.listed() == []
    worse = await rig.raise_alarm(LAMP, operations_pb2.MAJOR)
    assert worse.alarm_id == lamp.alarm_id and worse.shelved_until_ms == 0
    assert await rig.listed() == [lamp.alarm_id]
    # A retry of that shelve (60 min: past MAJOR's 45 now) answers the alarm as it is.
    retried = await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=60, key="s-b"))
    assert retried.shelved_until_ms == 0 and retried.severity == operations_pb2.MAJOR
    updates = [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.update"]
    assert any("shelve ended: severity rose" in e.detail for e in updates)


@pytest.mark.timeout(60)
async def test_a_shelve_without_reason_past_its_maximum_or_of_no_active_alarm_is_refused(
    rig: Rig,
) -> None:
    lamp = await rig.raise_alarm(LAMP)  # MAJOR: at most 45 minutes here
    for label, request, code, words in [
        ("no reason", _shelve(lamp.alarm_id, reason=" "), INVALID, "reason: required"),
        ("no time", _shelve(lamp.alarm_id, minutes=0), INVALID, "minutes"),
        ("negative", _shelve(lamp.alarm_id, minutes=-5), INVALID, "minutes"),
        ("not a number", _shelve(lamp.alarm_id, minutes=float("nan")), INVALID, "minutes"),
        (
            "past the maximum",
            _shelve(lamp.alarm_id, minutes=46),
            INVALID,
            "a MAJOR alarm may be shelved for at most 45 minutes, got 46",
        ),
        ("no key", _shelve(lamp.alarm_id, key=""), INVALID, "idempotency_key"),
        ("no alarm", _shelve(""), INVALID, "alarm_id: required"),
        ("unknown", _shelve("nope"), grpc.StatusCode.NOT_FOUND, "alarm 'nope' does not exist"),
    ]:
        refused = await rig.refused("ShelveAlarm", request)
        assert refused.code() == code, label
        assert words in (refused.details() or ""), (label, refused.details())
    # Exactly the maximum is allowed.
    assert (await rig.call("ShelveAlarm", _shelve(lamp.alarm_id, minutes=45))).shelved_until_ms
    again = await rig.refused("ShelveAlarm", _shelve(lamp.alarm_id, minutes=5, key="s-2"))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already shelved by op-claire" in (again.details() or "")

    other = await rig.raise_alarm(OTHER_LAMP)
    not_shelved = await rig.refused(
        "UnshelveAlarm", OP.AlarmActionRequest(idempotency_key="u-1", alarm_id=other.alarm_id)
    )
    assert not_shelved.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is not shelved" in (not_shelved.details() or "")
    await rig.dispatcher.apply(
        "policy:street_lamp/talant", [ClearAlarm(OTHER_LAMP.dev_eui, "lamp_fault")]
    )
    cleared = await rig.refused("ShelveAlarm", _shelve(other.alarm_id, key="s-3"))
    assert cleared.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot shelve when CLEARED_UNACK" in (cleared.details() or "")
    assert [e.action for e in await rig.audit(other.alarm_id)] == ["alarm.raise", "alarm.clear"]
    shelves = [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.shelve"]
    assert len(shelves) == 1  # only the one that was allowed


@pytest.mark.timeout(60)
async def test_only_roles_that_handle_the_alarms_class_shelve_or_unshelve_it(rig: Rig) -> None:
    lamp = await rig.raise_alarm(LAMP)
    # Handles alarms, of other classes: the post refuses on the alarm's own class.
    traffic = await rig.refused("ShelveAlarm", _shelve(lamp.alarm_id), roles="traffic-control")
    assert traffic.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alarms.handle:street_lamp" in (traffic.details() or "")
    # Handles no alarm at all: the policy refuses before the post reads anything.
    wallboard = await rig.refused("ShelveAlarm", _shelve(lamp.alarm_id), roles="wallboard")
    assert wallboard.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alarms.handle" in (wallboard.details() or "")
    assert await rig.stored(lamp.alarm_id) == lamp  # nothing written
    assert not [e for e in await rig.audit(lamp.alarm_id) if e.action == "alarm.shelve"]

    shelved = await rig.call(
        "ShelveAlarm", _shelve(lamp.alarm_id), who="op-ana", roles="urban-supervision"
    )
    assert shelved.shelved_by == "op-ana"
    unshelve = OP.AlarmActionRequest(idempotency_key="u-1", alarm_id=lamp.alarm_id)
    refused = await rig.refused("UnshelveAlarm", unshelve, roles="traffic-control")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await rig.stored(lamp.alarm_id)).shelved_until_ms == shelved.shelved_until_ms
    # Reading the shelved list is alarms.read: the wallboard sees it.
    reply = await rig.call(
        "ListAlarms", OP.ListAlarmsRequest(view=OP.ALARM_VIEW_SHELVED), roles="wallboard"
    )
    assert [a.alarm_id for a in reply.alarms] == [lamp.alarm_id]


@pytest.mark.timeout(60)
async def test_suppressed_alarms_are_listed_under_their_cause_not_annunciated(rig: Rig) -> None:
    gateway = await rig.raise_alarm("gw-talant", kind="gateway_silent", suppressed_count=2)
    cause = ("gw-talant", "gateway_silent")
    first = await rig.raise_alarm(LAMP, cause=cause)
    second = await rig.raise_alarm(OTHER_LAMP, cause=cause)
    bollard = await rig.raise_alarm(BOLLARD, kind="bollard_stuck")
    assert first.suppressed_by == second.suppressed_by == gateway.alarm_id
    assert gateway.suppressed_count == 2
    assert await rig.listed() == sorted([gateway.alarm_id, bollard.alarm_id])
    suppressed = sorted([first.alarm_id, second.alarm_id])
    assert await rig.listed(view=OP.ALARM_VIEW_SUPPRESSED) == suppressed
    assert await rig.listed(cause_alarm_id=gateway.alarm_id) == suppressed
    # The cause filter holds whatever the view, and with the other filters.
    await rig.call("ShelveAlarm", _shelve(first.alarm_id, minutes=10))
    assert await rig.listed(cause_alarm_id=gateway.alarm_id) == suppressed
    assert await rig.listed(view=OP.ALARM_VIEW_SHELVED) == [first.alarm_id]
    lamps_behind = await rig.listed(
        cause_alarm_id=gateway.alarm_id, view=OP.ALARM_VIEW_ALL, asset_class=AC.STREET_LAMP
    )
    assert lamps_behind == suppressed
    assert await rig.listed(cause_alarm_id=bollard.alarm_id) == []
    bad_view = await rig.refused("ListAlarms", OP.ListAlarmsRequest(view=9))  # type: ignore[arg-type]
    assert bad_view.code() == INVALID and "view" in (bad_view.details() or "")


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables as wide as they need (ids are not folded)."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.mark.timeout(60)
async def test_the_console_shelves_lists_and_unshelves(
    rig: Rig, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    gateway = await rig.raise_alarm("gw-talant", kind="gateway_silent", suppressed_count=1)
    lamp = await rig.raise_alarm(LAMP)
    behind = await rig.raise_alarm(OTHER_LAMP, cause=("gw-talant", "gateway_silent"))
    code = await rig.console(
        "alarm", "shelve", lamp.alarm_id, "--minutes", "20", "--reason", "crew on site", "--json"
    )
    assert code == 0
    shelved = json.loads(capsys.readouterr().out)
    assert shelved["shelvedBy"] == "op-luc" and shelved["shelveReason"] == "crew on site"
    assert int(shelved["shelvedUntilMs"]) == T0 + 20 * MINUTE

    assert await rig.console("alarms") == 0
    table = capsys.readouterr().out
    assert lamp.alarm_id not in table and behind.alarm_id not in table
    assert gateway.alarm_id in table and "suppresses 1" in table
    assert await rig.console("alarms", "--view", "shelved") == 0
    table = capsys.readouterr().out
    assert lamp.alarm_id in table and "shelved until 2027-01-15 08:20:00Z by op-luc" in table
    assert await rig.console("alarms", "--cause", gateway.alarm_id) == 0
    table = capsys.readouterr().out
    assert behind.alarm_id in table and f"suppressed under {gateway.alarm_id}" in table
    assert await rig.console("alarms", "--view", "all", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 3

    # MAJOR: at most 45 minutes here.
    too_long = ("alarm", "shelve", behind.alarm_id, "--minutes", "50", "--reason", "noise")
    assert await rig.console(*too_long) == 1
    assert "INVALID_ARGUMENT: minutes: a MAJOR alarm" in capsys.readouterr().err

    code = await rig.console("alarm", "unshelve", lamp.alarm_id, "--comment", "done")
    assert code == 0
    shown = capsys.readouterr().out
    assert "alarm unshelved" in shown and "shelved until" not in shown
    assert await rig.console("alarms") == 0
    assert lamp.alarm_id in capsys.readouterr().out
