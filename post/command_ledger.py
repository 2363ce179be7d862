"""The command lifecycle as pure functions over a `CommandRecord`.

    QUEUED -> SENT -> ACKED, or EXPIRED (TTL passed) / FAILED (attempts exhausted)
    / PARTIAL (a multicast some devices had not confirmed by its deadline).

Approval: a dangerous command (security/approval.py) starts PENDING_APPROVAL
with its deadline at the approval's: `approve` makes it QUEUED and starts its
TTL then (the time on air is the TTL's, however long the decision took);
`reject` makes it REJECTED; nobody deciding makes it EXPIRED, unsent.

A driver loops: `decide(record, now)` says RESEND / EXPIRE / FAIL / WAIT / DONE;
the driver writes the record the matching function returns (fenced) and
publishes after the write, so a command is in the ledger before it is sent.
Every function returns a new record; none changes its argument.

Time: `now` is milliseconds on one clock per record. The ledger is replicated
and read by the next leader, so store wall-clock milliseconds; a driver may
schedule its local timers on the monotonic clock.

Retries: after send number n the next one is due `backoff_initial_ms * 2**(n-1)`
later (capped at `backoff_max_ms`) and never later than the deadline; nothing
is sent at or after the deadline. When the retry and the deadline fall due
together, EXPIRE wins: the TTL is the harder bound. A new leader sends every
command it inherits once more under its own epoch, even one whose attempts the
old leader used up: that send has an ack window of its own.

Acks: a positive ack counts once toward `expected_acks` (1 for a device, the
device count for a group command); the caller passes each device's ack once
(dedupe by (command_id, dev_eui) is the caller's: the record holds counts,
not thousands of device ids). A negative ack (a device refused it, e.g. for a
stale epoch) is not a success: the record goes back to QUEUED for a resend
under the current epoch, or to FAILED if no attempt is left. An ack that
arrives after a terminal state is a normal race, not a caller's bug: it is
returned with `ignored=True` and the record unchanged (audit it as late).

Multicast: a group command sent as one multicast is not acknowledged by anyone;
its devices confirm it by reporting the commanded state (post/confirmation.py).
It is sent once (a new leader sends it again under its epoch, same command_id);
halfway to its deadline a resend is due, which the caller makes a unicast to
each device that has not confirmed yet (the stragglers); it counts
confirmations with `on_confirmed`, and at its deadline `settle` makes it
PARTIAL naming the stragglers (EXPIRED if nobody confirmed).

Idempotency: finding an existing record by `idempotency_key` (and answering
with it instead of calling `new_record`) is the caller's job, through the
control state's `idempotency/<key>` index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from protos.citypost.v1 import command_pb2, control_state_pb2

CommandRecord = control_state_pb2.CommandRecord
Status = command_pb2.CommandStatus

QUEUED = command_pb2.QUEUED
SENT = command_pb2.SENT
ACKED = command_pb2.ACKED
EXPIRED = command_pb2.EXPIRED
FAILED = command_pb2.FAILED
PARTIAL = command_pb2.PARTIAL
SUPERSEDED = command_pb2.SUPERSEDED
PENDING_APPROVAL = command_pb2.PENDING_APPROVAL
REJECTED = command_pb2.REJECTED
TERMINAL: frozenset[Status.ValueType] = frozenset(
    {ACKED, EXPIRED, FAILED, PARTIAL, SUPERSEDED, REJECTED}
)
# Actions that set a state the devices report (and so are confirmed by their uplinks).
STATE_ACTIONS = frozenset({"set_lamp_profile", "set_brightness", "set_bollard_position"})
MAX_LISTED_STRAGGLERS = 100  # the record names this many; straggler_count counts them all

DEFAULT_BACKOFF_INITIAL_MS = 1_000
DEFAULT_BACKOFF_MAX_MS = 30_000


class Action(StrEnum):
    RESEND = "resend"  # a send is due (the first one too): call on_sent, then publish
    EXPIRE = "expire"  # the deadline passed: call expire
    FAIL = "fail"  # no attempt left and the last one went unanswered: call fail
    WAIT = "wait"  # nothing due before next_wake_ms
    DONE = "done"  # terminal: nothing will ever be due


@dataclass(frozen=True)
class AckResult:
    record: CommandRecord
    ignored: bool  # the record was already terminal; `record` is unchanged


def status_name(record: CommandRecord) -> str:
    return command_pb2.CommandStatus.Name(record.status)


def is_terminal(record: CommandRecord) -> bool:
    return record.status in TERMINAL


def _copy(record: CommandRecord) -> CommandRecord:
    copied = CommandRecord()
    copied.CopyFrom(record)
    return copied


def _finish(
    record: CommandRecord, status: Status.ValueType, now: int, detail: str
) -> CommandRecord:
    """A copy of a live record, ended now with `status` and why."""
    done = _copy(record)
    done.status = status
    done.finished_at_ms = now
    done.detail = detail
    return done


def _refuse(record: CommandRecord, what: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"command {record.command.command_id}: cannot {what} when {status_name(record)}"
    )


def new_record(
    command: command_pb2.Command,
    ttl_ms: int,
    max_attempts: int,
    now: int,
    idempotency_key: str = "",
    issued_by: str = "",
    *,
    expected_acks: int = 1,
    backoff_initial_ms: int = DEFAULT_BACKOFF_INITIAL_MS,
    backoff_max_ms: int = DEFAULT_BACKOFF_MAX_MS,
    multicast: bool = False,
    approval: control_state_pb2.Approval | None = None,
) -> CommandRecord:
    """A QUEUED entry whose first send is due at once and whose deadline is now + ttl_ms;
    with an `approval`, a PENDING_APPROVAL one whose deadline is the approval's."""
    if not command.command_id:
        raise InvalidArgumentError("command.command_id must not be empty")
    target = command.target.WhichOneof("kind")
    if target is None:
        raise InvalidArgumentError("command.target must name a dev_eui or a group")
    if command.WhichOneof("action") is None:
        raise InvalidArgumentError("command.action must be set")
    if ttl_ms <= 0:
        raise InvalidArgumentError(f"ttl_ms must be > 0, got {ttl_ms}")
    if max_attempts < 1:
        raise InvalidArgumentError(f"max_attempts must be >= 1, got {max_attempts}")
    if now < 0:
        raise InvalidArgumentError(f"now must be >= 0, got {now}")
    if expected_acks < 1:
        raise InvalidArgumentError(f"expected_acks must be >= 1, got {expected_acks}")
    if target == "dev_eui" and expected_acks != 1:
        raise InvalidArgumentError("expected_acks must be 1 for a command to one device")
    if backoff_initial_ms < 1 or backoff_max_ms < backoff_initial_ms:
        raise InvalidArgumentError(
            f"backoff must satisfy 1 <= backoff_initial_ms ({backoff_initial_ms}) "
            f"<= backoff_max_ms ({backoff_max_ms})"
        )
    record = CommandRecord(
        status=QUEUED,
        max_attempts=max_attempts,
        created_at_ms=now,
        deadline_ms=now + ttl_ms,
        next_retry_at_ms=now,
        idempotency_key=idempotency_key,
        issued_by=issued_by or command.issued_by,
        expected_acks=expected_acks,
        backoff_initial_ms=backoff_initial_ms,
        backoff_max_ms=backoff_max_ms,
        multicast=multicast,
    )
    if multicast and target != "group":
        raise InvalidArgumentError("only a command to a group goes by multicast")
    if approval is not None:
        if approval.approve_by_ms <= now:
            raise InvalidArgumentError(
                f"approval.approve_by_ms must be after now ({now}), got {approval.approve_by_ms}"
            )
        record.status = PENDING_APPROVAL
        record.deadline_ms = record.next_retry_at_ms = approval.approve_by_ms
        record.approval.CopyFrom(approval)
    record.command.CopyFrom(command)
    record.command.ttl_ms = ttl_ms
    record.command.issued_by = record.issued_by
    if not record.command.issued_at_ms:
        record.command.issued_at_ms = now
    return record


