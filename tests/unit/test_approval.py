"""The two-person rule: which commands are dangerous, who may decide, and the ledger's
PENDING_APPROVAL -> QUEUED / REJECTED / EXPIRED through the dispatcher."""

from __future__ import annotations

import pytest

from bridges import chirpstack
from citypost.errors import FailedPreconditionError, NotFoundError, PermissionDeniedError
from failover.control_state import ALARMS, AUDIT, list_all
from post import command_ledger
from post.dispatcher import EMERGENCY_ALARM
from protos.citypost.v1 import (
    assets_pb2,
    command_pb2,
    control_state_pb2,
    operations_pb2,
    telemetry_pb2,
)
from security.approval import Approver, Danger, check_approver, danger_of
from tests.unit.test_dispatcher import SIGNALS, Harness, Standby

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

AC = assets_pb2.AssetClass
WINDOW_MS = 300_000


def _flash(group: str = "talant") -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.TRAFFIC_SIGNAL,
        target=command_pb2.Target(group=group),
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
    )


def _bollards(position: int, *, group: str = "", dev_eui: str = "") -> command_pb2.Command:
    target = command_pb2.Target(group=group) if group else command_pb2.Target(dev_eui=dev_eui)
    return command_pb2.Command(
        asset_class=AC.BOLLARD,
        target=target,
        set_bollard_position=command_pb2.SetBollardPosition(position=position),  # type: ignore[arg-type]
    )


def _lamps(pct: float) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant-1"),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


# --- which commands are dangerous ---------------------------------------------------------


def test_whole_sectors_of_bollards_dark_lamps_and_flashing_signals_are_dangerous() -> None:
    assert "lowers all 12 bollards of sector old-town" in danger_of(
        _bollards(telemetry_pb2.LOWERED, group="old-town"), 12
    )
    assert "emergency vehicles are locked out" in danger_of(
        _bollards(telemetry_pb2.RAISED, group="old-town"), 12
    )
    assert "switches off all 40 lamps" in danger_of(_lamps(0), 40)
    profile = command_pb2.Command(
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(group="talant-1"),
        set_lamp_profile=command_pb2.LampProfile(profile_id=3, night_pct=0, boost_pct=50),
    )
    assert "switches off" in danger_of(profile, 40)
    assert "flashing amber" in danger_of(_flash(), 3)
    one_signal = _flash()
    one_signal.target.dev_eui = "00000000000000aa"
    assert "a signal in flashing amber" in danger_of(one_signal, 1)


def test_one_bollard_dimmed_lamps_and_disabled_dangers_need_no_second_person() -> None:
    assert danger_of(_bollards(telemetry_pb2.LOWERED, dev_eui="00000000000000aa"), 1) == ""
    assert danger_of(_lamps(30), 40) == ""
    assert danger_of(_flash(), 3, enforced={Danger.LAMPS_OFF_GROUP}) == ""
    assert danger_of(_lamps(0), 40, enforced={Danger.LAMPS_OFF_GROUP}) != ""


def _check(approver: str, roles: set[str], *, approve: bool, command: bool, rule: Approver) -> None:
    check_approver(
        requester="police-1",
        requester_roles=["municipal-police"],
        approver=approver,
        approver_roles=roles,
        may_approve=approve,
        may_command_class=command,
        rule=rule,
    )


def test_the_requester_never_approves_their_own_command() -> None:
    with pytest.raises(FailedPreconditionError, match="second person"):
        _check("police-1", {"supervisor"}, approve=True, command=True, rule=Approver.SAME_ROLE)


def test_who_may_be_the_second_person_follows_the_configured_rule() -> None:
    _check("boss", {"supervisor"}, approve=True, command=True, rule=Approver.SUPERVISOR)
    with pytest.raises(PermissionDeniedError, match=r"commands\.approve"):
        _check(
            "police-2", {"municipal-police"}, approve=False, command=True, rule=Approver.SUPERVISOR
        )
    _check("police-2", {"municipal-police"}, approve=False, command=True, rule=Approver.SAME_ROLE)
    # Same role but not allowed to send this class's commands, or another role: refused.
    with pytest.raises(PermissionDeniedError):
        _check(
            "police-2", {"municipal-police"}, approve=False, command=False, rule=Approver.SAME_ROLE
        )
    with pytest.raises(PermissionDeniedError, match="municipal-police"):
        _check(
            "lamps-1", {"urban-supervision"}, approve=False, command=True, rule=Approver.SAME_ROLE
        )


# --- the ledger ---------------------------------------------------------------------------


def _pending(now: int = 1_000) -> control_state_pb2.CommandRecord:
    command = _flash()
    command.command_id = "c-1"
    approval = control_state_pb2.Approval(danger="d", approve_by_ms=now + WINDOW_MS)
    return command_ledger.new_record(command, 60_000, 3, now, approval=approval)


def test_a_pending_command_waits_then_expires_unsent_at_its_approval_deadline() -> None:
    record = _pending()
    assert record.status == command_ledger.PENDING_APPROVAL
    assert record.deadline_ms == 1_000 + WINDOW_MS
    assert command_ledger.decide(record, 2_000) is command_ledger.Action.WAIT
    assert command_ledger.next_wake_ms(record) == 1_000 + WINDOW_MS
    with pytest.raises(FailedPreconditionError):
        command_ledger.on_sent(record, 2_000)
    assert command_ledger.decide(record, 1_000 + WINDOW_MS) is command_ledger.Action.EXPIRE
    expired = command_ledger.expire(record, 1_000 + WINDOW_MS)
    assert expired.status == command_ledger.EXPIRED and "nobody approved" in expired.detail


