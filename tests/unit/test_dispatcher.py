"""The dispatcher over the in-memory control state: ledger before downlink, acks, TTL, overrides, alarms.

Per-device commands are tried on a group of traffic signals (IP: one downlink each, acknowledged);
multicast group commands (lamps, confirmed by reported state) at the end of the file.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from google.protobuf.message import Message

from actors.decisions import ClearAlarm, IssueCommand, OpenIncident, RaiseAlarm, RequestTask
from bridges import chirpstack
from bridges.downlink_frame import decode_command
from bridges.registry import Device, DeviceRegistry, application_id
from citypost.config import ShelveLimits
from citypost.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotLeaderError,
)
from failover.control_state import (
    FencedError,
    InMemoryControlState,
    alarm_key,
    idempotency_index_key,
    ledger_key,
)
from post import command_ledger
from post.alarm_book import ACTIVE
from post.dispatcher import LEDGER_BATCH, MAX_STRAGGLER_UNICASTS, Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    telemetry_pb2,
)

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass
APP = application_id("dijon", AC.TRAFFIC_SIGNAL)
SIGNALS = [
    Device(
        dev_eui=f"{i:016x}",
        name=f"signal-{i}",
        asset_class=AC.TRAFFIC_SIGNAL,
        group="talant",
        commune="Talant",
        latitude=47.33,
        longitude=5.0,
        transport=assets_pb2.IP,
        application_id=APP,
    )
    for i in range(1, 4)
]
ACTOR = "policy:traffic_signal/talant"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


class Harness:
    def __init__(
        self, devices: list[Device] | None = None, state: InMemoryControlState | None = None
    ) -> None:
        self.state = state or InMemoryControlState(epoch=5)
        self.clock = Clock()
        self.sent: list[tuple[str, bytes]] = []
        self.dispatcher = Dispatcher(
            state=self.state,
            registry=DeviceRegistry(SIGNALS if devices is None else devices),
            publish=lambda d: self.sent.append((d.topic, d.payload)),
            epoch=lambda: 5,
            wall_ms=self.clock,
            command_ttl_ms=30_000,
            max_attempts=2,
        )

    async def record(self, command_id: str) -> control_state_pb2.CommandRecord:
        record = await self.state.get(ledger_key(command_id), control_state_pb2.CommandRecord)
        assert record is not None
        return record

    def ack(self, command_id: str, dev_eui: str, acknowledged: bool = True) -> chirpstack.Ack:
        info = chirpstack.DeviceInfo(application_id=APP, dev_eui=dev_eui)
        return chirpstack.Ack("", self.clock.now, info, command_id, acknowledged, 1)


class Standby:
    """A second dispatcher on the leader's control state, following its writes as a standby
    post does; it refuses to command until given an epoch."""

    def __init__(self, leader: Harness, devices: list[Device]) -> None:
        self.epoch = 0
        self.sent: list[tuple[str, bytes]] = []
        self.followed = 0
        self.dispatcher = Dispatcher(
            state=leader.state,
            registry=DeviceRegistry(devices),
            publish=lambda d: self.sent.append((d.topic, d.payload)),
            epoch=self._epoch,
            wall_ms=leader.clock,
            command_ttl_ms=30_000,
            max_attempts=3,
        )
        self._state = leader.state
        self._task: asyncio.Task[None] | None = None

    def _epoch(self) -> int:
        if not self.epoch:
            raise NotLeaderError("standing by", leader_name="primary", leader_address="a:1")
        return self.epoch

    async def start(self) -> None:
        await self.dispatcher.load()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for change in self._state.watch(1):
            self.dispatcher.apply_change(change)
            self.followed = change.revision

    async def caught_up(self, revision: int) -> None:
        while self.followed < revision:
            await asyncio.sleep(0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _group_command() -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.TRAFFIC_SIGNAL,
        target=command_pb2.Target(group="talant"),
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
    )


async def test_group_command_is_one_ledger_entry_sent_to_each_device_then_acked() -> None:
    h = Harness()
    await h.dispatcher.apply(ACTOR, [IssueCommand(_group_command(), reason="dusk")])
    assert len(h.sent) == 3
    command_id = chirpstack.parse_downlink(h.sent[0][1]).id
    assert command_id is not None
    record = await h.record(command_id)
    assert record.status == command_pb2.SENT and record.expected_acks == 3
    assert record.command.epoch == 5 and record.issued_by == ACTOR
    await h.dispatcher.on_acks([h.ack(command_id, SIGNALS[0].dev_eui)] * 2)  # the same ack twice
    assert (await h.record(command_id)).acked_count == 1
    await h.dispatcher.on_acks([h.ack(command_id, d.dev_eui) for d in SIGNALS[1:]])
    assert (await h.record(command_id)).status == command_pb2.ACKED
    assert h.dispatcher.pending_commands() == 0


async def test_unacked_command_is_resent_then_expires_within_its_ttl() -> None:
    h = Harness()
    record = await h.dispatcher.issue_command(_group_command(), issued_by="op-claire")
    command_id = record.command.command_id
    h.clock.now += 20_000
    await h.dispatcher.run_ledger()
    assert len(h.sent) == 6  # resent to the three lamps, same command id
    assert {chirpstack.parse_downlink(p).id for _, p in h.sent} == {command_id}
    h.clock.now += 20_000
    await h.dispatcher.run_ledger()
    assert (await h.record(command_id)).status in (command_pb2.EXPIRED, command_pb2.FAILED)
    assert h.dispatcher.pending_commands() == 0


async def test_policy_commands_wait_while_an_override_holds_the_group() -> None:
    h = Harness()
    held = await h.dispatcher.set_override(
        control_state_pb2.Override(
            asset_class=AC.TRAFFIC_SIGNAL,
            group="talant",
            action=_group_command(),
            ends_at_ms=h.clock.now + 60_000,
            reason="festival",
        ),
        set_by="op-claire",
    )
    assert len(h.sent) == 3  # the override's action went to the group at once
    await h.dispatcher.apply(ACTOR, [IssueCommand(_group_command(), reason="dusk")])
    assert len(h.sent) == 3 and h.dispatcher.stats.commands_suppressed == 1
    operator = await h.dispatcher.issue_command(_group_command(), issued_by="op-claire")
    assert operator.status == command_pb2.SENT  # the operator's own command goes out
    h.clock.now += 60_000
    assert [o.override_id for o in h.dispatcher.expired_overrides()] == [held.override_id]
    sent_before = len(h.sent)
    await h.dispatcher.apply(ACTOR, [IssueCommand(_group_command(), reason="resume")])
    assert len(h.sent) == sent_before + 3


async def test_alarm_raised_once_task_requested_once_and_everything_audited() -> None:
    h = Harness()
    raise_it = RaiseAlarm(SIGNALS[0].dev_eui, "lamp_fault", operations_pb2.MINOR, "no light")
    task = RequestTask(
        operations_pb2.ROADS,
        "repair_lamp",
        3,
        47.33,
        5.0,
        "repair",
        f"{SIGNALS[0].dev_eui}/lamp_fault",
    )
    await h.dispatcher.apply(ACTOR, [raise_it, task, raise_it, task])
    alarms = (await h.state.list("state/alarms/", operations_pb2.Alarm)).entries
    tasks = (await h.state.list("state/tasks/", operations_pb2.Task)).entries
    assert len(alarms) == 1 and alarms[0].value.state == operations_pb2.ACTIVE_UNACK
    assert alarms[0].value.asset_class == AC.TRAFFIC_SIGNAL and alarms[0].value.group == "talant"
    assert len(tasks) == 1
    await h.dispatcher.apply(ACTOR, [ClearAlarm(SIGNALS[0].dev_eui, "lamp_fault")])
    alarm = (await h.state.list("state/alarms/", operations_pb2.Alarm)).entries[0].value
    assert alarm.state == operations_pb2.CLEARED_UNACK
    audit = (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries
    assert [e.value.action for e in audit].count("alarm.raise") == 1
    assert all(e.value.epoch == 5 for e in audit)


async def test_a_refused_decision_does_not_stop_the_others() -> None:
    h = Harness()
    stranger = command_pb2.Command(
        command_id=str(uuid.uuid4()),
        asset_class=AC.TRAFFIC_SIGNAL,
        target=command_pb2.Target(dev_eui="00000000000000ff"),
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
    )
    raise_it = RaiseAlarm(SIGNALS[0].dev_eui, "lamp_fault", operations_pb2.MINOR, "no light")
    await h.dispatcher.apply(ACTOR, [IssueCommand(stranger, reason="x"), raise_it])
    assert len((await h.state.list("state/alarms/", operations_pb2.Alarm)).entries) == 1


# --- operators' actions -------------------------------------------------------------------


async def _ledger(h: Harness) -> list[control_state_pb2.CommandRecord]:
    return [
        e.value for e in (await h.state.list("ledger/", control_state_pb2.CommandRecord)).entries
    ]


async def test_the_same_idempotency_key_issues_once_even_when_concurrent() -> None:
    h = Harness()
    first = await h.dispatcher.issue_command(
        _group_command(), issued_by="op-claire", idempotency_key="k1"
    )
    again = await h.dispatcher.issue_command(
        _group_command(), issued_by="op-claire", idempotency_key="k1"
    )
    assert again.command.command_id == first.command.command_id
    assert len(await _ledger(h)) == 1 and len(h.sent) == 3
    a, b = await asyncio.gather(
        h.dispatcher.issue_command(_group_command(), issued_by="op-claire", idempotency_key="k2"),
        h.dispatcher.issue_command(_group_command(), issued_by="op-claire", idempotency_key="k2"),
    )
    assert a.command.command_id == b.command.command_id
    assert len(await _ledger(h)) == 2 and len(h.sent) == 6
    index = await h.state.get(idempotency_index_key("k2"), control_state_pb2.IdempotencyRecord)
    assert index is not None and index.result_key == ledger_key(a.command.command_id)
    assert index.actor == "op-claire"
    with pytest.raises(InvalidArgumentError, match="idempotency_key"):
        await h.dispatcher.issue_command(
            _group_command(), issued_by="op-bruno", idempotency_key="k1"
        )  # another operator's key


async def test_an_override_ended_early_is_handed_back_and_a_group_holds_one_override() -> None:
    h = Harness()
    held = await h.dispatcher.set_override(
        control_state_pb2.Override(
            asset_class=AC.TRAFFIC_SIGNAL,
            group="talant",
            action=_group_command(),
            ends_at_ms=h.clock.now + 600_000,
        ),
        set_by="op-claire",
        idempotency_key="o1",
    )
    with pytest.raises(FailedPreconditionError, match="already held"):
        await h.dispatcher.set_override(held, set_by="op-claire", idempotency_key="o2")
    h.clock.now += 1_000
    ended = await h.dispatcher.end_override(
        held.override_id, ended_by="op-claire", idempotency_key="e1"
    )
    assert ended.ends_at_ms == h.clock.now
    assert h.dispatcher.override_for(AC.TRAFFIC_SIGNAL, "talant") is None
    assert [o.override_id for o in h.dispatcher.expired_overrides()] == [held.override_id]
    again = await h.dispatcher.end_override(
        held.override_id, ended_by="op-claire", idempotency_key="e1"
    )
    assert again == ended  # a retry answers, it does not refuse
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await h.dispatcher.end_override(held.override_id, ended_by="op-claire")
    with pytest.raises(NotFoundError):
        await h.dispatcher.end_override("nope", ended_by="op-claire")
    audit = (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries
    assert [(e.value.action, e.value.actor) for e in audit if e.value.action == "override.end"] == [
        ("override.end", "op-claire")
    ]


async def test_operators_acknowledge_and_clear_alarms_with_audit() -> None:
    h = Harness()
    raise_it = RaiseAlarm(SIGNALS[0].dev_eui, "lamp_fault", operations_pb2.MINOR, "no light")
    await h.dispatcher.apply(ACTOR, [raise_it])
    assert h.dispatcher.active_alarm_counts() == {SIGNALS[0].dev_eui: 1}
    [alarm] = [e.value for e in (await h.state.list("state/alarms/", operations_pb2.Alarm)).entries]
    acked = await h.dispatcher.acknowledge_alarm(
        alarm.alarm_id, operator="op-claire", comment="seen"
    )
    assert acked.state == operations_pb2.ACTIVE_ACK and acked.acknowledged_by == "op-claire"
    with pytest.raises(FailedPreconditionError, match="already acknowledged"):
        await h.dispatcher.acknowledge_alarm(alarm.alarm_id, operator="op-claire")
    cleared = await h.dispatcher.clear_alarm(alarm.alarm_id, operator="op-claire")
    assert cleared.state == operations_pb2.CLEARED_ACK
    assert h.dispatcher.active_alarm_counts() == {}
    with pytest.raises(NotFoundError, match="alarm 'x' does not exist"):
        await h.dispatcher.clear_alarm("x", operator="op-claire")
    # The policy raising the fault again opens a new alarm: the cleared one is history.
    await h.dispatcher.apply(ACTOR, [raise_it])
    assert h.dispatcher.active_alarm_counts() == {SIGNALS[0].dev_eui: 1}
    audit = [e.value for e in (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries]
    ack = next(e for e in audit if e.action == "alarm.ack")
    assert ack.actor == "op-claire" and ack.detail.endswith(": seen")
    assert any(e.action == "alarm.clear" and e.actor == "op-claire" for e in audit)


async def test_an_operator_incident_and_its_tasks_are_one_transaction() -> None:
    h = Harness()
    before = await h.state.revision()
    incident = await h.dispatcher.open_incident(
        OpenIncident(
            kind=operations_pb2.INCIDENT_DEMONSTRATION,
            source=operations_pb2.OPERATOR,
            latitude=47.32,
            longitude=5.04,
            commune="Dijon",
            detail="march on place Darcy",
            priority=3,
            originator="op-claire",
        ),
        opened_by="op-claire",
        idempotency_key="i1",
    )
    assert await h.state.revision() == before + 1
    tasks = [e.value for e in (await h.state.list("state/tasks/", operations_pb2.Task)).entries]
    assert {t.department for t in tasks} == {operations_pb2.POLICE, operations_pb2.MUNICIPAL_POLICE}
    assert {t.origin for t in tasks} == {f"incident/{incident.incident_id}"}
    again = await h.dispatcher.open_incident(
        OpenIncident(operations_pb2.INCIDENT_FIRE, operations_pb2.OPERATOR, 0, 0, "", "", 1, "x"),
        opened_by="op-claire",
        idempotency_key="i1",
    )
    assert again == incident and await h.state.revision() == before + 1


async def test_close_task_as_done_starts_an_assigned_task_and_refuses_an_open_one() -> None:
    h = Harness()
    request = RequestTask(operations_pb2.ROADS, "fill_pothole", 3, 47.33, 5.0, "", "")
    task = await h.dispatcher.create_task(request, created_by="op-claire", idempotency_key="t1")
    assert task.status == operations_pb2.OPEN
    other = await h.dispatcher.create_task(request, created_by="op-claire", idempotency_key="t2")
    assert other.task_id != task.task_id  # no origin: operators' tasks never merge
    with pytest.raises(FailedPreconditionError, match="assign it"):
        await h.dispatcher.close_task(task.task_id, operator="op-claire", cancelled=False)
    await h.dispatcher.assign_task(task.task_id, "car-7", operator="op-claire")
    done = await h.dispatcher.close_task(
        task.task_id, operator="op-claire", cancelled=False, comment="filled"
    )
    assert done.status == operations_pb2.DONE
    with pytest.raises(FailedPreconditionError):
        await h.dispatcher.close_task(task.task_id, operator="op-claire", cancelled=True)
    cancelled = await h.dispatcher.close_task(other.task_id, operator="op-claire", cancelled=True)
    assert cancelled.status == operations_pb2.CANCELLED
    with pytest.raises(NotFoundError, match="task 'x' does not exist"):
        await h.dispatcher.assign_task("x", "car-7", operator="op-claire")
    audit = [e.value for e in (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries]
    flow = [e.action for e in audit if e.target == f"task/{task.task_id}"]
    assert sorted(flow) == sorted(["task.create", "task.assign", "task.start", "task.done"])


async def test_a_standby_follows_the_leaders_writes_and_once_promoted_replays_unfinished_commands() -> (
    None
):
    leader = Harness()
    standby = Standby(leader, SIGNALS)
    await standby.start()
    record = await leader.dispatcher.issue_command(_group_command(), issued_by="op-ana")
    command_id = record.command.command_id
    alarm = RaiseAlarm(SIGNALS[0].dev_eui, "lamp_fault", operations_pb2.MAJOR, "dark")
    await leader.dispatcher.apply(ACTOR, [alarm])
    revision = await leader.state.revision()
    await standby.caught_up(revision)
    # A standby refuses operators' writes and names the leader.
    with pytest.raises(NotLeaderError) as refused:
        await standby.dispatcher.issue_command(_group_command(), issued_by="op-ana")
    assert refused.value.leader_address == "a:1"

    leader.state.set_epoch(6)  # the election: the old leader is fenced from here on
    standby.epoch = 6
    with pytest.raises(FencedError):
        await leader.dispatcher.issue_command(_group_command(), issued_by="op-ana")
    marker = await standby.dispatcher.mark_takeover("backup")
    await standby.caught_up(marker)
    assert await standby.dispatcher.replay_pending() == 1
    frames = [chirpstack.parse_downlink(payload).data for _, payload in standby.sent]
    assert len(frames) == len(SIGNALS)
    for frame in frames:
        replayed = decode_command(frame)
        assert (replayed.command_id, replayed.epoch) == (command_id, 6)
    assert (await leader.record(command_id)).command.epoch == 6
    # The alarm came over too: raising it again on the new leader changes nothing.
    before = await leader.state.revision()
    await standby.dispatcher.apply(ACTOR, [alarm])
    assert await leader.state.revision() == before
    await standby.stop()


async def test_a_new_leader_sends_once_more_what_the_old_one_had_no_attempt_left_for() -> None:
    """The old leader's last frames may still wait for airtime (a transition's multicasts
    fill the gateways): the new leader's own send and ack window, not a FAIL at once."""
    leader = Harness()  # max_attempts=2
    standby = Standby(leader, SIGNALS)
    await standby.start()
    record = await leader.dispatcher.issue_command(_flashing_signal(), issued_by="op-ana")
    command_id = record.command.command_id
    leader.clock.now += 1_000
    await leader.dispatcher.run_ledger()  # the second and last attempt
    assert (await leader.record(command_id)).attempts == 2
    leader.state.set_epoch(6)
    standby.epoch = 6
    await standby.caught_up(await standby.dispatcher.mark_takeover("backup"))
    assert await standby.dispatcher.replay_pending() == 1
    replayed = decode_command(chirpstack.parse_downlink(standby.sent[-1][1]).data)
    assert (replayed.command_id, replayed.epoch) == (command_id, 6)
    leader.clock.now += 3_000  # the old leader's ack window would have closed by now
    await standby.dispatcher.run_ledger()
    assert (await leader.record(command_id)).status == command_pb2.SENT
    await standby.dispatcher.on_acks([leader.ack(command_id, SIGNALS[0].dev_eui)])
    assert (await leader.record(command_id)).status == command_pb2.ACKED
    await standby.stop()


