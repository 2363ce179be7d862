"""The alarm lifecycle: one active alarm per (originator, type), every change audited."""

from __future__ import annotations

import pytest

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import alarm_book as book
from post import audit
from post.alarm_book import ACTIVE_ACK, ACTIVE_UNACK, CLEARED_ACK, CLEARED_UNACK, AlarmIndex
from protos.citypost.v1 import assets_pb2, operations_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T0 = 1_700_000_000_000
LAMP = "70b3d57ed0000001"
MINOR, MAJOR, CRITICAL = operations_pb2.MINOR, operations_pb2.MAJOR, operations_pb2.CRITICAL
EMPTY = AlarmIndex()


def raised(severity: operations_pb2.Severity.ValueType = MINOR) -> operations_pb2.Alarm:
    return book.raise_alarm(
        EMPTY,
        LAMP,
        "lamp_fault",
        severity,
        "driver fault",
        T0,
        asset_class=assets_pb2.STREET_LAMP,
        group="talant",
    ).alarm


def test_a_first_raise_opens_an_unacknowledged_alarm_and_audits_it() -> None:
    change = book.raise_alarm(
        EMPTY,
        LAMP,
        "lamp_fault",
        MINOR,
        "driver fault",
        T0,
        asset_class=assets_pb2.STREET_LAMP,
        group="talant",
    )
    alarm = change.alarm
    assert alarm.state == ACTIVE_UNACK
    assert (alarm.originator, alarm.type, alarm.severity) == (LAMP, "lamp_fault", MINOR)
    assert alarm.raised_at_ms == alarm.updated_at_ms == T0
    assert alarm.group == "talant" and alarm.asset_class == assets_pb2.STREET_LAMP
    assert change.changed and change.audit is not None
    assert change.audit.actor == "policy:street_lamp/talant"
    assert change.audit.action == audit.Action.ALARM_RAISE
    assert change.audit.target == f"alarm/{alarm.alarm_id}"
    assert change.audit.at_ms == T0 and change.audit.outcome == audit.OK


def test_the_alarm_id_is_stable_per_occurrence() -> None:
    assert raised().alarm_id == raised().alarm_id == book.alarm_id_for(LAMP, "lamp_fault", T0)
    assert book.alarm_id_for(LAMP, "lamp_fault", T0 + 1) != raised().alarm_id
    assert book.alarm_id_for(LAMP, "other", T0) != raised().alarm_id


def test_raising_an_active_alarm_again_updates_it_and_keeps_its_id() -> None:
    first = raised()
    index = AlarmIndex.of([first])
    again = book.raise_alarm(index, LAMP, "lamp_fault", MAJOR, "driver dead", T0 + 60_000)
    assert again.alarm.alarm_id == first.alarm_id
    assert again.alarm.severity == MAJOR and again.alarm.detail == "driver dead"
    assert again.alarm.raised_at_ms == T0 and again.alarm.updated_at_ms == T0 + 60_000
    assert again.audit is not None and again.audit.action == audit.Action.ALARM_UPDATE
    assert "MINOR -> MAJOR" in again.audit.detail
    assert first.severity == MINOR  # the input is not changed


def test_raising_the_same_alarm_unchanged_writes_nothing() -> None:
    first = raised()
    same = book.raise_alarm(
        AlarmIndex.of([first]), LAMP, "lamp_fault", MINOR, "driver fault", T0 + 5
    )
    assert not same.changed and same.audit is None
    assert same.alarm == first


def test_one_active_alarm_per_originator_and_type() -> None:
    first = raised()
    index = AlarmIndex.of([first])
    other_type = book.raise_alarm(index, LAMP, "lamp_dirty", MINOR, "", T0)
    other_device = book.raise_alarm(index, "70b3d57ed0000002", "lamp_fault", MINOR, "", T0)
    assert len({first.alarm_id, other_type.alarm.alarm_id, other_device.alarm.alarm_id}) == 3
    duplicate = operations_pb2.Alarm(
        alarm_id="dup", originator=LAMP, type="lamp_fault", state=ACTIVE_ACK
    )
    with pytest.raises(FailedPreconditionError, match="two active alarms"):
        AlarmIndex.of([first, duplicate])


def test_an_escalated_acknowledged_alarm_needs_acknowledging_again() -> None:
    acked = book.acknowledge(raised(MINOR), "op-roads", T0 + 1).alarm
    worse = book.raise_alarm(AlarmIndex.of([acked]), LAMP, "lamp_fault", CRITICAL, "smoke", T0 + 2)
    assert worse.alarm.state == ACTIVE_UNACK and worse.alarm.acknowledged_by == ""
    milder = book.raise_alarm(
        AlarmIndex.of([acked]), LAMP, "lamp_fault", operations_pb2.INFO, "ok-ish", T0 + 2
    )
    assert milder.alarm.state == ACTIVE_ACK and milder.alarm.acknowledged_by == "op-roads"


# --- the two paths to CLEARED_ACK


def test_ack_then_clear() -> None:
    alarm = raised()
    acked = book.acknowledge(alarm, "op-roads", T0 + 10)
    assert acked.alarm.state == ACTIVE_ACK and acked.alarm.acknowledged_by == "op-roads"
    assert acked.audit is not None and acked.audit.actor == "op-roads"
    assert acked.audit.action == audit.Action.ALARM_ACK
    cleared = book.clear(acked.alarm, T0 + 20, detail="lamp replaced")
    assert cleared.alarm.state == CLEARED_ACK
    assert cleared.audit is not None and cleared.audit.detail == "lamp replaced"
    assert cleared.audit.actor == "policy:street_lamp/talant"