def approve(record: CommandRecord, by: str, now: int, reason: str = "") -> CommandRecord:
    """A second person approved it: QUEUED, first send due now, deadline now + its TTL."""
    _check_pending(record, now, "approve")
    approved = _copy(record)
    approved.status = QUEUED
    approved.deadline_ms = now + record.command.ttl_ms
    approved.next_retry_at_ms = now
    approved.approval.decided_by = by
    approved.approval.decided_at_ms = now
    approved.approval.decision_reason = reason
    return approved


def reject(record: CommandRecord, by: str, now: int, reason: str) -> CommandRecord:
    """A second person refused it: REJECTED, never sent."""
    _check_pending(record, now, "reject")
    rejected = _finish(record, REJECTED, now, f"rejected by {by}: {reason}")
    rejected.approval.decided_by = by
    rejected.approval.decided_at_ms = now
    rejected.approval.decision_reason = reason
    return rejected


def _check_pending(record: CommandRecord, now: int, what: str) -> None:
    if record.status != PENDING_APPROVAL:
        decided = record.approval.decided_by
        raise FailedPreconditionError(
            f"command {record.command.command_id}: cannot {what} when {status_name(record)}"
            + (f" (decided by {decided})" if decided else " (it needed no approval)")
        )
    if now >= record.approval.approve_by_ms:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: too late to {what}: its approval was due "
            f"by {record.approval.approve_by_ms} (now {now}); it expires unsent"
        )