# --- group commands by multicast, confirmed by reported state ---------------------------------

LAMP_APP = application_id("dijon", AC.STREET_LAMP)
LAMPS = [
    Device(
        dev_eui=f"{0xC0 + i:016x}",
        name=f"lamp-{i}",
        asset_class=AC.STREET_LAMP,
        group="talant",
        commune="Talant",
        latitude=47.33,
        longitude=5.0,
        transport=assets_pb2.LORAWAN,
        application_id=LAMP_APP,
    )
    for i in range(1, 5)
]
LAMP_ACTOR = "policy:street_lamp/talant"


def lamp_harness() -> Harness:
    return Harness(SIGNALS + LAMPS)


def profile_command(profile_id: int = 7) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant"),
        set_lamp_profile=command_pb2.LampProfile(
            profile_id=profile_id,
            on_below_elevation_deg=-2.0,
            night_pct=40.0,
            boost_pct=100.0,
            boost_hold_s=120,
        ),
    )


def lamp_report(dev_eui: str, profile_id: int) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=dev_eui,
        lamp=telemetry_pb2.LampReading(brightness_pct=40.0, profile_id=profile_id),
    )


async def test_a_lamp_group_command_is_one_multicast_of_the_frame() -> None:
    h = lamp_harness()
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    assert record.multicast and record.expected_acks == len(LAMPS)
    assert record.command.priority == command_pb2.PRIORITY_OPERATOR
    ((topic, frame),) = h.sent
    assert topic == f"multicast/{LAMP_APP}/talant"
    sent = decode_command(frame)
    assert (sent.command_id, sent.epoch, sent.action) == (
        record.command.command_id,
        5,
        "set_lamp_profile",
    )


