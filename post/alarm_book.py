"""The alarm lifecycle as pure functions over `Alarm` values.

    ACTIVE_UNACK -> ACTIVE_ACK -> CLEARED_ACK
    ACTIVE_UNACK -> CLEARED_UNACK -> CLEARED_ACK   (the cause cleared first)

At most one active alarm per (originator, type): raising it again updates its
severity and detail and keeps its id. A cleared alarm is history; the next
raise of the same (originator, type) is a new alarm with a new id. Raising an
acknowledged alarm to a *higher* severity asks for acknowledgement again.
Acknowledging twice, or clearing a cleared alarm, is refused
(FailedPreconditionError); `clear_alarm` is the lenient form for policies,
which may report "cause gone" when nothing is active.

Shelving (ISA-18.2): an operator takes an active alarm out of the list until a
given instant, with a reason, for at most the severity's maximum
(`config.alarms.shelve_max_minutes`); it comes back by itself when the time is
up (`unshelve` by "system"), when an operator unshelves it, or when a raise
makes it worse (the shelve ends with the raise). A shelved alarm that clears
is a cleared alarm like any other: nothing to unshelve.

Every change returns the new alarm and an audit draft (`post.audit`);
a raise that changes nothing returns the alarm as it was and no draft.
`now` is wall-clock milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from citypost.config import ShelveLimits
from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import audit
from protos.citypost.v1 import assets_pb2, control_state_pb2, operations_pb2

Alarm = operations_pb2.Alarm
State = operations_pb2.AlarmState
Severity = operations_pb2.Severity

ACTIVE_UNACK = operations_pb2.ACTIVE_UNACK
ACTIVE_ACK = operations_pb2.ACTIVE_ACK
CLEARED_UNACK = operations_pb2.CLEARED_UNACK
CLEARED_ACK = operations_pb2.CLEARED_ACK
ACTIVE: frozenset[State.ValueType] = frozenset({ACTIVE_UNACK, ACTIVE_ACK})
ACKNOWLEDGED: frozenset[State.ValueType] = frozenset({ACTIVE_ACK, CLEARED_ACK})

_ALARM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://citypost/alarm")
DEFAULT_SHELVE_LIMITS = ShelveLimits()
MS_PER_MINUTE = 60_000


@dataclass(frozen=True)
class AlarmChange:
    alarm: operations_pb2.Alarm
    audit: control_state_pb2.AuditEntry | None  # None: nothing changed, nothing to write

    @property
    def changed(self) -> bool:
        return self.audit is not None


class AlarmBookView(Protocol):
    """What `raise_alarm` needs to know about the book: the active alarm of a key."""

    def active(self, originator: str, alarm_type: str) -> operations_pb2.Alarm | None: ...


@dataclass(frozen=True)
class AlarmIndex:
    """An `AlarmBookView` over the active alarms, keyed by (originator, type)."""

    by_key: Mapping[tuple[str, str], operations_pb2.Alarm] = field(default_factory=dict)

    @classmethod
    def of(cls, alarms: Iterable[operations_pb2.Alarm]) -> AlarmIndex:
        """Index the active ones among `alarms`; two active for one key break the book's rule."""
        by_key: dict[tuple[str, str], operations_pb2.Alarm] = {}
        for alarm in alarms:
            if alarm.state not in ACTIVE:
                continue
            key = (alarm.originator, alarm.type)
            if key in by_key:
                raise FailedPreconditionError(
                    f"two active alarms for {key}: {by_key[key].alarm_id} and {alarm.alarm_id}"
                )
            by_key[key] = alarm
        return cls(by_key)

    def active(self, originator: str, alarm_type: str) -> operations_pb2.Alarm | None:
        return self.by_key.get((originator, alarm_type))

    def with_alarm(self, alarm: operations_pb2.Alarm) -> AlarmIndex:
        """The index after `alarm` was written: kept while active, dropped once cleared."""
        by_key = dict(self.by_key)
        key = (alarm.originator, alarm.type)
        if alarm.state in ACTIVE:
            by_key[key] = alarm
        elif key in by_key and by_key[key].alarm_id == alarm.alarm_id:
            del by_key[key]
        return AlarmIndex(by_key)


def alarm_id_for(originator: str, alarm_type: str, raised_at_ms: int) -> str:
    """Stable: the same occurrence gets the same id on every post."""
    name = f"{originator}\x00{alarm_type}\x00{raised_at_ms}"
    return str(uuid.uuid5(_ALARM_NAMESPACE, name))