def test_approval_starts_the_ttl_and_a_late_or_second_decision_is_refused() -> None:
    record = _pending()
    approved = command_ledger.approve(record, "boss", 100_000, "ok")
    assert approved.status == command_ledger.QUEUED
    assert approved.deadline_ms == 100_000 + 60_000  # the TTL counts from the approval
    assert approved.approval.decided_by == "boss"
    assert command_ledger.decide(approved, 100_000) is command_ledger.Action.RESEND
    with pytest.raises(FailedPreconditionError, match="decided by boss"):
        command_ledger.reject(approved, "boss", 100_001, "no")
    with pytest.raises(FailedPreconditionError, match="too late"):
        command_ledger.approve(record, "boss", 1_000 + WINDOW_MS)
    rejected = command_ledger.reject(record, "boss", 5_000, "not now")
    assert rejected.status == command_ledger.REJECTED and command_ledger.is_terminal(rejected)
    assert "rejected by boss: not now" in rejected.detail


# --- through the dispatcher ---------------------------------------------------------------


def _approval(h: Harness) -> control_state_pb2.Approval:
    return control_state_pb2.Approval(
        danger="flashing", approve_by_ms=h.clock.now + WINDOW_MS, requester_roles=["traffic"]
    )


async def _audit_actions(h: Harness) -> list[str]:
    return [e.value.action for e in await list_all(h.state, AUDIT, control_state_pb2.AuditEntry)]


async def test_a_dangerous_command_goes_on_air_only_once_approved() -> None:
    h = Harness()
    record = await h.dispatcher.issue_command(_flash(), issued_by="op-1", approval=_approval(h))
    command_id = record.command.command_id
    assert record.status == command_pb2.PENDING_APPROVAL and h.sent == []
    h.clock.now += 10_000
    await h.dispatcher.run_ledger()
    assert h.sent == [] and (await h.record(command_id)).status == command_pb2.PENDING_APPROVAL

    refused: list[str] = []

    def no(record: control_state_pb2.CommandRecord) -> None:
        refused.append(record.issued_by)
        raise PermissionDeniedError("not you", "commands.approve")

    with pytest.raises(PermissionDeniedError):
        await h.dispatcher.decide_approval(command_id, approve=True, by="op-2", check=no)
    assert refused == ["op-1"] and h.sent == []
    sent = await h.dispatcher.decide_approval(command_id, approve=True, by="boss")
    assert sent.status == command_pb2.SENT and sent.approval.decided_by == "boss"
    assert len(h.sent) == 3  # one frame per signal, now
    assert {chirpstack.parse_downlink(p).id for _, p in h.sent} == {command_id}
    actions = await _audit_actions(h)
    assert actions.count("command.approval_ask") == 1 and actions.count("command.approve") == 1


async def test_a_rejected_command_is_never_sent_and_an_undecided_one_expires() -> None:
    h = Harness()
    first = await h.dispatcher.issue_command(_flash(), issued_by="op-1", approval=_approval(h))
    rejected = await h.dispatcher.decide_approval(
        first.command.command_id, approve=False, by="boss", reason="no event tonight"
    )
    assert rejected.status == command_pb2.REJECTED
    second = await h.dispatcher.issue_command(_flash(), issued_by="op-1", approval=_approval(h))
    h.clock.now += WINDOW_MS
    await h.dispatcher.run_ledger()
    expired = await h.record(second.command.command_id)
    assert expired.status == command_pb2.EXPIRED and "nobody approved" in expired.detail
    with pytest.raises(FailedPreconditionError, match="EXPIRED"):
        await h.dispatcher.decide_approval(second.command.command_id, approve=True, by="boss")
    with pytest.raises(NotFoundError):
        await h.dispatcher.decide_approval("no-such-command", approve=True, by="boss")
    assert h.sent == [] and h.dispatcher.pending_commands() == 0


async def test_a_new_leader_keeps_a_pending_command_waiting_and_can_approve_it() -> None:
    leader = Harness()
    standby = Standby(leader, SIGNALS)
    await standby.start()
    record = await leader.dispatcher.issue_command(
        _flash(), issued_by="op-1", approval=_approval(leader)
    )
    await standby.caught_up(await leader.state.revision())
    leader.state.set_epoch(6)  # the election
    standby.epoch = 6
    assert await standby.dispatcher.replay_pending() == 0
    assert standby.sent == []
    sent = await standby.dispatcher.decide_approval(
        record.command.command_id, approve=True, by="boss"
    )
    assert sent.command.epoch == 6 and len(standby.sent) == 3
    await standby.stop()


async def test_an_emergency_goes_at_once_raises_an_alarm_and_is_marked_in_the_audit() -> None:
    h = Harness()
    approval = control_state_pb2.Approval(danger="flashing", emergency=True)
    record = await h.dispatcher.issue_command(
        _flash(), issued_by="op-1", approval=approval, reason="crash at the junction"
    )
    assert record.status == command_pb2.SENT and len(h.sent) == 3
    assert record.approval.emergency
    alarm = h.dispatcher._alarms.active(f"command/{record.command.command_id}", EMERGENCY_ALARM)
    assert alarm is not None and alarm.severity == operations_pb2.CRITICAL
    assert "op-1 sent without approval" in alarm.detail
    stored = await list_all(h.state, ALARMS, operations_pb2.Alarm)
    assert [a.value.alarm_id for a in stored] == [alarm.alarm_id]
    actions = await _audit_actions(h)
    assert "command.emergency" in actions and "alarm.raise" in actions