async def test_a_multicast_is_acked_once_every_lamp_reports_the_new_profile() -> None:
    h = lamp_harness()
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    command_id = record.command.command_id
    confirmations = h.dispatcher.confirmations
    confirmations.submit([lamp_report(d.dev_eui, 3) for d in LAMPS])  # the old profile
    confirmations.submit([lamp_report(d.dev_eui, 7) for d in LAMPS[:3]])
    await h.dispatcher.run_ledger()
    progress = await h.record(command_id)
    assert (progress.status, progress.acked_count) == (command_pb2.SENT, 3)
    assert len(h.sent) == 1  # a multicast is not resent: nothing acknowledges it
    confirmations.submit([lamp_report(LAMPS[3].dev_eui, 7)])
    await h.dispatcher.run_ledger()
    done = await h.record(command_id)
    assert (done.status, done.acked_count, done.straggler_count) == (command_pb2.ACKED, 4, 0)
    assert h.dispatcher.pending_commands() == 0 and confirmations.watching() == 0


async def test_at_its_deadline_a_multicast_is_partial_and_names_the_stragglers() -> None:
    h = lamp_harness()
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    h.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 7) for d in LAMPS[:3]])
    h.clock.now += 30_000
    await h.dispatcher.run_ledger()
    settled = await h.record(record.command.command_id)
    assert settled.status == command_pb2.PARTIAL
    assert (settled.acked_count, settled.straggler_count) == (3, 1)
    assert list(settled.stragglers) == [LAMPS[3].dev_eui]
    assert "3 of 4" in settled.detail