def is_active(alarm: operations_pb2.Alarm) -> bool:
    return alarm.state in ACTIVE


def _state_name(alarm: operations_pb2.Alarm) -> str:
    return operations_pb2.AlarmState.Name(alarm.state)


def _severity_name(severity: Severity.ValueType) -> str:
    return operations_pb2.Severity.Name(severity)


def _copy(alarm: operations_pb2.Alarm) -> operations_pb2.Alarm:
    copied = operations_pb2.Alarm()
    copied.CopyFrom(alarm)
    return copied


def _actor_for(actor: str, asset_class: assets_pb2.AssetClass.ValueType, group: str) -> str:
    if actor:
        return actor
    if group and asset_class:
        return audit.policy_actor(asset_class, group)
    return audit.SYSTEM_ACTOR


def _check_severity(severity: Severity.ValueType) -> None:
    if severity not in (
        operations_pb2.INFO,
        operations_pb2.MINOR,
        operations_pb2.MAJOR,
        operations_pb2.CRITICAL,
    ):
        raise InvalidArgumentError(f"severity must be INFO..CRITICAL, got {severity}")


def raise_alarm(
    book_view: AlarmBookView,
    originator: str,
    alarm_type: str,
    severity: Severity.ValueType,
    detail: str,
    now: int,
    *,
    asset_class: assets_pb2.AssetClass.ValueType = assets_pb2.ASSET_CLASS_UNSPECIFIED,
    group: str = "",
    actor: str = "",
    suppressed_by: str = "",
    suppressed_count: int = 0,
    chattering: bool = False,
) -> AlarmChange:
    """Raise the (originator, type) alarm, or update the active one in place.

    `actor` defaults to the policy of (asset_class, group), else "system".
    `suppressed_by` names the active alarm of its cause (not annunciated while it holds);
    `suppressed_count` is a cause's count of the alarms it suppresses.
    """
    if not originator:
        raise InvalidArgumentError("originator must not be empty")
    if not alarm_type:
        raise InvalidArgumentError("type must not be empty")
    _check_severity(severity)
    existing = book_view.active(originator, alarm_type)
    if existing is not None and existing.state not in ACTIVE:
        raise FailedPreconditionError(
            f"the book's active alarm {existing.alarm_id} is {_state_name(existing)}"
        )
    if existing is None:
        alarm = operations_pb2.Alarm(
            alarm_id=alarm_id_for(originator, alarm_type, now),
            originator=originator,
            type=alarm_type,
            severity=severity,
            state=ACTIVE_UNACK,
            asset_class=asset_class,
            detail=detail,
            raised_at_ms=now,
            updated_at_ms=now,
            group=group,
            suppressed_by=suppressed_by,
            suppressed_count=suppressed_count,
            chattering=chattering,
        )
        under = f", suppressed under {suppressed_by}" if suppressed_by else ""
        entry = audit.draft(
            actor=_actor_for(actor, asset_class, group),
            action=audit.Action.ALARM_RAISE,
            target=audit.alarm_target(alarm.alarm_id),
            at_ms=now,
            detail=f"{alarm_type} on {originator}, {_severity_name(severity)}{under}: {detail}",
        )
        return AlarmChange(alarm, entry)
    if (
        existing.severity == severity
        and existing.detail == detail
        and existing.suppressed_by == suppressed_by
        and existing.suppressed_count == suppressed_count
        and existing.chattering == chattering
    ):
        return AlarmChange(existing, None)
    alarm = _copy(existing)
    alarm.severity = severity
    alarm.detail = detail
    alarm.updated_at_ms = now
    alarm.suppressed_by = suppressed_by
    alarm.suppressed_count = suppressed_count
    alarm.chattering = chattering
    note = ""
    if existing.suppressed_by and not suppressed_by:
        note = ", its cause is gone: annunciated"
    elif suppressed_by and not existing.suppressed_by:
        note = f", suppressed under {suppressed_by}"
    if severity > existing.severity and existing.state == ACTIVE_ACK:
        # The operator acknowledged a milder alarm: a worse one must be seen again.
        alarm.state = ACTIVE_UNACK
        alarm.acknowledged_by = ""
        note += ", acknowledgement withdrawn"
    if severity > existing.severity and existing.shelved_until_ms:
        # Shelved as a milder alarm: a worse one is back in the list at once.
        alarm.shelved_until_ms = 0
        alarm.shelved_by = ""
        alarm.shelve_reason = ""
        note += ", shelve ended: severity rose"
    entry = audit.draft(
        actor=_actor_for(actor, existing.asset_class, existing.group),
        action=audit.Action.ALARM_UPDATE,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=(
            f"{_severity_name(existing.severity)} -> {_severity_name(severity)}{note}: {detail}"
        ),
    )
    return AlarmChange(alarm, entry)


