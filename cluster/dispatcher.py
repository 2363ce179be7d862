"""The post's one writer: decisions and operator actions to control state and downlinks.

Policies and operators say what should happen; the dispatcher makes it so,
in the order of the contracts: a command is in the ledger before its first
downlink; every change of an alarm, task, incident, override or command is
audited; every write is fenced by the post's epoch. It keeps in memory what
it needs to decide quickly (active alarms, live tasks, pending commands,
active overrides) and loads it from the control state at start.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message

from actors.decisions import (
    ClearAlarm,
    Decision,
    IssueCommand,
    Notify,
    OpenIncident,
    RaiseAlarm,
    ReportMetric,
    RequestTask,
)
from actors.incidents import tasks_for
from bridges import chirpstack
from bridges.downlinks import downlinks, targets
from bridges.registry import DeviceRegistry
from cluster import alarm_book, audit, command_ledger, task_board
from cluster.errors import CitypostError, NotFoundError
from failover.control_state import (
    ControlState,
    alarm_key,
    audit_key,
    incident_key,
    ledger_key,
    notification_key,
    override_key,
    task_key,
)
from protos.citypost.v1 import assets_pb2, command_pb2, control_state_pb2, operations_pb2

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
M = TypeVar("M", bound=Message)


@dataclass
class DispatcherStats:
    commands_issued: int = 0
    commands_suppressed: int = 0  # a policy's command while an operator's override holds
    downlinks_sent: int = 0
    acks: int = 0
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        *,
        state: ControlState,
        registry: DeviceRegistry,
        publish: Publish,
        epoch: Callable[[], int],
        wall_ms: Callable[[], int],
        command_ttl_ms: int = 60_000,
        max_attempts: int = 3,
    ) -> None:
        self._state = state
        self._registry = registry
        self._publish = publish
        self._epoch = epoch
        self._wall_ms = wall_ms
        self._ttl_ms = command_ttl_ms
        self._max_attempts = max_attempts
        self._lock = (
            asyncio.Lock()
        )  # one writer at a time keeps in-memory views and the state in step
        self._alarms = alarm_book.AlarmIndex.of(())
        self._tasks = task_board.TaskIndex.of(())
        self._pending: dict[str, control_state_pb2.CommandRecord] = {}
        self._acked_by: dict[
            str, set[str]
        ] = {}  # command_id -> devEuis that acked (group commands)
        self._overrides: dict[tuple[int, str], control_state_pb2.Override] = {}
        self._incident_origins: set[str] = set()
        self.stats = DispatcherStats()

    # --- start ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Read what is live in the control state (after a restart or a promotion)."""
        alarms = await _all(self._state, "state/alarms/", operations_pb2.Alarm)
        self._alarms = alarm_book.AlarmIndex.of(alarms)
        tasks = await _all(self._state, "state/tasks/", operations_pb2.Task)
        self._tasks = task_board.TaskIndex.of(tasks)
        records = await _all(self._state, "ledger/", control_state_pb2.CommandRecord)
        self._pending = {
            r.command.command_id: r for r in records if not command_ledger.is_terminal(r)
        }
        overrides = await _all(self._state, "state/overrides/", control_state_pb2.Override)
        now = self._wall_ms()
        self._overrides = {(o.asset_class, o.group): o for o in overrides if o.ends_at_ms > now}

    # --- policy decisions ----------------------------------------------------------------

    async def apply(self, actor: str, decisions: Sequence[Decision]) -> None:
        """Carry out one actor's decisions, in order."""
        for decision in decisions:
            try:
                await self._apply_one(actor, decision)
            except CitypostError as error:
                # A refused decision (unknown target, illegal transition) must not stop the rest.
                log.warning("decision of %s refused: %s (%r)", actor, error, decision)

    async def _apply_one(self, actor: str, decision: Decision) -> None:
        if isinstance(decision, IssueCommand):
            await self.issue_command(
                decision.command,
                issued_by=actor,
                ttl_ms=int(decision.ttl_s * 1000) if decision.ttl_s else 0,
                reason=decision.reason,
                from_policy=True,
            )
        elif isinstance(decision, RaiseAlarm):
            await self._alarm_raise(actor, decision)
        elif isinstance(decision, ClearAlarm):
            await self._alarm_clear(actor, decision)
        elif isinstance(decision, RequestTask):
            await self._task_request(actor, decision)
        elif isinstance(decision, OpenIncident):
            await self._incident_open(actor, decision)
        elif isinstance(decision, Notify):
            await self._notify(actor, decision)
        elif isinstance(decision, ReportMetric):
            key = (decision.name, tuple(sorted(decision.attributes.items())))
            self.stats.metrics[key] = decision.value

    # --- commands ------------------------------------------------------------------------

    def override_for(self, asset_class: int, group: str) -> control_state_pb2.Override | None:
        override = self._overrides.get((asset_class, group))
        if override is not None and override.ends_at_ms <= self._wall_ms():
            return None
        return override

    async def issue_command(
        self,
        command: command_pb2.Command,
        *,
        issued_by: str,
        ttl_ms: int = 0,
        reason: str = "",
        idempotency_key: str = "",
        from_policy: bool = False,
    ) -> control_state_pb2.CommandRecord:
        """Ledger first (QUEUED), then the downlinks (SENT)."""
        async with self._lock:
            if from_policy:
                group = command.target.group or self._group_of(command.target.dev_eui)
                if self.override_for(command.asset_class, group) is not None:
                    self.stats.commands_suppressed += 1
                    return control_state_pb2.CommandRecord(command=command)
            now = self._wall_ms()
            issued = command_pb2.Command()
            issued.CopyFrom(command)
            issued.command_id = issued.command_id or str(uuid.uuid4())
            issued.epoch = self._epoch()
            issued.issued_at_ms = now
            issued.issued_by = issued_by
            issued.ttl_ms = ttl_ms or self._ttl_ms
            expected = len(targets(issued, self._registry))
            record = command_ledger.new_record(
                issued,
                issued.ttl_ms,
                self._max_attempts,
                now,
                idempotency_key,
                issued_by,
                expected_acks=expected,
            )
            note = audit.for_command(record, audit.Action.COMMAND_ISSUE, now, detail=reason)
            await self._write([(ledger_key(issued.command_id), record)], [note])
            self._pending[issued.command_id] = record
            self.stats.commands_issued += 1
            return await self._send(record)

    def _group_of(self, dev_eui: str) -> str:
        device = self._registry.get(dev_eui)
        return device.group if device is not None else ""

    async def _send(
        self, record: control_state_pb2.CommandRecord
    ) -> control_state_pb2.CommandRecord:
        now = self._wall_ms()
        sent = command_ledger.on_sent(record, now, epoch=self._epoch())
        for downlink in downlinks(sent.command, self._registry):
            self._publish(downlink.topic, downlink.payload)
            self.stats.downlinks_sent += 1
        note = audit.for_command(sent, audit.Action.COMMAND_SEND, now)
        await self._write([(ledger_key(sent.command.command_id), sent)], [note])
        self._pending[sent.command.command_id] = sent
        return sent

    async def on_acks(self, acks: Sequence[chirpstack.Ack]) -> None:
        async with self._lock:
            for ack in acks:
                self.stats.acks += 1
                record = self._pending.get(ack.queue_item_id)
                if record is None:
                    continue  # not ours, or already finished
                seen = self._acked_by.setdefault(ack.queue_item_id, set())
                if ack.acknowledged and ack.device.dev_eui in seen:
                    continue  # a device acks each resend; count it once
                if ack.acknowledged:
                    seen.add(ack.device.dev_eui)
                now = self._wall_ms()
                result = command_ledger.on_ack(record, ack.acknowledged, now)
                if result.ignored:
                    continue
                updated = result.record
                action = audit.Action.COMMAND_ACK if ack.acknowledged else audit.Action.COMMAND_NACK
                notes = []
                if command_ledger.is_terminal(updated) or not ack.acknowledged:
                    notes.append(audit.for_command(updated, action, now, detail=ack.device.dev_eui))
                await self._write([(ledger_key(updated.command.command_id), updated)], notes)
                self._settle(updated)

    def _settle(self, record: control_state_pb2.CommandRecord) -> None:
        command_id = record.command.command_id
        if command_ledger.is_terminal(record):
            self._pending.pop(command_id, None)
            self._acked_by.pop(command_id, None)
        else:
            self._pending[command_id] = record

    async def run_ledger(self) -> None:
        """Resend, expire or fail what is due; call it periodically."""
        async with self._lock:
            now = self._wall_ms()
            for record in list(self._pending.values()):
                action = command_ledger.decide(record, now)
                if action is command_ledger.Action.RESEND:
                    await self._send(record)
                elif action is command_ledger.Action.EXPIRE:
                    expired = command_ledger.expire(record, now)
                    note = audit.for_command(expired, audit.Action.COMMAND_EXPIRE, now)
                    await self._write([(ledger_key(record.command.command_id), expired)], [note])
                    self._settle(expired)
                elif action is command_ledger.Action.FAIL:
                    failed = command_ledger.fail(record, now)
                    note = audit.for_command(failed, audit.Action.COMMAND_FAIL, now)
                    await self._write([(ledger_key(record.command.command_id), failed)], [note])
                    self._settle(failed)

    def pending_commands(self) -> int:
        return len(self._pending)

    # --- alarms, tasks, incidents, notifications -----------------------------------------

    async def _alarm_raise(self, actor: str, decision: RaiseAlarm) -> None:
        async with self._lock:
            asset_class, group = _class_group(actor)
            change = alarm_book.raise_alarm(
                self._alarms,
                decision.originator,
                decision.type,
                decision.severity,
                decision.detail,
                self._wall_ms(),
                asset_class=asset_class,
                group=group,
                actor=actor,
            )
            if change.changed:
                await self._write(
                    [(alarm_key(change.alarm.alarm_id), change.alarm)], [change.audit]
                )
                self._alarms = self._alarms.with_alarm(change.alarm)

    async def _alarm_clear(self, actor: str, decision: ClearAlarm) -> None:
        async with self._lock:
            change = alarm_book.clear_alarm(
                self._alarms,
                decision.originator,
                decision.type,
                self._wall_ms(),
                detail=decision.detail,
                actor=actor,
            )
            if change is not None and change.changed:
                await self._write(
                    [(alarm_key(change.alarm.alarm_id), change.alarm)], [change.audit]
                )
                self._alarms = self._alarms.with_alarm(change.alarm)

    async def _task_request(self, actor: str, decision: RequestTask) -> None:
        async with self._lock:
            change = task_board.request_task(
                self._tasks,
                decision.department,
                decision.kind,
                decision.priority,
                decision.latitude,
                decision.longitude,
                decision.detail,
                decision.origin,
                self._wall_ms(),
                actor=actor,
            )
            if change.changed:
                await self._write([(task_key(change.task.task_id), change.task)], [change.audit])
                self._tasks = self._tasks.with_task(change.task)

    async def _incident_open(self, actor: str, decision: OpenIncident) -> None:
        async with self._lock:
            now = self._wall_ms()
            incident_id = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"incident:{decision.originator}:{now}")
            )
            incident = operations_pb2.Incident(
                incident_id=incident_id,
                kind=decision.kind,
                source=decision.source,
                location=operations_pb2.GeoPoint(
                    latitude=decision.latitude, longitude=decision.longitude
                ),
                commune=decision.commune,
                detail=decision.detail,
                priority=decision.priority,
                opened_at_ms=now,
                reported_by=decision.originator,
            )
            note = audit.draft(
                actor=actor,
                action=audit.Action.INCIDENT_OPEN,
                target=f"incident/{incident_id}",
                at_ms=now,
                detail=decision.detail,
            )
            await self._write([(incident_key(incident_id), incident)], [note])
        for request in tasks_for(decision, origin=f"incident/{incident_id}"):
            await self._task_request(actor, request)

    async def _notify(self, actor: str, decision: Notify) -> None:
        async with self._lock:
            now = self._wall_ms()
            notification_id = str(uuid.uuid4())
            # No SMS gateway here: the outbox records the message as delivered.
            notification = operations_pb2.Notification(
                notification_id=notification_id,
                recipient=decision.recipient,
                message=decision.message,
                origin=decision.origin,
                state=operations_pb2.DELIVERED,
                created_at_ms=now,
                updated_at_ms=now,
            )
            note = audit.draft(
                actor=actor,
                action=audit.Action.NOTIFY,
                target=f"notification/{notification_id}",
                at_ms=now,
                detail=decision.origin,
            )
            await self._write([(notification_key(notification_id), notification)], [note])

    # --- overrides -----------------------------------------------------------------------

    async def set_override(
        self, override: control_state_pb2.Override, *, set_by: str
    ) -> control_state_pb2.Override:
        async with self._lock:
            if not self._registry.group(override.asset_class, override.group):
                raise NotFoundError(f"no group {override.group!r} of that asset class")
            now = self._wall_ms()
            held = control_state_pb2.Override()
            held.CopyFrom(override)
            held.override_id = held.override_id or str(uuid.uuid4())
            held.set_by = set_by
            held.created_at_ms = now
            held.epoch = self._epoch()
            note = audit.draft(
                actor=set_by,
                action=audit.Action.OVERRIDE_SET,
                target=audit.override_target(held.override_id),
                at_ms=now,
                detail=held.reason,
            )
            await self._write([(override_key(held.override_id), held)], [note])
            self._overrides[(held.asset_class, held.group)] = held
        # The override's own action goes out at once, to the whole group.
        action = command_pb2.Command()
        action.CopyFrom(held.action)
        action.asset_class = held.asset_class
        action.target.group = held.group
        action.command_id = ""
        await self.issue_command(action, issued_by=set_by, reason=f"override: {held.reason}")
        return held

    def expired_overrides(self) -> list[control_state_pb2.Override]:
        """Overrides whose time is up: their groups go back to their policies."""
        now = self._wall_ms()
        done = [o for o in self._overrides.values() if o.ends_at_ms <= now]
        for override in done:
            self._overrides.pop((override.asset_class, override.group), None)
        return done

    # --- writing -------------------------------------------------------------------------

    async def _write(
        self,
        items: list[tuple[str, Message]],
        notes: Sequence[control_state_pb2.AuditEntry | None],
    ) -> None:
        epoch = self._epoch()
        batch: list[tuple[str, Message | None]] = list(items)
        for note in notes:
            if note is not None:
                stamped = audit.finalize(note, epoch=epoch)
                batch.append((audit_key(stamped.at_ms, stamped.entry_id), stamped))
        await self._state.put_many(batch, epoch=epoch)


def _class_group(actor: str) -> tuple[assets_pb2.AssetClass.ValueType, str]:
    """`policy:street_lamp/dijon-3` -> (STREET_LAMP, "dijon-3"); anything else -> (0, "")."""
    name, _, group = actor.removeprefix("policy:").partition("/")
    try:
        return assets_pb2.AssetClass.Value(name.upper()), group
    except ValueError:
        return assets_pb2.ASSET_CLASS_UNSPECIFIED, ""


async def _all(state: ControlState, prefix: str, message_type: type[M]) -> list[M]:
    out: list[M] = []
    start_after = ""
    while True:
        page = await state.list(prefix, message_type, limit=500, start_after=start_after)
        out.extend(entry.value for entry in page.entries)
        if page.next_start_after is None:
            return out
        start_after = page.next_start_after