def test_clear_before_ack_then_ack_the_cleared_alarm() -> None:
    cleared = book.clear(raised(), T0 + 10)
    assert cleared.alarm.state == CLEARED_UNACK
    acked = book.acknowledge(cleared.alarm, "op-roads", T0 + 20)
    assert acked.alarm.state == CLEARED_ACK
    assert acked.alarm.acknowledged_by == "op-roads" and acked.alarm.updated_at_ms == T0 + 20


@pytest.mark.parametrize("state", [ACTIVE_ACK, CLEARED_ACK])
def test_acknowledging_twice_is_refused(state: operations_pb2.AlarmState.ValueType) -> None:
    alarm = raised()
    alarm.state = state
    alarm.acknowledged_by = "op-1"
    with pytest.raises(FailedPreconditionError, match="already acknowledged by op-1"):
        book.acknowledge(alarm, "op-2", T0 + 1)


@pytest.mark.parametrize("state", [CLEARED_UNACK, CLEARED_ACK])
def test_clearing_a_cleared_alarm_is_refused(state: operations_pb2.AlarmState.ValueType) -> None:
    alarm = raised()
    alarm.state = state
    with pytest.raises(FailedPreconditionError, match="cannot clear"):
        book.clear(alarm, T0 + 1)


def test_an_alarm_in_no_state_cannot_be_acknowledged() -> None:
    with pytest.raises(FailedPreconditionError, match="cannot acknowledge"):
        book.acknowledge(operations_pb2.Alarm(alarm_id="x"), "op", T0)


@pytest.mark.parametrize("operator", ["", "policy:street_lamp/talant", "post:primary"])
def test_only_a_real_operator_acknowledges(operator: str) -> None:
    with pytest.raises(InvalidArgumentError):
        book.acknowledge(raised(), operator, T0 + 1)


def test_clear_alarm_is_lenient_when_nothing_is_active() -> None:
    assert book.clear_alarm(EMPTY, LAMP, "lamp_fault", T0) is None
    alarm = raised()
    change = book.clear_alarm(AlarmIndex.of([alarm]), LAMP, "lamp_fault", T0 + 1, detail="ok")
    assert change is not None and change.alarm.state == CLEARED_UNACK


def test_after_a_clear_the_next_raise_is_a_new_alarm() -> None:
    first = raised()
    index = AlarmIndex.of([first])
    cleared = book.clear(first, T0 + 10).alarm
    index = index.with_alarm(cleared)
    assert index.active(LAMP, "lamp_fault") is None
    again = book.raise_alarm(index, LAMP, "lamp_fault", MINOR, "driver fault", T0 + 20)
    assert again.alarm.alarm_id != first.alarm_id and again.alarm.state == ACTIVE_UNACK
    # The cleared one stays in history and does not count as active.
    assert AlarmIndex.of([cleared, again.alarm]).active(LAMP, "lamp_fault") == again.alarm


# --- escalation


def test_an_unacknowledged_alarm_escalates_one_step_per_wait() -> None:
    alarm = raised(MINOR)
    assert not book.escalate(alarm, T0 + 999, unacked_for_ms=1_000).changed
    up = book.escalate(alarm, T0 + 1_000, unacked_for_ms=1_000)
    assert up.alarm.severity == MAJOR and up.alarm.updated_at_ms == T0 + 1_000
    assert up.audit is not None and up.audit.action == audit.Action.ALARM_ESCALATE
    assert not book.escalate(up.alarm, T0 + 1_500, unacked_for_ms=1_000).changed
    top = book.escalate(up.alarm, T0 + 2_000, unacked_for_ms=1_000).alarm
    assert top.severity == CRITICAL
    assert not book.escalate(top, T0 + 10_000, unacked_for_ms=1_000).changed


def test_an_acknowledged_or_cleared_alarm_does_not_escalate() -> None:
    acked = book.acknowledge(raised(), "op", T0).alarm
    assert not book.escalate(acked, T0 + 10**6, unacked_for_ms=1).changed
    cleared = book.clear(raised(), T0).alarm
    assert not book.escalate(cleared, T0 + 10**6, unacked_for_ms=1).changed


# --- validation


@pytest.mark.parametrize(
    ("originator", "alarm_type", "severity", "field"),
    [
        ("", "lamp_fault", MINOR, "originator"),
        (LAMP, "", MINOR, "type"),
        (LAMP, "lamp_fault", operations_pb2.SEVERITY_UNSPECIFIED, "severity"),
    ],
)
def test_a_bad_raise_is_refused(
    originator: str, alarm_type: str, severity: operations_pb2.Severity.ValueType, field: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        book.raise_alarm(EMPTY, originator, alarm_type, severity, "", T0)


def test_audit_drafts_are_stamped_once_with_a_content_id() -> None:
    change = book.raise_alarm(EMPTY, LAMP, "lamp_fault", MINOR, "", T0)
    assert change.audit is not None and change.audit.entry_id == "" and change.audit.epoch == 0
    stamped = audit.finalize(change.audit, epoch=12)
    assert stamped.epoch == 12 and stamped.entry_id
    assert audit.finalize(change.audit, epoch=12).entry_id == stamped.entry_id
    assert audit.finalize(change.audit, epoch=13).entry_id != stamped.entry_id
    assert change.audit.actor == audit.SYSTEM_ACTOR  # no class and group: not a policy's