def clear(
    alarm: operations_pb2.Alarm, now: int, *, detail: str = "", actor: str = ""
) -> AlarmChange:
    """The cause is gone: ACTIVE_UNACK -> CLEARED_UNACK, ACTIVE_ACK -> CLEARED_ACK."""
    if alarm.state not in ACTIVE:
        raise FailedPreconditionError(
            f"alarm {alarm.alarm_id}: cannot clear when {_state_name(alarm)}"
        )
    cleared = _copy(alarm)
    cleared.state = CLEARED_ACK if alarm.state == ACTIVE_ACK else CLEARED_UNACK
    cleared.updated_at_ms = now
    entry = audit.draft(
        actor=_actor_for(actor, alarm.asset_class, alarm.group),
        action=audit.Action.ALARM_CLEAR,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=detail or f"{alarm.type} on {alarm.originator} cleared",
    )
    return AlarmChange(cleared, entry)


def clear_alarm(
    book_view: AlarmBookView,
    originator: str,
    alarm_type: str,
    now: int,
    *,
    detail: str = "",
    actor: str = "",
) -> AlarmChange | None:
    """Clear the active (originator, type) alarm if there is one; None if there is none."""
    existing = book_view.active(originator, alarm_type)
    if existing is None or existing.state not in ACTIVE:
        return None
    return clear(existing, now, detail=detail, actor=actor)


def acknowledge(alarm: operations_pb2.Alarm, operator: str, now: int) -> AlarmChange:
    """An operator saw it: ACTIVE_UNACK -> ACTIVE_ACK, CLEARED_UNACK -> CLEARED_ACK."""
    who = audit.operator_actor(operator)
    if alarm.state == ACTIVE_UNACK:
        state = ACTIVE_ACK
    elif alarm.state == CLEARED_UNACK:
        state = CLEARED_ACK
    elif alarm.state in ACKNOWLEDGED:
        raise FailedPreconditionError(
            f"alarm {alarm.alarm_id} is already acknowledged by {alarm.acknowledged_by or '?'}"
        )
    else:
        raise FailedPreconditionError(
            f"alarm {alarm.alarm_id}: cannot acknowledge when {_state_name(alarm)}"
        )
    acked = _copy(alarm)
    acked.state = state
    acked.acknowledged_by = who
    acked.updated_at_ms = now
    entry = audit.draft(
        actor=who,
        action=audit.Action.ALARM_ACK,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=f"{_state_name(alarm)} -> {_state_name(acked)}",
    )
    return AlarmChange(acked, entry)


def escalate(
    alarm: operations_pb2.Alarm, now: int, *, unacked_for_ms: int, actor: str = ""
) -> AlarmChange:
    """One severity step up for an active alarm nobody acknowledged within `unacked_for_ms`.

    The wait counts from the alarm's last change, so each step waits again.
    Unchanged (no draft) when not due, acknowledged, cleared, already CRITICAL, or
    shelved now (an operator took it out of the list on purpose: it does not climb
    meanwhile; a raise that makes it worse ends the shelve).
    """
    if unacked_for_ms <= 0:
        raise InvalidArgumentError(f"unacked_for_ms must be > 0, got {unacked_for_ms}")
    if (
        alarm.state != ACTIVE_UNACK
        or alarm.severity >= operations_pb2.CRITICAL
        or now - alarm.updated_at_ms < unacked_for_ms
        or is_shelved(alarm, now)
    ):
        return AlarmChange(alarm, None)
    escalated = _copy(alarm)
    escalated.severity = Severity.ValueType(alarm.severity + 1)
    escalated.updated_at_ms = now
    entry = audit.draft(
        actor=actor or audit.SYSTEM_ACTOR,
        action=audit.Action.ALARM_ESCALATE,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=(
            f"{_severity_name(alarm.severity)} -> {_severity_name(escalated.severity)}: "
            f"unacknowledged for {now - alarm.updated_at_ms} ms"
        ),
    )
    return AlarmChange(escalated, entry)


# --- shelving -------------------------------------------------------------------------------