async def test_a_multicast_nobody_confirmed_expires() -> None:
    h = lamp_harness()
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    h.clock.now += 30_000
    await h.dispatcher.run_ledger()
    settled = await h.record(record.command.command_id)
    assert settled.status == command_pb2.EXPIRED and settled.straggler_count == len(LAMPS)


async def test_a_promoted_standby_resends_the_multicast_and_keeps_counting() -> None:
    leader = lamp_harness()
    standby = Standby(leader, SIGNALS + LAMPS)
    await standby.start()
    record = await leader.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    command_id = record.command.command_id
    revision = await leader.state.revision()
    await standby.caught_up(revision)
    # Both posts hear the same uplinks: the standby counts too.
    reports = [lamp_report(d.dev_eui, 7) for d in LAMPS[:2]]
    leader.dispatcher.confirmations.submit(reports)
    standby.dispatcher.confirmations.submit(reports)
    assert standby.dispatcher.confirmations.count(command_id) == 2

    leader.state.set_epoch(6)
    standby.epoch = 6
    marker = await standby.dispatcher.mark_takeover("backup")
    await standby.caught_up(marker)
    assert await standby.dispatcher.replay_pending() == 1
    ((topic, frame),) = standby.sent
    assert topic == f"multicast/{LAMP_APP}/talant"
    assert (decode_command(frame).command_id, decode_command(frame).epoch) == (command_id, 6)
    standby.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 7) for d in LAMPS[2:]])
    await standby.dispatcher.run_ledger()
    assert (await leader.record(command_id)).status == command_pb2.ACKED
    await standby.stop()


