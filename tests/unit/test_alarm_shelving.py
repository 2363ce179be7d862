"""Shelving (ISA-18.2) as pure rules: bounded per severity, with a reason, audited, back by
itself when the time is up or when the alarm gets worse."""

from __future__ import annotations

import pytest

from citypost.config import ShelveLimits
from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import alarm_book as book
from post import audit
from post.alarm_book import ACTIVE_ACK, ACTIVE_UNACK, CLEARED_ACK, CLEARED_UNACK, AlarmIndex
from protos.citypost.v1 import assets_pb2, operations_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T0 = 1_700_000_000_000
MINUTE = 60_000
LAMP = "70b3d57ed0000001"
INFO, MINOR, MAJOR, CRITICAL = (
    operations_pb2.INFO,
    operations_pb2.MINOR,
    operations_pb2.MAJOR,
    operations_pb2.CRITICAL,
)


def raised(severity: operations_pb2.Severity.ValueType = MINOR) -> operations_pb2.Alarm:
    return book.raise_alarm(
        AlarmIndex(),
        LAMP,
        "lamp_fault",
        severity,
        "driver fault",
        T0,
        asset_class=assets_pb2.STREET_LAMP,
        group="talant",
    ).alarm


def shelved(
    severity: operations_pb2.Severity.ValueType = MINOR, minutes: int = 30
) -> operations_pb2.Alarm:
    return book.shelve(raised(severity), "op-luc", T0 + minutes * MINUTE, "works on it", T0).alarm


def test_shelving_an_active_alarm_records_until_who_and_why_and_audits_it() -> None:
    alarm = raised()
    change = book.shelve(alarm, "op-luc", T0 + 30 * MINUTE, "  crew on site  ", T0 + 5)
    got = change.alarm
    assert (got.shelved_until_ms, got.shelved_by, got.shelve_reason) == (
        T0 + 30 * MINUTE,
        "op-luc",
        "crew on site",
    )
    assert got.state == ACTIVE_UNACK and got.updated_at_ms == T0 + 5
    assert alarm.shelved_until_ms == 0  # the input is not changed
    assert change.audit is not None
    assert change.audit.action == audit.Action.ALARM_SHELVE == "alarm.shelve"
    assert (change.audit.actor, change.audit.target) == ("op-luc", f"alarm/{alarm.alarm_id}")
    assert change.audit.detail.endswith(": crew on site")
    assert "at most 480 for MINOR" in change.audit.detail
    assert book.is_shelved(got, T0 + 30 * MINUTE - 1)
    assert not book.is_shelved(got, T0 + 30 * MINUTE)


@pytest.mark.parametrize(
    ("severity", "limit"), [(INFO, 1440), (MINOR, 480), (MAJOR, 120), (CRITICAL, 30)]
)
def test_each_severity_has_its_maximum_which_the_refusal_names(
    severity: operations_pb2.Severity.ValueType, limit: int
) -> None:
    assert book.shelve_limit_minutes(severity) == limit
    alarm = raised(severity)
    at_most = book.shelve(alarm, "op-luc", T0 + limit * MINUTE, "planned works", T0)
    assert at_most.alarm.shelved_until_ms == T0 + limit * MINUTE
    name = operations_pb2.Severity.Name(severity)
    with pytest.raises(InvalidArgumentError) as refused:
        book.shelve(alarm, "op-luc", T0 + limit * MINUTE + 1, "planned works", T0)
    assert f"a {name} alarm may be shelved for at most {limit} minutes" in refused.value.message
    assert refused.value.message.startswith("minutes: ")


def test_the_maximum_comes_from_the_limits_given() -> None:
    limits = ShelveLimits(critical=5)
    alarm = raised(CRITICAL)
    assert book.shelve_limit_minutes(CRITICAL, limits) == 5
    with pytest.raises(InvalidArgumentError, match="at most 5 minutes, got 6"):
        book.shelve(alarm, "op-luc", T0 + 6 * MINUTE, "why", T0, limits=limits)
    assert book.shelve(alarm, "op-luc", T0 + 5 * MINUTE, "why", T0, limits=limits).changed
    # A severity outside INFO..CRITICAL gets the strictest maximum.
    assert book.shelve_limit_minutes(operations_pb2.SEVERITY_UNSPECIFIED, limits) == 5