def shelve_limit_minutes(
    severity: Severity.ValueType, limits: ShelveLimits = DEFAULT_SHELVE_LIMITS
) -> float:
    """The longest an alarm of `severity` may be shelved, in minutes (a severity that is
    not INFO..CRITICAL gets the strictest, CRITICAL's)."""
    if severity == operations_pb2.INFO:
        return limits.info
    if severity == operations_pb2.MINOR:
        return limits.minor
    if severity == operations_pb2.MAJOR:
        return limits.major
    return limits.critical


def is_shelved(alarm: operations_pb2.Alarm, now: int) -> bool:
    """Out of the annunciated list at `now`: shelved until a later instant."""
    return alarm.shelved_until_ms > now


def _instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def shelve(
    alarm: operations_pb2.Alarm,
    operator: str,
    until_ms: int,
    reason: str,
    now: int,
    *,
    limits: ShelveLimits = DEFAULT_SHELVE_LIMITS,
) -> AlarmChange:
    """An operator takes an active alarm out of the list until `until_ms`, saying why.

    The time is at most the maximum of the alarm's severity in `limits`. Shelving a
    shelved alarm is refused (unshelve it first: each act has its own audit entry);
    one whose shelve time is up, not yet unshelved, is shelved anew.
    """
    who = audit.operator_actor(operator)
    reason = reason.strip()
    if not reason:
        raise InvalidArgumentError("reason: required: say why the alarm is shelved")
    minutes = (until_ms - now) / MS_PER_MINUTE
    if minutes <= 0:
        raise InvalidArgumentError(f"minutes: must be > 0, got {minutes:g}")
    limit = shelve_limit_minutes(alarm.severity, limits)
    if minutes > limit:
        raise InvalidArgumentError(
            f"minutes: a {_severity_name(alarm.severity)} alarm may be shelved for at most "
            f"{limit:g} minutes, got {minutes:.10g}"
        )
    if alarm.state not in ACTIVE:
        raise FailedPreconditionError(
            f"alarm {alarm.alarm_id}: cannot shelve when {_state_name(alarm)} "
            "(only an active alarm is shelved)"
        )
    if is_shelved(alarm, now):
        raise FailedPreconditionError(
            f"alarm {alarm.alarm_id} is already shelved by {alarm.shelved_by or '?'} until "
            f"{_instant(alarm.shelved_until_ms)}: unshelve it first"
        )
    # A shelve whose time is up but not yet swept (`unshelve_expired`) is replaced.
    ended = (
        f" (the last shelve ended at {_instant(alarm.shelved_until_ms)})"
        if alarm.shelved_until_ms
        else ""
    )
    shelved = _copy(alarm)
    shelved.shelved_until_ms = until_ms
    shelved.shelved_by = who
    shelved.shelve_reason = reason
    shelved.updated_at_ms = now
    entry = audit.draft(
        actor=who,
        action=audit.Action.ALARM_SHELVE,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=(
            f"shelved until {_instant(until_ms)} ({minutes:g} min, at most {limit:g} for "
            f"{_severity_name(alarm.severity)}){ended}: {reason}"
        ),
    )
    return AlarmChange(shelved, entry)


def unshelve(alarm: operations_pb2.Alarm, now: int, *, by: str, detail: str) -> AlarmChange:
    """Back in the list: an operator unshelves it, or its time is up (`by` "system").

    Refused for an alarm that is not shelved. The alarm keeps its state: a shelved alarm
    that cleared meanwhile is unshelved as a cleared one.
    """
    if not alarm.shelved_until_ms:
        raise FailedPreconditionError(f"alarm {alarm.alarm_id} is not shelved")
    unshelved = _copy(alarm)
    unshelved.shelved_until_ms = 0
    unshelved.shelved_by = ""
    unshelved.shelve_reason = ""
    unshelved.updated_at_ms = now
    entry = audit.draft(
        actor=by,
        action=audit.Action.ALARM_UNSHELVE,
        target=audit.alarm_target(alarm.alarm_id),
        at_ms=now,
        detail=(
            f"{detail or 'unshelved'} (shelved by {alarm.shelved_by or '?'} until "
            f"{_instant(alarm.shelved_until_ms)}: {alarm.shelve_reason})"
        ),
    )
    return AlarmChange(unshelved, entry)


def due_to_unshelve(alarms: Iterable[operations_pb2.Alarm], now: int) -> list[operations_pb2.Alarm]:
    """The shelved alarms among `alarms` whose time is up at `now`."""
    return [a for a in alarms if 0 < a.shelved_until_ms <= now]