def sending_since(record: CommandRecord) -> int:
    """When the command's TTL began: its approval if it needed one, else its creation."""
    return record.approval.decided_at_ms or record.created_at_ms


def backoff_ms(record: CommandRecord, attempt: int) -> int:
    """The wait after send number `attempt` (1-based) before the next one is due."""
    if attempt < 1:
        raise InvalidArgumentError(f"attempt must be >= 1, got {attempt}")
    # Shift bounded so a large attempt count cannot build a huge integer.
    return min(record.backoff_initial_ms << min(attempt - 1, 40), record.backoff_max_ms)


def on_sent(record: CommandRecord, now: int, *, epoch: int | None = None) -> CommandRecord:
    """One more send, under `epoch` if given (a new leader re-sends under its own)."""
    if record.status not in (QUEUED, SENT):
        raise _refuse(record, "send")
    # A new leader owes one send of every command it inherits, attempts used or not: the
    # old leader's last frames may have died with it, or still wait for airtime behind a
    # transition's multicasts, and only an ack window of its own can tell.
    inherited = epoch is not None and record.attempts > 0 and epoch > record.command.epoch
    if record.attempts >= record.max_attempts and not inherited:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: no attempt left "
            f"({record.attempts} of {record.max_attempts})"
        )
    if now >= record.deadline_ms:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: deadline {record.deadline_ms} has passed"
        )
    if epoch is not None and epoch < record.command.epoch:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: epoch {epoch} is below "
            f"the epoch it was sent under ({record.command.epoch})"
        )
    sent = _copy(record)
    sent.attempts += 1
    sent.status = SENT
    sent.last_sent_at_ms = now
    sent.next_retry_at_ms = min(now + backoff_ms(sent, sent.attempts), sent.deadline_ms)
    if sent.multicast:
        # No ack to wait for: confirmed by state. Halfway to the deadline, the stragglers
        # get it again one by one (the caller's resend); after that, nothing until the end.
        start = sending_since(sent)
        halfway = start + (sent.deadline_ms - start) // 2
        sent.next_retry_at_ms = (
            halfway if sent.attempts == 1 and now < halfway else sent.deadline_ms
        )
    if epoch is not None:
        sent.command.epoch = epoch
    return sent


def on_ack(record: CommandRecord, acknowledged: bool, now: int, *, detail: str = "") -> AckResult:
    """A device answered: positive counts toward ACKED, negative asks for a resend or FAILED."""
    if is_terminal(record):
        return AckResult(record, ignored=True)
    acked = _copy(record)
    if acknowledged:
        acked.acked_count = min(acked.acked_count + 1, acked.expected_acks)
        acked.status = SENT  # an ack proves it went out, even if the SENT write was lost
        if acked.acked_count >= acked.expected_acks:
            acked.status = ACKED
            acked.acked_at_ms = now
            acked.finished_at_ms = now
        if detail:
            acked.detail = detail
        return AckResult(acked, ignored=False)
    acked.nacked_count += 1
    acked.detail = detail or "negative ack"
    if acked.attempts >= acked.max_attempts:
        acked.status = FAILED
        acked.finished_at_ms = now
    else:
        # Nothing is pending any more; next_retry_at_ms keeps the back-off spacing of sends.
        acked.status = QUEUED
    return AckResult(acked, ignored=False)


def on_confirmed(record: CommandRecord, confirmed: int, now: int) -> CommandRecord:
    """`confirmed` devices of a multicast have reported its state (a count that only grows);
    ACKED once all have. A terminal record is returned unchanged."""
    if not record.multicast:
        raise InvalidArgumentError("on_confirmed is for multicast commands; use on_ack")
    if confirmed < 0:
        raise InvalidArgumentError(f"confirmed must be >= 0, got {confirmed}")
    if is_terminal(record) or confirmed <= record.acked_count:
        return record
    updated = _copy(record)
    updated.acked_count = min(confirmed, updated.expected_acks)
    if updated.acked_count >= updated.expected_acks:
        updated.status = ACKED
        updated.acked_at_ms = now
        updated.finished_at_ms = now
        updated.straggler_count = 0
        del updated.stragglers[:]
    return updated