@pytest.mark.parametrize("reason", ["", "   ", "\n"])
def test_a_shelve_needs_a_reason(reason: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^reason: required"):
        book.shelve(raised(), "op-luc", T0 + MINUTE, reason, T0)


@pytest.mark.parametrize("until", [T0, T0 - 1, T0 - 10 * MINUTE])
def test_a_shelve_needs_some_time(until: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^minutes: must be > 0"):
        book.shelve(raised(), "op-luc", until, "why", T0)


@pytest.mark.parametrize("operator", ["", "policy:street_lamp/talant", "post:primary"])
def test_only_a_real_operator_shelves(operator: str) -> None:
    with pytest.raises(InvalidArgumentError, match="operator"):
        book.shelve(raised(), operator, T0 + MINUTE, "why", T0)


@pytest.mark.parametrize("state", [CLEARED_UNACK, CLEARED_ACK])
def test_only_an_active_alarm_is_shelved(state: operations_pb2.AlarmState.ValueType) -> None:
    alarm = raised()
    alarm.state = state
    with pytest.raises(FailedPreconditionError, match="cannot shelve when CLEARED"):
        book.shelve(alarm, "op-luc", T0 + MINUTE, "why", T0)


def test_an_acknowledged_alarm_is_shelved_and_stays_acknowledged() -> None:
    acked = book.acknowledge(raised(), "op-claire", T0 + 1).alarm
    got = book.shelve(acked, "op-luc", T0 + MINUTE, "why", T0 + 2).alarm
    assert got.state == ACTIVE_ACK and got.acknowledged_by == "op-claire"


def test_shelving_a_shelved_alarm_is_refused_until_its_time_is_up() -> None:
    alarm = shelved(minutes=30)
    with pytest.raises(FailedPreconditionError, match="already shelved by op-luc until") as e:
        book.shelve(alarm, "op-claire", T0 + 40 * MINUTE, "mine", T0 + MINUTE)
    assert "unshelve it first" in e.value.message
    # Its time is up but nobody unshelved it yet: a new shelve replaces it, and says so.
    again = book.shelve(alarm, "op-claire", T0 + 50 * MINUTE, "mine", T0 + 30 * MINUTE)
    assert again.alarm.shelved_by == "op-claire" and again.alarm.shelve_reason == "mine"
    assert again.audit is not None and "the last shelve ended at" in again.audit.detail


def test_an_operator_unshelves_a_shelved_alarm() -> None:
    alarm = shelved()
    change = book.unshelve(alarm, T0 + MINUTE, by="op-claire", detail="unshelved by op-claire")
    got = change.alarm
    assert (got.shelved_until_ms, got.shelved_by, got.shelve_reason) == (0, "", "")
    assert got.state == alarm.state and got.updated_at_ms == T0 + MINUTE
    assert change.audit is not None
    assert change.audit.action == audit.Action.ALARM_UNSHELVE == "alarm.unshelve"
    assert change.audit.actor == "op-claire"
    assert change.audit.detail.startswith("unshelved by op-claire (shelved by op-luc until")
    assert change.audit.detail.endswith(": works on it)")


def test_unshelving_an_alarm_that_is_not_shelved_is_refused() -> None:
    alarm = raised()
    with pytest.raises(FailedPreconditionError, match=f"alarm {alarm.alarm_id} is not shelved"):
        book.unshelve(alarm, T0, by="op-claire", detail="")
    back = book.unshelve(shelved(), T0 + MINUTE, by="op-claire", detail="").alarm
    with pytest.raises(FailedPreconditionError, match="is not shelved"):
        book.unshelve(back, T0 + 2 * MINUTE, by="op-claire", detail="")


def test_the_shelves_due_are_those_whose_time_is_up() -> None:
    short, long = shelved(minutes=5), shelved(minutes=60)
    long.alarm_id = "other"
    plain = raised()
    alarms = [short, long, plain]
    assert book.due_to_unshelve(alarms, T0 + 5 * MINUTE - 1) == []
    assert book.due_to_unshelve(alarms, T0 + 5 * MINUTE) == [short]
    assert book.due_to_unshelve(alarms, T0 + 60 * MINUTE) == [short, long]
    expired = book.unshelve(
        short, T0 + 5 * MINUTE, by=audit.SYSTEM_ACTOR, detail="shelve time is up"
    )
    assert expired.audit is not None
    assert (expired.audit.actor, expired.audit.action) == ("system", "alarm.unshelve")
    assert expired.audit.detail.startswith("shelve time is up")
    assert book.due_to_unshelve([expired.alarm], T0 + 10**9) == []


def test_a_raise_to_a_higher_severity_ends_the_shelve_and_says_so() -> None:
    alarm = shelved(MINOR)
    worse = book.raise_alarm(
        AlarmIndex.of([alarm]), LAMP, "lamp_fault", MAJOR, "driver dead", T0 + MINUTE
    )
    got = worse.alarm
    assert (got.shelved_until_ms, got.shelved_by, got.shelve_reason) == (0, "", "")
    assert got.severity == MAJOR and got.alarm_id == alarm.alarm_id
    assert worse.audit is not None and worse.audit.action == audit.Action.ALARM_UPDATE
    assert "shelve ended: severity rose" in worse.audit.detail


@pytest.mark.parametrize(
    ("severity", "detail"), [(MINOR, "driver flickers"), (INFO, "driver fault")]
)
def test_a_raise_that_is_not_worse_keeps_the_shelve(
    severity: operations_pb2.Severity.ValueType, detail: str
) -> None:
    alarm = shelved(MINOR)
    change = book.raise_alarm(
        AlarmIndex.of([alarm]), LAMP, "lamp_fault", severity, detail, T0 + MINUTE
    )
    assert change.changed
    assert change.alarm.shelved_until_ms == alarm.shelved_until_ms
    assert change.alarm.shelved_by == "op-luc" and change.alarm.shelve_reason == "works on it"
    assert change.audit is not None and "shelve ended" not in change.audit.detail


def test_a_shelved_alarm_that_clears_is_a_cleared_alarm_and_needs_no_unshelve() -> None:
    alarm = shelved(minutes=30)
    cleared = book.clear(alarm, T0 + MINUTE).alarm
    assert cleared.state == CLEARED_UNACK
    # Out of the book of active alarms: nothing sweeps it, and the next raise is a new alarm.
    index = AlarmIndex.of([alarm]).with_alarm(cleared)
    assert index.by_key == {}
    fresh = book.raise_alarm(index, LAMP, "lamp_fault", MINOR, "again", T0 + 2 * MINUTE).alarm
    assert fresh.alarm_id != alarm.alarm_id and fresh.shelved_until_ms == 0
    # Its record says when the shelve would have ended: it shows again after that by itself.
    assert book.is_shelved(cleared, T0 + 29 * MINUTE)
    assert not book.is_shelved(cleared, T0 + 30 * MINUTE)


def test_a_shelved_alarm_does_not_escalate_until_its_shelve_ends() -> None:
    alarm = shelved(MINOR, minutes=30)  # shelved at T0 until T0 + 30 min
    assert not book.escalate(alarm, T0 + 29 * MINUTE, unacked_for_ms=MINUTE).changed
    # Back in the list (time up): unacknowledged all along, it escalates.
    up = book.escalate(alarm, T0 + 31 * MINUTE, unacked_for_ms=MINUTE)
    assert up.changed and up.alarm.severity == MAJOR