# --- what the gate or the network server says of a frame -------------------------------------


def _log(command_id: str, level: str, why: str) -> chirpstack.LogEvent:
    info = chirpstack.DeviceInfo(application_id=APP, dev_eui=SIGNALS[0].dev_eui)
    return chirpstack.LogEvent(
        None, info, level, "DOWNLINK_GATEWAY", why, {"queue_item_id": command_id}
    )


class LostReply(InMemoryControlState):
    """The next write lands but its writer gives up on it (as a post does when its lead
    ends while it writes: etcd lost its quorum, then got it back)."""

    give_up_next = False

    async def put_many(
        self,
        items: Sequence[tuple[str, Message | None]],
        *,
        epoch: int,
        absent: Sequence[str] = (),
    ) -> int:
        revision = await super().put_many(items, epoch=epoch, absent=absent)
        if self.give_up_next:
            self.give_up_next = False
            raise NotLeaderError("this post's lead ended while it was writing")
        return revision


async def _follow_own_writes(h: Harness) -> None:
    """What the leading post's watch does with its own writes, up to now."""
    target = await h.state.revision()
    async for change in h.state.watch(1):
        h.dispatcher.apply_change(change, own=True)
        if change.revision >= target:
            return


async def test_a_command_written_but_never_sent_goes_on_air_when_the_same_epoch_leads_again() -> (
    None
):
    """The write landed after the post had given up on it, so nothing was sent, and the
    operator's retry finds it written and acts no more. Back in the lead under the same
    epoch, the post sends it, and nothing that was on air already."""
    state = LostReply(epoch=5)
    h = Harness(state=state)
    await h.dispatcher.issue_command(_group_command(), issued_by="op-ana", idempotency_key="k1")
    assert len(h.sent) == len(SIGNALS)
    state.give_up_next = True
    with pytest.raises(NotLeaderError):
        await h.dispatcher.issue_command(
            _flashing_signal(), issued_by="op-ana", idempotency_key="k2"
        )
    retried = await h.dispatcher.issue_command(
        _flashing_signal(), issued_by="op-ana", idempotency_key="k2"
    )
    # Written as the first try left it (sent, one attempt), and never on air.
    assert (retried.status, retried.attempts) == (command_ledger.SENT, 1)
    assert len(h.sent) == len(SIGNALS)
    assert await h.dispatcher.replay_pending() == 0  # not held: the watch brings it

    await _follow_own_writes(h)
    assert await h.dispatcher.replay_pending() == 1
    assert len(h.sent) == len(SIGNALS) + 1
    frame = decode_command(chirpstack.parse_downlink(h.sent[-1][1]).data)
    assert (frame.command_id, frame.epoch) == (retried.command.command_id, 5)
    assert await h.dispatcher.replay_pending() == 0  # on air now
    assert (await h.record(retried.command.command_id)).attempts == 2


def _flashing_signal() -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.TRAFFIC_SIGNAL,
        target=command_pb2.Target(dev_eui=SIGNALS[0].dev_eui),
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
    )


async def _waiting_signal(h: Harness) -> str:
    """A one-device command the network server says waits for airtime; its id."""
    record = await h.dispatcher.issue_command(_flashing_signal(), issued_by="op-claire")
    command_id = record.command.command_id
    await h.dispatcher.on_acks([_log(command_id, "WARNING", "DUTY_CYCLE_OVERFLOW: waiting")])
    return command_id


async def test_a_refusal_fails_a_one_device_command_at_once_with_its_reason() -> None:
    h = Harness()
    command_id = await _waiting_signal(h)
    waiting = await h.record(command_id)
    assert waiting.status == command_pb2.SENT
    assert waiting.waiting == "DOWNLINK_GATEWAY: DUTY_CYCLE_OVERFLOW: waiting"
    why = "DUTY_CYCLE_OVERFLOW: no airtime before its deadline"
    await h.dispatcher.on_acks([_log(command_id, "ERROR", why)])
    failed = await h.record(command_id)
    assert failed.status == command_pb2.FAILED and why in failed.detail
    assert h.dispatcher.pending_commands() == 0
    # A log about a finished or unknown command changes nothing.
    await h.dispatcher.on_acks([_log(command_id, "ERROR", "late"), _log("nope", "ERROR", "x")])
    assert (await h.record(command_id)).detail == failed.detail


async def test_halfway_to_its_deadline_a_multicast_goes_again_by_unicast_to_the_stragglers() -> (
    None
):
    h = lamp_harness()
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    command_id = record.command.command_id
    h.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 7) for d in LAMPS[:2]])
    h.clock.now += 14_000
    await h.dispatcher.run_ledger()
    assert len(h.sent) == 1  # not yet halfway
    h.clock.now += 1_000
    await h.dispatcher.run_ledger()
    retried = [chirpstack.parse_downlink(payload) for _, payload in h.sent[1:]]
    assert sorted(d.dev_eui for d in retried) == sorted(d.dev_eui for d in LAMPS[2:])
    assert {d.id for d in retried} == {command_id}  # the same command: devices run it once
    # Their acks do not count: only the state they report does.
    await h.dispatcher.on_acks([h.ack(command_id, d.dev_eui) for d in LAMPS[2:]])
    assert (await h.record(command_id)).status == command_pb2.SENT
    h.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 7) for d in LAMPS[2:]])
    await h.dispatcher.run_ledger()
    assert (await h.record(command_id)).status == command_pb2.ACKED
    h.clock.now += 15_000
    await h.dispatcher.run_ledger()
    assert len(h.sent) == 3  # nothing more after the one retry