def settle(record: CommandRecord, now: int, stragglers: Sequence[str]) -> CommandRecord:
    """A multicast at its deadline: PARTIAL naming who did not confirm, EXPIRED if nobody did."""
    if not record.multicast:
        raise InvalidArgumentError("settle is for multicast commands; use expire")
    if is_terminal(record):
        raise _refuse(record, "settle")
    if now < record.deadline_ms:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: cannot settle before its deadline "
            f"{record.deadline_ms} (now {now})"
        )
    settled = _copy(record)
    settled.finished_at_ms = now
    settled.straggler_count = len(stragglers)
    settled.stragglers.extend(sorted(stragglers)[:MAX_LISTED_STRAGGLERS])
    confirmed = record.expected_acks - len(stragglers)
    if confirmed <= 0:
        settled.status = EXPIRED
        settled.detail = f"no device of {record.expected_acks} reported the commanded state"
    else:
        settled.status = PARTIAL
        settled.acked_count = confirmed
        settled.detail = (
            f"{confirmed} of {record.expected_acks} devices reported the commanded state; "
            f"{len(stragglers)} did not by the deadline"
        )
    return settled


def decide(record: CommandRecord, now: int) -> Action:
    if is_terminal(record):
        return Action.DONE
    if now >= record.deadline_ms:
        return Action.EXPIRE
    if record.status == PENDING_APPROVAL:
        return Action.WAIT  # nothing goes on air before a second person says so
    if now >= record.next_retry_at_ms:
        return Action.RESEND if record.attempts < record.max_attempts else Action.FAIL
    return Action.WAIT


def next_wake_ms(record: CommandRecord) -> int | None:
    """When `decide` may next answer something other than WAIT; None once terminal."""
    if is_terminal(record):
        return None
    return min(record.next_retry_at_ms, record.deadline_ms)


def expire(record: CommandRecord, now: int) -> CommandRecord:
    if is_terminal(record):
        raise _refuse(record, "expire")
    if now < record.deadline_ms:
        raise FailedPreconditionError(
            f"command {record.command.command_id}: cannot expire before its deadline "
            f"{record.deadline_ms} (now {now})"
        )
    if record.status == PENDING_APPROVAL:
        return _finish(
            record, EXPIRED, now, f"nobody approved it by {record.approval.approve_by_ms}: not sent"
        )
    detail = f"TTL passed after {record.attempts} attempt(s)"
    if record.waiting:
        detail += f", waiting for the network server: {record.waiting}"
    return _finish(record, EXPIRED, now, detail)


def on_waiting(record: CommandRecord, reason: str) -> CommandRecord:
    """The network server holds a one-device command's frame (a gateway's duty cycle is
    spent): it sends it when the gateway allows, so sending it again would only queue a
    copy; wait for its ack until the deadline."""
    if is_terminal(record):
        raise _refuse(record, "wait")
    waiting = _copy(record)
    waiting.waiting = reason
    if record.command.target.WhichOneof("kind") == "dev_eui":
        waiting.next_retry_at_ms = max(record.next_retry_at_ms, record.deadline_ms)
    return waiting


def fail(record: CommandRecord, now: int, detail: str = "") -> CommandRecord:
    """FAILED from any live state: attempts exhausted, or a cause the caller names."""
    if is_terminal(record):
        raise _refuse(record, "fail")
    return _finish(record, FAILED, now, detail or f"no ack after {record.attempts} attempt(s)")


def supersede(record: CommandRecord, now: int, by: CommandRecord) -> CommandRecord:
    """SUPERSEDED from any live state: `by`, newer, sets the same group's state. Sending
    this one again would undo it; waiting for reports of this one would wait in vain."""
    if is_terminal(record):
        raise _refuse(record, "supersede")
    detail = f"superseded by {by.command.command_id}"
    if record.multicast:
        detail += f"; {record.acked_count} of {record.expected_acks} had confirmed it"
    return _finish(record, SUPERSEDED, now, detail)


def supersedes(newer: command_pb2.Command, older: command_pb2.Command) -> bool:
    """Does `newer` set the state `older` set, for the same devices? Both set a state the
    devices report (a lamp's profile or level, a bollard's position) of one group."""
    return (
        newer.command_id != older.command_id
        and newer.asset_class == older.asset_class
        and newer.target.WhichOneof("kind") == "group"
        and older.target.WhichOneof("kind") == "group"
        and newer.target.group == older.target.group
        and newer.WhichOneof("action") in STATE_ACTIONS
        and older.WhichOneof("action") in STATE_ACTIONS
    )
