"""Building audit entries (who, what, when, outcome) in one place.

Lifecycle functions return *drafts*: an entry without epoch or id. The writer
stamps them with `finalize` just before the fenced write, so the entry carries
the epoch that actually wrote it. The default id is derived from the entry's
content, so writing the same draft twice (a retried etcd transaction) stores
one entry, not two.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from citypost.errors import InvalidArgumentError
from citypost.names import class_name as class_name  # re-exported: callers import it here
from protos.citypost.v1 import assets_pb2, control_state_pb2

Outcome = control_state_pb2.AuditOutcome
AuditEntry = control_state_pb2.AuditEntry

OK = control_state_pb2.AUDIT_OK
REFUSED = control_state_pb2.AUDIT_REFUSED
FAILED = control_state_pb2.AUDIT_FAILED

# The actor of changes no policy or operator made (e.g. time-based escalation).
SYSTEM_ACTOR = "system"

_AUDIT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://citypost/audit")


class Action(StrEnum):
    """What was done; the audit's `action` field."""

    ALARM_RAISE = "alarm.raise"
    ALARM_UPDATE = "alarm.update"
    ALARM_ESCALATE = "alarm.escalate"
    ALARM_ACK = "alarm.ack"
    ALARM_CLEAR = "alarm.clear"
    ALARM_SHELVE = "alarm.shelve"
    ALARM_UNSHELVE = "alarm.unshelve"
    TASK_CREATE = "task.create"
    TASK_REPRIORITIZE = "task.reprioritize"
    TASK_ASSIGN = "task.assign"
    TASK_START = "task.start"
    TASK_DONE = "task.done"
    TASK_CANCEL = "task.cancel"
    COMMAND_ISSUE = "command.issue"
    COMMAND_SEND = "command.send"
    COMMAND_ACK = "command.ack"
    COMMAND_NACK = "command.nack"
    COMMAND_EXPIRE = "command.expire"
    COMMAND_FAIL = "command.fail"
    COMMAND_SUPERSEDE = "command.supersede"
    COMMAND_APPROVAL_ASK = "command.approval_ask"  # a dangerous command waits for a second person
    COMMAND_APPROVE = "command.approve"
    COMMAND_REJECT = "command.reject"
    COMMAND_EMERGENCY = "command.emergency"  # sent without approval: an emergency
    OVERRIDE_SET = "override.set"
    OVERRIDE_END = "override.end"
    INCIDENT_OPEN = "incident.open"
    INCIDENT_CLOSE = "incident.close"
    NOTIFY = "notification.send"
    LEADERSHIP_TAKE = "leadership.take"
    RETENTION_EXPIRE = "retention.expire"


# --- actors and targets -----------------------------------------------------


def policy_actor(asset_class: assets_pb2.AssetClass.ValueType, group: str) -> str:
    """The actor of a policy's decisions: `policy:<class>/<group>`."""
    if not group:
        raise InvalidArgumentError("group must not be empty")
    return f"policy:{class_name(asset_class)}/{group}"


def post_actor(post_name: str) -> str:
    """The actor of the post's own bookkeeping (retries, expiry): `post:<name>`."""
    if not post_name:
        raise InvalidArgumentError("post_name must not be empty")
    return f"post:{post_name}"


def operator_actor(operator_id: str) -> str:
    """An operator acts under their id; the reserved prefixes cannot be borrowed."""
    if not operator_id:
        raise InvalidArgumentError("operator must not be empty")
    if operator_id.startswith(("policy:", "post:")):
        raise InvalidArgumentError(f"operator {operator_id!r} uses a reserved prefix")
    return operator_id


def alarm_target(alarm_id: str) -> str:
    return f"alarm/{alarm_id}"


def task_target(task_id: str) -> str:
    return f"task/{task_id}"


def command_target(command_id: str) -> str:
    return f"command/{command_id}"


def override_target(override_id: str) -> str:
    return f"override/{override_id}"


def group_target(asset_class: assets_pb2.AssetClass.ValueType, group: str) -> str:
    return f"group/{class_name(asset_class)}/{group}"


# --- entries ----------------------------------------------------------------


def ms_of(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (the policies' clock)."""
    if moment.tzinfo is None:
        raise InvalidArgumentError("moment must be timezone-aware")
    return int(moment.timestamp() * 1000)


def draft(
    *,
    actor: str,
    action: str,
    target: str,
    at_ms: int,
    outcome: Outcome.ValueType = OK,
    detail: str = "",
) -> AuditEntry:
    """An entry without id or epoch; `finalize` stamps them at write time."""
    if not actor:
        raise InvalidArgumentError("actor must not be empty")
    if not action:
        raise InvalidArgumentError("action must not be empty")
    if not target:
        raise InvalidArgumentError("target must not be empty")
    if at_ms < 0:
        raise InvalidArgumentError(f"at_ms must be >= 0, got {at_ms}")
    return AuditEntry(
        at_ms=at_ms,
        actor=actor,
        action=str(action),
        target=target,
        outcome=outcome,
        detail=detail,
    )


def finalize(entry: AuditEntry, *, epoch: int, entry_id: str = "") -> AuditEntry:
    """A copy stamped with the writer's epoch and an id (by default derived from the content)."""
    if epoch < 1:
        raise InvalidArgumentError(f"epoch must be >= 1, got {epoch}")
    stamped = AuditEntry()
    stamped.CopyFrom(entry)
    stamped.epoch = epoch
    stamped.entry_id = ""
    stamped.entry_id = entry_id or str(
        uuid.uuid5(_AUDIT_NAMESPACE, stamped.SerializeToString(deterministic=True).hex())
    )
    return stamped


def entry(
    *,
    actor: str,
    action: str,
    target: str,
    at_ms: int,
    epoch: int,
    outcome: Outcome.ValueType = OK,
    detail: str = "",
    entry_id: str = "",
) -> AuditEntry:
    """A complete entry in one call (for writers that know their epoch already)."""
    built = draft(
        actor=actor, action=action, target=target, at_ms=at_ms, outcome=outcome, detail=detail
    )
    return finalize(built, epoch=epoch, entry_id=entry_id)


def for_command(
    record: control_state_pb2.CommandRecord,
    action: str,
    at_ms: int,
    *,
    actor: str = "",
    outcome: Outcome.ValueType = OK,
    detail: str = "",
) -> AuditEntry:
    """A draft about a ledger entry; the actor defaults to whoever issued the command."""
    command = record.command
    target = command.target.dev_eui or f"{class_name(command.asset_class)}/{command.target.group}"
    return draft(
        actor=actor or record.issued_by or SYSTEM_ACTOR,
        action=action,
        target=command_target(command.command_id),
        at_ms=at_ms,
        outcome=outcome,
        detail=f"to {target}, attempt {record.attempts}/{record.max_attempts}"
        + (" (a new leader's own)" if record.attempts > record.max_attempts else "")
        + (f": {detail}" if detail else ""),
    )