async def test_a_command_confirmed_by_reports_lasts_at_least_two_of_the_slowest_reports() -> None:
    slow = [
        Device(
            d.dev_eui,
            d.name,
            d.asset_class,
            d.group,
            d.commune,
            d.latitude,
            d.longitude,
            d.transport,
            d.application_id,
            report_interval_s=900.0,
        )
        for d in LAMPS
    ]
    h = Harness(SIGNALS + slow)

    def dispatcher(report_wall_per_sim_s: float) -> Dispatcher:
        return Dispatcher(
            state=h.state,
            registry=DeviceRegistry(SIGNALS + slow),
            publish=lambda d: h.sent.append((d.topic, d.payload)),
            epoch=lambda: 5,
            wall_ms=h.clock,
            command_ttl_ms=30_000,
            report_wall_per_sim_s=report_wall_per_sim_s,
        )

    h.dispatcher = dispatcher(1 / 60)  # the city at x60: 900 s of its time is 15 s here
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    assert record.command.ttl_ms == 30_000  # two reports (30 s) fit the TTL already
    realtime = dispatcher(1.0)  # the city in real time: a lamp reports every 15 min
    record = await realtime.issue_command(profile_command(8), issued_by=LAMP_ACTOR)
    assert record.command.ttl_ms == 1_800_000
    assert record.deadline_ms - record.created_at_ms == 1_800_000
    one = _flashing_signal()
    assert (await realtime.issue_command(one, issued_by="op")).command.ttl_ms == 30_000


async def test_when_many_did_not_confirm_the_retry_is_the_multicast_again() -> None:
    many = [
        Device(
            f"{0xD000 + i:016x}",
            f"lamp-{i}",
            AC.STREET_LAMP,
            "talant",
            "Talant",
            47.33,
            5.0,
            assets_pb2.LORAWAN,
            LAMP_APP,
        )
        for i in range(MAX_STRAGGLER_UNICASTS + 5)
    ]
    h = Harness(SIGNALS + many)
    record = await h.dispatcher.issue_command(profile_command(), issued_by=LAMP_ACTOR)
    h.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 7) for d in many[:4]])
    h.clock.now += 15_000
    await h.dispatcher.run_ledger()
    assert [topic for topic, _ in h.sent] == [f"multicast/{LAMP_APP}/talant"] * 2
    assert decode_command(h.sent[1][1]).command_id == record.command.command_id


async def test_a_newer_profile_supersedes_the_unconfirmed_one_which_is_never_sent_again() -> None:
    h = lamp_harness()
    evening = await h.dispatcher.issue_command(profile_command(7), issued_by=LAMP_ACTOR)
    # The lamps ran the evening profile and the night one before they next reported:
    # their reports show only the night one.
    night = await h.dispatcher.issue_command(profile_command(8), issued_by=LAMP_ACTOR)
    old = await h.record(evening.command.command_id)
    assert old.status == command_pb2.SUPERSEDED
    assert night.command.command_id in old.detail
    h.dispatcher.confirmations.submit([lamp_report(d.dev_eui, 8) for d in LAMPS])
    h.clock.now += 15_000  # past the evening one's halfway retry
    await h.dispatcher.run_ledger()
    assert [t for t, _ in h.sent] == [f"multicast/{LAMP_APP}/talant"] * 2  # no re-send
    assert (await h.record(night.command.command_id)).status == command_pb2.ACKED
    assert h.dispatcher.pending_commands() == 0
    audit = (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries
    assert [e.value.action for e in audit].count("command.supersede") == 1


async def test_a_frame_the_network_server_holds_is_not_resent_and_expires_saying_why() -> None:
    h = Harness()
    command_id = await _waiting_signal(h)
    for _ in range(29):  # the whole TTL but its last second: no retry, no failure
        h.clock.now += 1_000
        await h.dispatcher.run_ledger()
    assert len(h.sent) == 1
    assert (await h.record(command_id)).status == command_pb2.SENT
    h.clock.now += 1_000
    await h.dispatcher.run_ledger()
    expired = await h.record(command_id)
    assert expired.status == command_pb2.EXPIRED
    assert "DUTY_CYCLE_OVERFLOW" in expired.detail


async def test_a_held_frame_acknowledged_later_is_acked() -> None:
    h = Harness()
    command_id = await _waiting_signal(h)
    h.clock.now += 10_000
    await h.dispatcher.run_ledger()
    await h.dispatcher.on_acks([h.ack(command_id, SIGNALS[0].dev_eui)])
    assert (await h.record(command_id)).status == command_pb2.ACKED
    assert len(h.sent) == 1


def _count_writes(h: Harness) -> list[int]:
    """Sizes of the transactions the dispatcher writes from now on."""
    sizes: list[int] = []
    put_many = h.state.put_many

    async def counting(items, *, epoch, absent=()):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return await put_many(items, epoch=epoch, absent=absent)

    h.state.put_many = counting  # type: ignore[method-assign]
    return sizes


def _one_signal(dev_eui: str, n: int) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.TRAFFIC_SIGNAL,
        target=command_pb2.Target(dev_eui=dev_eui),
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
        command_id=str(uuid.UUID(int=n + 1)),
    )


async def test_a_ledger_pass_and_a_batch_of_acks_write_a_few_transactions_not_one_per_command() -> (
    None
):
    # On a slow link to etcd each transaction is a round trip under the dispatcher's
    # lock: 90 commands due at once go in ceil(90 / LEDGER_BATCH) of them.
    h = Harness()
    for n in range(90):
        await h.dispatcher.issue_command(_one_signal(SIGNALS[n % 3].dev_eui, n), issued_by="op")
    sizes = _count_writes(h)
    h.clock.now += 20_000
    await h.dispatcher.run_ledger()
    assert len(h.sent) == 180  # each sent again
    assert len(sizes) == -(-90 // LEDGER_BATCH)
    assert all(size <= 128 for size in sizes)  # etcd's operations per transaction
    assert {(await h.record(str(uuid.UUID(int=n + 1)))).attempts for n in range(90)} == {2}
    sizes.clear()
    acks = [h.ack(str(uuid.UUID(int=n + 1)), SIGNALS[n % 3].dev_eui) for n in range(30)]
    await h.dispatcher.on_acks(acks + acks[:5])  # five acked twice
    assert len(sizes) == 1
    assert {(await h.record(str(uuid.UUID(int=n + 1)))).status for n in range(30)} == {
        command_pb2.ACKED
    }
    assert h.dispatcher.pending_commands() == 60


async def test_a_command_is_in_the_ledger_as_sent_in_one_transaction_before_its_frames_go_out() -> (
    None
):
    h = Harness()
    sizes = _count_writes(h)
    written_before: list[int] = []

    def publish(downlink):  # type: ignore[no-untyped-def]
        written_before.append(len(sizes))

    h.dispatcher._publish = publish  # type: ignore[method-assign]
    record = await h.dispatcher.issue_command(
        _group_command(), issued_by="op-claire", idempotency_key="k-1"
    )
    assert written_before == [1, 1, 1]  # three frames, each after the one transaction
    assert len(sizes) == 1  # queued and sent: one round trip to etcd
    stored = await h.record(record.command.command_id)
    assert stored.status == command_pb2.SENT and stored.attempts == 1
    entries = await h.state.list("audit/", control_state_pb2.AuditEntry)
    command_target = f"command/{record.command.command_id}"
    actions = sorted(e.value.action for e in entries.entries if e.value.target == command_target)
    assert actions == ["command.issue", "command.send"]


async def test_the_same_nack_twice_in_one_batch_is_one_audit_entry_and_the_batch_is_written() -> (
    None
):
    h = Harness()
    record = await h.dispatcher.issue_command(_one_signal(SIGNALS[0].dev_eui, 7), issued_by="op")
    command_id = record.command.command_id
    nack = h.ack(command_id, SIGNALS[0].dev_eui, acknowledged=False)
    await h.dispatcher.on_acks([nack, nack])
    entries = await h.state.list("audit/", control_state_pb2.AuditEntry)
    nacks = [e for e in entries.entries if e.value.action == "command.nack"]
    assert len(nacks) == 1


# --- shelving --------------------------------------------------------------------------------


async def _raised_alarm(
    h: Harness, dev_eui: str, severity: operations_pb2.Severity.ValueType = operations_pb2.MINOR
) -> operations_pb2.Alarm:
    await h.dispatcher.apply(ACTOR, [RaiseAlarm(dev_eui, "lamp_fault", severity, "dark")])
    alarms = (await h.state.list("state/alarms/", operations_pb2.Alarm)).entries
    [alarm] = [e.value for e in alarms if e.value.originator == dev_eui and e.value.state in ACTIVE]
    return alarm


async def _audit_of(h: Harness, alarm_id: str) -> list[control_state_pb2.AuditEntry]:
    entries = (await h.state.list("audit/", control_state_pb2.AuditEntry)).entries
    return [e.value for e in entries if e.value.target == f"alarm/{alarm_id}"]


async def test_operators_shelve_and_unshelve_alarms_with_audit() -> None:
    h = Harness()
    alarm = await _raised_alarm(h, SIGNALS[0].dev_eui)
    got = await h.dispatcher.shelve_alarm(
        alarm.alarm_id,
        operator="op-claire",
        minutes=30,
        reason="crew on site",
        max_minutes=ShelveLimits(),
    )
    assert got.shelved_until_ms == h.clock.now + 30 * 60_000
    assert (got.shelved_by, got.shelve_reason) == ("op-claire", "crew on site")
    assert await h.state.get(alarm_key(alarm.alarm_id), operations_pb2.Alarm) == got
    # Still active: counted on its device, and a policy's raise of it updates this alarm.
    assert h.dispatcher.active_alarm_counts() == {SIGNALS[0].dev_eui: 1}
    with pytest.raises(FailedPreconditionError, match="already shelved by op-claire"):
        await h.dispatcher.shelve_alarm(
            alarm.alarm_id, operator="op-ana", minutes=5, reason="x", max_minutes=ShelveLimits()
        )
    back = await h.dispatcher.unshelve_alarm(alarm.alarm_id, operator="op-ana", comment="done")
    assert (back.shelved_until_ms, back.shelved_by, back.shelve_reason) == (0, "", "")
    assert back.state == operations_pb2.ACTIVE_UNACK
    with pytest.raises(FailedPreconditionError, match="is not shelved"):
        await h.dispatcher.unshelve_alarm(alarm.alarm_id, operator="op-ana")
    notes = await _audit_of(h, alarm.alarm_id)
    shelve = next(e for e in notes if e.action == "alarm.shelve")
    assert shelve.actor == "op-claire" and shelve.detail.endswith(": crew on site")
    unshelve = next(e for e in notes if e.action == "alarm.unshelve")
    assert unshelve.actor == "op-ana" and unshelve.detail.startswith("unshelved by op-ana")
    assert unshelve.detail.endswith(": done")  # the operator's comment


async def test_a_shelve_is_refused_past_the_severitys_maximum_or_without_reason_or_alarm() -> None:
    h = Harness()
    alarm = await _raised_alarm(h, SIGNALS[0].dev_eui, operations_pb2.CRITICAL)
    limits = ShelveLimits(critical=10)

    async def shelve(minutes: float, reason: str = "why", alarm_id: str = alarm.alarm_id) -> None:
        await h.dispatcher.shelve_alarm(
            alarm_id, operator="op-claire", minutes=minutes, reason=reason, max_minutes=limits
        )

    with pytest.raises(InvalidArgumentError, match="CRITICAL alarm may be shelved for at most 10"):
        await shelve(10.5)
    with pytest.raises(InvalidArgumentError, match="reason: required"):
        await shelve(5, reason=" ")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="minutes"):
            await shelve(bad)
    with pytest.raises(NotFoundError, match="alarm 'x' does not exist"):
        await shelve(5, alarm_id="x")
    cleared = await h.dispatcher.clear_alarm(alarm.alarm_id, operator="op-claire")
    with pytest.raises(FailedPreconditionError, match="cannot shelve when CLEARED_UNACK"):
        await shelve(5)
    assert cleared.shelved_until_ms == 0
    assert not [e for e in await _audit_of(h, alarm.alarm_id) if e.action == "alarm.shelve"]


async def test_shelves_whose_time_is_up_come_back_by_themselves_audited_as_the_system() -> None:
    h = Harness()
    short = await _raised_alarm(h, SIGNALS[0].dev_eui)
    long = await _raised_alarm(h, SIGNALS[1].dev_eui)
    gone = await _raised_alarm(h, SIGNALS[2].dev_eui)
    start = h.clock.now
    for alarm, minutes in ((short, 5), (long, 60), (gone, 5)):
        await h.dispatcher.shelve_alarm(
            alarm.alarm_id,
            operator="op-claire",
            minutes=minutes,
            reason="works",
            max_minutes=ShelveLimits(),
        )
    # A shelved alarm whose cause went: a cleared alarm, nothing to unshelve.
    await h.dispatcher.apply(ACTOR, [ClearAlarm(SIGNALS[2].dev_eui, "lamp_fault")])
    assert await h.dispatcher.unshelve_expired() == 0
    before = await h.state.revision()
    h.clock.now = start + 5 * 60_000 - 1
    assert await h.dispatcher.unshelve_expired() == 0
    assert await h.state.revision() == before  # nothing due, nothing written
    h.clock.now = start + 5 * 60_000
    assert await h.dispatcher.unshelve_expired() == 1
    stored = await h.state.get(alarm_key(short.alarm_id), operations_pb2.Alarm)
    assert stored is not None and stored.shelved_until_ms == 0 and stored.shelved_by == ""
    [note] = [e for e in await _audit_of(h, short.alarm_id) if e.action == "alarm.unshelve"]
    assert note.actor == "system" and note.detail.startswith("shelve time is up")
    assert note.at_ms == start + 5 * 60_000
    assert await h.dispatcher.unshelve_expired() == 0  # once
    h.clock.now = start + 61 * 60_000
    assert await h.dispatcher.unshelve_expired() == 1
    cleared = await h.state.get(alarm_key(gone.alarm_id), operations_pb2.Alarm)
    assert cleared is not None and cleared.state == operations_pb2.CLEARED_UNACK
    assert not [e for e in await _audit_of(h, gone.alarm_id) if e.action == "alarm.unshelve"]
    # Back in the book as unshelved: an operator may shelve it again at once.
    again = await h.dispatcher.shelve_alarm(
        short.alarm_id, operator="op-ana", minutes=1, reason="again", max_minutes=ShelveLimits()
    )
    assert again.shelved_by == "op-ana"


async def test_a_policy_raising_a_shelved_alarm_to_a_worse_severity_ends_its_shelve() -> None:
    h = Harness()
    alarm = await _raised_alarm(h, SIGNALS[0].dev_eui, operations_pb2.MINOR)
    await h.dispatcher.shelve_alarm(
        alarm.alarm_id, operator="op-claire", minutes=60, reason="w", max_minutes=ShelveLimits()
    )
    worse = await _raised_alarm(h, SIGNALS[0].dev_eui, operations_pb2.MAJOR)
    assert worse.alarm_id == alarm.alarm_id and worse.shelved_until_ms == 0
    h.clock.now += 61 * 60_000
    assert await h.dispatcher.unshelve_expired() == 0  # nothing left to bring back
    update = [e for e in await _audit_of(h, alarm.alarm_id) if e.action == "alarm.update"]
    assert len(update) == 1 and "shelve ended: severity rose" in update[0].detail


async def test_the_same_key_shelves_once_even_when_concurrent_and_is_not_reused_elsewhere() -> None:
    h = Harness()
    alarm = await _raised_alarm(h, SIGNALS[0].dev_eui)
    other = await _raised_alarm(h, SIGNALS[1].dev_eui)

    async def shelve(operator: str = "op-claire", alarm_id: str = alarm.alarm_id) -> object:
        return await h.dispatcher.shelve_alarm(
            alarm_id,
            operator=operator,
            minutes=10,
            reason="crew",
            max_minutes=ShelveLimits(),
            idempotency_key="s-1",
        )

    first, second = await asyncio.gather(shelve(), shelve())
    assert first == second
    assert await h.state.get(idempotency_index_key("s-1"), control_state_pb2.IdempotencyRecord)
    notes = [e for e in await _audit_of(h, alarm.alarm_id) if e.action == "alarm.shelve"]
    assert len(notes) == 1
    # A retry after the shelve ended answers with the alarm as it is now, and acts no more.
    h.clock.now += 10 * 60_000
    assert await h.dispatcher.unshelve_expired() == 1
    retried = await shelve()
    assert isinstance(retried, operations_pb2.Alarm) and retried.shelved_until_ms == 0
    for refused in (shelve(alarm_id=other.alarm_id), shelve(operator="op-ana")):
        with pytest.raises(InvalidArgumentError, match="already used for another request"):
            await refused
    # Unshelving takes its own key in the same way.
    await h.dispatcher.shelve_alarm(
        other.alarm_id, operator="op-claire", minutes=5, reason="r", max_minutes=ShelveLimits()
    )
    one, two = await asyncio.gather(
        h.dispatcher.unshelve_alarm(other.alarm_id, operator="op-claire", idempotency_key="u-1"),
        h.dispatcher.unshelve_alarm(other.alarm_id, operator="op-claire", idempotency_key="u-1"),
    )
    assert one == two and one.shelved_until_ms == 0
    notes = [e for e in await _audit_of(h, other.alarm_id) if e.action == "alarm.unshelve"]
    assert len(notes) == 1


async def test_a_promoted_standby_brings_back_the_shelves_the_old_leader_made() -> None:
    leader = Harness()
    standby = Standby(leader, SIGNALS)
    await standby.start()
    alarm = await _raised_alarm(leader, SIGNALS[0].dev_eui)
    await leader.dispatcher.shelve_alarm(
        alarm.alarm_id, operator="op-claire", minutes=5, reason="w", max_minutes=ShelveLimits()
    )
    await standby.caught_up(await leader.state.revision())
    leader.clock.now += 5 * 60_000
    with pytest.raises(NotLeaderError):
        await standby.dispatcher.unshelve_expired()  # a standby writes nothing
    leader.state.set_epoch(6)
    standby.epoch = 6
    assert await standby.dispatcher.unshelve_expired() == 1
    stored = await leader.state.get(alarm_key(alarm.alarm_id), operations_pb2.Alarm)
    assert stored is not None and stored.shelved_until_ms == 0
    await standby.stop()
