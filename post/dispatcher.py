"""The post's one writer: decisions and operator actions to control state and downlinks.

Policies and operators say what should happen; the dispatcher makes it so,
in the order of the contracts: a command is in the ledger before its first
downlink; every change of an alarm, task, incident, override or command is
audited; every write is fenced by the post's epoch. It keeps in memory what
it needs to decide quickly (active alarms, live tasks, pending commands,
active overrides) and loads it from the control state at start.

Operators' writes take an idempotency key: under the writer's lock the
dispatcher looks up `idempotency/<key>`; if a first request left a record
there, it answers with the record it points at and acts no more; otherwise it
writes the index entry in the same transaction as the change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
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
from bridges.downlinks import Downlink, downlinks, multicast, targets
from bridges.registry import Device, DeviceRegistry, RadioClass, radio_class
from citypost.config import ShelveLimits
from citypost.errors import (
    CitypostError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotLeaderError,
)
from failover.control_state import (
    ALARMS,
    AUDIT,
    INCIDENTS,
    LEDGER,
    OVERRIDES,
    TASKS,
    Change,
    ControlState,
    KeyExistsError,
    alarm_key,
    audit_key,
    idempotency_index_key,
    incident_key,
    key_id,
    ledger_key,
    list_all,
    namespace_of,
    notification_key,
    override_key,
    task_key,
)
from post import alarm_book, audit, command_ledger, task_board
from post.confirmation import Confirmations, goes_by_multicast
from post.ledger_batch import LedgerBatch
from protos.citypost.v1 import assets_pb2, command_pb2, control_state_pb2, operations_pb2

log = logging.getLogger(__name__)

Publish = Callable[[Downlink], None]
M = TypeVar("M", bound=Message)
T = TypeVar("T")


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
        write_window_s: Callable[[], float | None] = lambda: None,
        command_ttl_ms: int = 60_000,
        max_attempts: int = 3,
        confirmations: Confirmations | None = None,
        report_wall_per_sim_s: float = 0.0,
    ) -> None:
        self._state = state
        self._registry = registry
        self._publish = publish
        self._epoch = epoch
        self._write_window_s = write_window_s
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
        # Finished commands, in the order they finished: command_id -> (finished_at_ms,
        # idempotency key); what the retention sweep takes out of etcd when they are old.
        self._finished: dict[str, tuple[int, str]] = {}
        self._overrides: dict[tuple[int, str], control_state_pb2.Override] = {}
        self._incident_origins: set[str] = set()
        # command_id -> the epoch of this process's last frames for it: what a promotion
        # need not send again (replay_pending).
        self._on_air: dict[str, int] = {}
        # Who reported the state of each open multicast: fed by the edge's telemetry.
        self.confirmations = confirmations or Confirmations(registry)
        # Real seconds per simulated second of a device's reporting interval (the sim's
        # interval factor over its speed): how long a device takes to report, here.
        self._report_scale = report_wall_per_sim_s
        self.stats = DispatcherStats()

    # --- start ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Read what is live in the control state (after a restart or a promotion)."""
        # Under the lock: a command issued while it reads would otherwise be dropped from
        # the views it replaces (its frames sent, then never retried nor settled).
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        alarms = await _all(self._state, "state/alarms/", operations_pb2.Alarm)
        self._alarms = alarm_book.AlarmIndex.of(alarms)
        tasks = await _all(self._state, "state/tasks/", operations_pb2.Task)
        self._tasks = task_board.TaskIndex.of(tasks)
        records = await _all(self._state, "ledger/", control_state_pb2.CommandRecord)
        self._pending = {
            r.command.command_id: r for r in records if not command_ledger.is_terminal(r)
        }
        finished = sorted(
            (r for r in records if command_ledger.is_terminal(r)), key=lambda r: r.finished_at_ms
        )
        self._finished = {
            r.command.command_id: (r.finished_at_ms, r.idempotency_key) for r in finished
        }
        for record in self._pending.values():
            if record.multicast and record.status != command_ledger.PENDING_APPROVAL:
                self.confirmations.watch(record)
        overrides = await _all(self._state, "state/overrides/", control_state_pb2.Override)
        now = self._wall_ms()
        self._overrides = {(o.asset_class, o.group): o for o in overrides if o.ends_at_ms > now}

    def apply_change(self, change: Change, *, own: bool = False) -> None:
        """Follow another post's write (a standby watching the leader's control state)
        so that, promoted, this dispatcher carries on from where the leader was.

        `own`: this post leads and the change is its own write, already applied when the
        write returned; save a command's entry it does not hold: a write it gave up on
        (its lead ended while writing) that landed after all. Taken here, the ledger loop
        and the next promotion's replay see it."""
        namespace = namespace_of(change.key) if change.key else ""
        if own and (namespace != LEDGER or self._holds(key_id(change.key))):
            return
        if namespace == LEDGER:
            record = change.decode(control_state_pb2.CommandRecord)
            if record is None:
                self._pending.pop(key_id(change.key), None)
                self._finished.pop(key_id(change.key), None)  # the leader's retention
            else:
                self._settle(record)
        elif namespace == ALARMS:
            alarm = change.decode(operations_pb2.Alarm)
            if alarm is not None:
                self._alarms = self._alarms.with_alarm(alarm)
        elif namespace == TASKS:
            task = change.decode(operations_pb2.Task)
            if task is not None:
                self._tasks = self._tasks.with_task(task)
        elif namespace == OVERRIDES:
            override = change.decode(control_state_pb2.Override)
            gone = key_id(change.key)
            self._overrides = {k: o for k, o in self._overrides.items() if o.override_id != gone}
            if override is not None and override.ends_at_ms > self._wall_ms():
                self._overrides[(override.asset_class, override.group)] = override

    async def mark_takeover(self, post_name: str) -> int:
        """Audit that this post leads now; returns the entry's revision. Fenced like any
        write, so it comes after everything the old leader wrote: a watcher that
        delivered it has applied all of that."""
        now = self._wall_ms()
        note = audit.draft(
            actor=audit.post_actor(post_name),
            action=audit.Action.LEADERSHIP_TAKE,
            target=f"post/{post_name}",
            at_ms=now,
            detail=f"epoch {self._epoch()}",
        )
        stamped = audit.finalize(note, epoch=self._epoch())
        return await self._state.put(
            audit_key(stamped.at_ms, stamped.entry_id), stamped, epoch=stamped.epoch
        )

    def _holds(self, command_id: str) -> bool:
        return command_id in self._pending or command_id in self._finished

    async def replay_pending(self) -> int:
        """A promoted leader sends every unfinished command this process has not put on
        air under the current epoch, with the same command_id (devices execute a
        command_id once). Under a new epoch that is all of them: the old leader's last
        frames may have died with it. Under the epoch it led with before (its lease held
        through a blink), only those whose write it gave up on and that landed after all:
        nothing else would send them (an operator's retry finds them written and acts no
        more). Returns how many. A command waiting for approval still waits."""
        epoch = self._epoch()
        sent = 0
        for command_id in list(self._pending):
            # One at a time under the lock: operators' new commands need not wait for all.
            async with self._lock:
                record = self._pending.get(command_id)
                if record is None or record.status == command_ledger.PENDING_APPROVAL:
                    continue  # finished meanwhile (an ack), or not to be sent yet
                if self._on_air.get(command_id) == epoch:
                    continue  # on air under this epoch already
                try:
                    await self._send(record)
                    sent += 1
                except FailedPreconditionError as error:
                    # No attempt or time left: the ledger loop fails or expires it.
                    log.info("not replaying %s: %s", command_id, error.message)
        return sent

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
            await self.open_incident(decision, opened_by=actor)
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
        approval: control_state_pb2.Approval | None = None,
    ) -> control_state_pb2.CommandRecord:
        """Ledger first (queued and sent, in one transaction), then the downlinks.

        With an `idempotency_key` a repeated call answers with the ledger entry
        of the first one (as it is now) and sends nothing. With an `approval` (a
        dangerous command, security/approval.py) it is written PENDING_APPROVAL and
        nothing is sent until `decide_approval`; an emergency's approval sends it at
        once and raises an alarm for the room in the same transaction.
        """
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
            if not issued.priority:
                issued.priority = _priority(issued, from_policy)
            reached = targets(issued, self._registry)
            expected = len(reached)
            by_multicast = goes_by_multicast(issued)
            if by_multicast or _waits_for_uplinks(reached):
                # Confirmed by what the devices report, or sent in a class A device's
                # receive windows: no sooner than its reports come.
                issued.ttl_ms = max(issued.ttl_ms, self._report_ttl_ms(reached))
            waits = approval is not None and not approval.emergency
            record = command_ledger.new_record(
                issued,
                issued.ttl_ms,
                self._max_attempts,
                now,
                idempotency_key,
                issued_by,
                expected_acks=expected,
                multicast=by_multicast,
                approval=approval if waits else None,
            )
            if approval is not None and approval.emergency:
                record.approval.CopyFrom(approval)
            note = audit.for_command(record, audit.Action.COMMAND_ISSUE, now, detail=reason)
            key = ledger_key(issued.command_id)
            index = self._index(idempotency_key, key, issued_by, now)
            if waits:
                asked = audit.for_command(
                    record, audit.Action.COMMAND_APPROVAL_ASK, now, detail=record.approval.danger
                )
                return await self._write_first(
                    record, [(key, record), *index], [note, asked], idempotency_key, issued_by
                )
            alarm = None
            superseded, writes, notes = self._superseded_by(record, now)
            # Queued and sent in one transaction (one round trip to etcd, not two), still
            # before any frame goes out: if this post dies in between, the next leader
            # sends it, as it sends every unacknowledged command.
            sent, frames, send_note = self._attempt(record)
            if approval is not None and approval.emergency:
                alarm, alarm_note = self._emergency_alarm(sent, now)
                writes.append((alarm_key(alarm.alarm_id), alarm))
                notes.extend([alarm_note, self._emergency_note(sent, now, reason)])
            first = await self._write_first(
                sent,
                [(key, sent), *index, *writes],
                [note, send_note, *notes],
                idempotency_key,
                issued_by,
            )
            if first is not sent:
                return first  # a repeated request: nothing sent
            if alarm is not None:
                self._alarms = self._alarms.with_alarm(alarm)
            for finished in superseded:
                self._settle(finished)
            self.stats.commands_issued += 1
            self._publish_all(frames, [sent])
            return sent

    def _superseded_by(
        self, record: control_state_pb2.CommandRecord, now: int
    ) -> tuple[
        list[control_state_pb2.CommandRecord],
        list[tuple[str, Message | None]],
        list[control_state_pb2.AuditEntry | None],
    ]:
        """The older live commands `record` supersedes (they set the same group's state:
        re-sent, one would undo it, as dusk's profile after the night's), their ledger
        writes and audit notes, for the transaction that sends `record`."""
        superseded = [
            command_ledger.supersede(older, now, record)
            for older in self._pending.values()
            if command_ledger.supersedes(record.command, older.command)
        ]
        writes: list[tuple[str, Message | None]] = [
            (ledger_key(s.command.command_id), s) for s in superseded
        ]
        notes: list[control_state_pb2.AuditEntry | None] = [
            audit.for_command(s, audit.Action.COMMAND_SUPERSEDE, now, detail=s.detail)
            for s in superseded
        ]
        return superseded, writes, notes

    async def _write_first(
        self,
        record: control_state_pb2.CommandRecord,
        items: list[tuple[str, Message | None]],
        notes: list[control_state_pb2.AuditEntry | None],
        idempotency_key: str,
        issued_by: str,
    ) -> control_state_pb2.CommandRecord:
        """Write a new command's entry, only if its idempotency key is new (the check and
        the write in one round trip to etcd); a repeated request gets the first one's
        entry as it is now, and the caller acts no more."""
        absent = [idempotency_index_key(idempotency_key)] if idempotency_key else []
        try:
            await self._write(items, notes, absent=absent)
        except KeyExistsError:
            prior = await self._prior(
                idempotency_key, control_state_pb2.CommandRecord, LEDGER, actor=issued_by
            )
            if prior is None:  # the key expired in between: it cannot be told apart
                raise FailedPreconditionError(
                    f"idempotency_key {idempotency_key!r}: its record went away while "
                    "this request was written; send it again"
                ) from None
            return prior
        self._settle(record)
        return record

    def _emergency_alarm(
        self, record: control_state_pb2.CommandRecord, now: int
    ) -> tuple[operations_pb2.Alarm, control_state_pb2.AuditEntry | None]:
        """The room sees every emergency: one critical alarm per command, raised with it."""
        command = record.command
        change = alarm_book.raise_alarm(
            self._alarms,
            f"command/{command.command_id}",
            EMERGENCY_ALARM,
            operations_pb2.CRITICAL,
            f"{record.issued_by} sent without approval: {record.approval.danger}",
            now,
            asset_class=command.asset_class,
            group=command.target.group,
            actor=record.issued_by,
        )
        return change.alarm, change.audit

    @staticmethod
    def _emergency_note(
        record: control_state_pb2.CommandRecord, now: int, reason: str
    ) -> control_state_pb2.AuditEntry:
        return audit.for_command(
            record,
            audit.Action.COMMAND_EMERGENCY,
            now,
            detail=f"{record.approval.danger}; without approval: {reason}",
        )

    async def decide_approval(
        self,
        command_id: str,
        *,
        approve: bool,
        by: str,
        reason: str = "",
        check: Callable[[control_state_pb2.CommandRecord], None] = lambda _: None,
        idempotency_key: str = "",
    ) -> control_state_pb2.CommandRecord:
        """A second person's decision on a PENDING_APPROVAL command; `check` raises if `by`
        may not decide it (it sees the record). Approved, it is sent at once, in the same
        way as any new command (ledger first); rejected, it is over."""
        async with self._lock:
            key = ledger_key(command_id)
            if idempotency_key:
                prior = await self._prior(
                    idempotency_key, control_state_pb2.CommandRecord, LEDGER, actor=by
                )
                if prior is not None:
                    return prior
            record = self._pending.get(command_id)
            if record is None:
                record = await self._state.get(key, control_state_pb2.CommandRecord)
            if record is None:
                raise NotFoundError(f"command {command_id!r} does not exist")
            check(record)
            now = self._wall_ms()
            index = self._index(idempotency_key, key, by, now)
            if not approve:
                rejected = command_ledger.reject(record, by, now, reason)
                note = audit.for_command(
                    rejected, audit.Action.COMMAND_REJECT, now, actor=by, detail=reason
                )
                await self._write([(key, rejected), *index], [note])
                self._settle(rejected)
                return rejected
            approved = command_ledger.approve(record, by, now, reason)
            note = audit.for_command(
                approved, audit.Action.COMMAND_APPROVE, now, actor=by, detail=reason
            )
            superseded, writes, notes = self._superseded_by(approved, now)
            sent, frames, send_note = self._attempt(approved)
            await self._write([(key, sent), *index, *writes], [note, send_note, *notes])
            for finished in superseded:
                self._settle(finished)
            self._settle(sent)
            self._publish_all(frames, [sent])
            return sent

    def _report_ttl_ms(self, devices: Sequence[Device]) -> int:
        """Long enough for the slowest of `devices` to report twice (one report may be
        lost, or sent just before it acted)."""
        slowest = max((d.report_interval_s for d in devices), default=0.0)
        return int(REPORTS_TO_WAIT * slowest * self._report_scale * 1000)

    def _group_of(self, dev_eui: str) -> str:
        device = self._registry.get(dev_eui)
        return device.group if device is not None else ""

    async def _send(
        self, record: control_state_pb2.CommandRecord, *, stragglers_only: bool = False
    ) -> control_state_pb2.CommandRecord:
        sent, frames, note = self._attempt(record, stragglers_only=stragglers_only)
        await self._write([(ledger_key(sent.command.command_id), sent)], [note])
        self._settle(sent)
        self._publish_all(frames, [sent])
        return sent

    def _attempt(
        self, record: control_state_pb2.CommandRecord, *, stragglers_only: bool = False
    ) -> tuple[control_state_pb2.CommandRecord, list[Downlink], control_state_pb2.AuditEntry]:
        """The next attempt at a command: the record as sent, its frames and its audit note.
        The caller writes the record, then publishes the frames: an attempt is in the ledger
        before it is on air."""
        now = self._wall_ms()
        sent = command_ledger.on_sent(record, now, epoch=self._epoch())
        if stragglers_only:
            # A multicast's retry: one unicast to each device not yet confirmed, when they
            # are few (the gate paces them within the duty cycle); when many did not
            # confirm, the multicast again: one frame per gateway instead of thousands.
            confirmed = self.confirmations.confirmed(sent.command.command_id)
            stragglers = [
                d for d in downlinks(sent.command, self._registry) if d.dev_eui not in confirmed
            ]
            few = len(stragglers) <= MAX_STRAGGLER_UNICASTS
            frames = stragglers if few else [multicast(sent.command, self._registry)]
        elif sent.multicast:
            frames = [multicast(sent.command, self._registry)]
        else:
            frames = downlinks(sent.command, self._registry)
        return sent, frames, audit.for_command(sent, audit.Action.COMMAND_SEND, now)

    def _publish_all(
        self, frames: Sequence[Downlink], sent: Sequence[control_state_pb2.CommandRecord]
    ) -> None:
        """Put on air the frames of the attempts `sent` (already in the ledger)."""
        for downlink in frames:
            self._publish(downlink)
            self.stats.downlinks_sent += 1
        for record in sent:
            self._on_air[record.command.command_id] = record.command.epoch

    async def on_acks(self, acks: Sequence[chirpstack.Ack | chirpstack.LogEvent]) -> None:
        async with self._lock:
            batch = LedgerBatch()
            for ack in acks:
                if isinstance(ack, chirpstack.LogEvent):
                    self._on_log(ack, batch)
                    continue
                self.stats.acks += 1
                record = batch.current(ack.queue_item_id, self._pending)
                if record is None or record.multicast or command_ledger.is_terminal(record):
                    # Not ours, already finished, or a multicast's straggler retry: those
                    # are confirmed by the state the devices report, not by acks.
                    continue
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
                note = None
                if command_ledger.is_terminal(updated) or not ack.acknowledged:
                    note = audit.for_command(updated, action, now, detail=ack.device.dev_eui)
                batch.add(updated, [note])
            await self._write_ledger(batch)

    def _on_log(self, event: chirpstack.LogEvent, batch: LedgerBatch) -> None:
        """What the network server (or the gate) says of a frame: it waits, or it was refused.
        A refusal ends a command to one device at once (FAILED, with the reason a person can
        act on) instead of after its retries; a wait is noted on the record."""
        record = batch.current(event.context.get("queue_item_id", ""), self._pending)
        if record is None or command_ledger.is_terminal(record):
            return  # not ours, or already finished
        now = self._wall_ms()
        reason = f"{event.code}: {event.description}" if event.description else event.code
        if event.level == "ERROR" and record.command.target.WhichOneof("kind") == "dev_eui":
            failed = command_ledger.fail(record, now, detail=reason)
            batch.add(
                failed, [audit.for_command(failed, audit.Action.COMMAND_FAIL, now, detail=reason)]
            )
            return
        if record.waiting == reason:
            return
        batch.add(command_ledger.on_waiting(record, reason))

    async def _write_ledger(self, batch: LedgerBatch) -> None:
        """Write a pass's ledger changes (a few transactions), then take them as settled."""
        for records, notes in batch.chunks(LEDGER_BATCH):
            await self._write([(ledger_key(r.command.command_id), r) for r in records], notes)
            for record in records:
                self._settle(record)

    def _settle(self, record: control_state_pb2.CommandRecord) -> None:
        command_id = record.command.command_id
        if command_ledger.is_terminal(record):
            self._pending.pop(command_id, None)
            self._on_air.pop(command_id, None)
            self._acked_by.pop(command_id, None)
            self.confirmations.forget(command_id)
            if command_id not in self._finished:
                self._finished[command_id] = (record.finished_at_ms, record.idempotency_key)
        else:
            self._pending[command_id] = record
            if record.multicast and record.status != command_ledger.PENDING_APPROVAL:
                self.confirmations.watch(record)

    async def run_ledger(self) -> None:
        """Resend, expire or fail what is due; call it periodically."""
        async with self._lock:
            now = self._wall_ms()
            batch = LedgerBatch()
            frames: list[Downlink] = []
            resends: list[control_state_pb2.CommandRecord] = []
            for record in list(self._pending.values()):
                if record.multicast and record.status == command_ledger.SENT:
                    record = self._count_confirmations(record, now, batch)
                action = command_ledger.decide(record, now)
                if action is command_ledger.Action.RESEND:
                    sent, resent, note = self._attempt(
                        record, stragglers_only=record.multicast and record.attempts > 0
                    )
                    batch.add(sent, [note])
                    frames.extend(resent)
                    resends.append(sent)
                elif (
                    action is command_ledger.Action.EXPIRE
                    and record.multicast
                    and record.status != command_ledger.PENDING_APPROVAL
                ):
                    batch.add(*self._settle_multicast(record, now))
                elif action is command_ledger.Action.EXPIRE:
                    expired = command_ledger.expire(record, now)
                    batch.add(
                        expired, [audit.for_command(expired, audit.Action.COMMAND_EXPIRE, now)]
                    )
                elif action is command_ledger.Action.FAIL:
                    failed = command_ledger.fail(record, now)
                    batch.add(failed, [audit.for_command(failed, audit.Action.COMMAND_FAIL, now)])
            await self._write_ledger(batch)
            self._publish_all(frames, resends)  # after the attempts are in the ledger

    def _count_confirmations(
        self, record: control_state_pb2.CommandRecord, now: int, batch: LedgerBatch
    ) -> control_state_pb2.CommandRecord:
        """A multicast's confirmed count, into the pass's batch when it grew (once per ledger
        tick, not per uplink: a dusk brings thousands of reports)."""
        command_id = record.command.command_id
        updated = command_ledger.on_confirmed(record, self.confirmations.count(command_id), now)
        if updated is record:
            return record
        note = None
        if command_ledger.is_terminal(updated):
            detail = f"all {updated.expected_acks} devices reported the commanded state"
            note = audit.for_command(updated, audit.Action.COMMAND_ACK, now, detail=detail)
        batch.add(updated, [note])
        return updated

    def _settle_multicast(
        self, record: control_state_pb2.CommandRecord, now: int
    ) -> tuple[control_state_pb2.CommandRecord, list[control_state_pb2.AuditEntry]]:
        command_id = record.command.command_id
        confirmed = self.confirmations.confirmed(command_id)
        stragglers = [
            d.dev_eui for d in targets(record.command, self._registry) if d.dev_eui not in confirmed
        ]
        settled = command_ledger.settle(record, now, stragglers)
        note = audit.for_command(settled, audit.Action.COMMAND_EXPIRE, now, detail=settled.detail)
        return settled, [note]

    def pending_commands(self) -> int:
        return len(self._pending)

    async def expire_finished(self, retention_ms: int) -> int:
        """Take finished commands older than `retention_ms` out of the control state, with
        their idempotency records, so etcd holds what is live and recent, not all history
        (its quota, 2 GiB by default, would end every write). Each batch goes with one
        audit entry saying what expired; the posts' audit files keep everything. Returns
        how many commands expired."""
        async with self._lock:
            now = self._wall_ms()
            cutoff = now - retention_ms
            due: list[tuple[str, int, str]] = []
            for command_id, (finished_at, key) in self._finished.items():
                if finished_at >= cutoff:
                    break  # in finishing order: the rest are younger
                due.append((command_id, finished_at, key))
            for start in range(0, len(due), EXPIRE_BATCH):
                chunk = due[start : start + EXPIRE_BATCH]
                items: list[tuple[str, Message | None]] = []
                for command_id, _, key in chunk:
                    items.append((ledger_key(command_id), None))
                    if key:
                        items.append((idempotency_index_key(key), None))
                note = audit.draft(
                    actor=audit.SYSTEM_ACTOR,
                    action=audit.Action.RETENTION_EXPIRE,
                    target="ledger",
                    at_ms=now,
                    detail=(
                        f"{len(chunk)} finished command(s), finished {chunk[0][1]}..{chunk[-1][1]} "
                        f"ms, and {len(items) - len(chunk)} idempotency record(s) expired after "
                        f"{retention_ms / 1000:g} s"
                    ),
                )
                await self._write(items, [note])
                for command_id, _, _ in chunk:
                    self._finished.pop(command_id, None)
            return len(due)

    async def expire_audit(self, retention_ms: int) -> int:
        """Audit entries older than `retention_ms` leave etcd, oldest first (their keys
        are in time order); every post keeps them all in its audit file. Returns how many
        went."""
        async with self._lock:
            now = self._wall_ms()
            cutoff = now - retention_ms
            gone = 0
            while True:
                page = await self._state.list(
                    AUDIT, control_state_pb2.AuditEntry, limit=EXPIRE_BATCH * 2
                )
                old = [e.key for e in page.entries if e.value.at_ms < cutoff]
                if old:
                    await self._write([(key, None) for key in old], [])
                    gone += len(old)
                if len(old) < EXPIRE_BATCH * 2:
                    return gone

    # --- alarms, tasks, incidents, notifications -----------------------------------------

    async def _alarm_raise(self, actor: str, decision: RaiseAlarm) -> None:
        async with self._lock:
            asset_class, group = _class_group(actor)
            device = self._registry.get(decision.originator)
            if device is not None:  # a device's alarm is its class's, whoever raised it
                asset_class, group = device.asset_class, device.group
            suppressed_by = ""
            if decision.cause is not None:
                cause = self._alarms.active(*decision.cause)
                # A cause not (yet) raised suppresses nothing: the alarm is annunciated.
                suppressed_by = cause.alarm_id if cause is not None else ""
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
                suppressed_by=suppressed_by,
                suppressed_count=decision.suppressed_count,
                chattering=decision.chattering,
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
        self, override: control_state_pb2.Override, *, set_by: str, idempotency_key: str = ""
    ) -> control_state_pb2.Override:
        """Hold a group at the override's action until `ends_at_ms`; one override per group."""
        async with self._lock:
            prior = await self._prior(
                idempotency_key, control_state_pb2.Override, OVERRIDES, actor=set_by
            )
            if prior is not None:
                return prior
            if not self._registry.group(override.asset_class, override.group):
                raise NotFoundError(f"no group {override.group!r} of that asset class")
            holding = self.override_for(override.asset_class, override.group)
            if holding is not None:
                raise FailedPreconditionError(
                    f"group {override.group!r} is already held by override "
                    f"{holding.override_id} until {holding.ends_at_ms}: end it first (EndOverride)"
                )
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
            key = override_key(held.override_id)
            index = self._index(idempotency_key, key, set_by, now)
            await self._write([(key, held), *index], [note])
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

    async def end_override(
        self, override_id: str, *, ended_by: str, reason: str = "", idempotency_key: str = ""
    ) -> control_state_pb2.Override:
        """End an override now; the post's ledger loop sees it in `expired_overrides`
        and lets the group's policy put the group back where it wants it."""
        async with self._lock:
            key = override_key(override_id)
            prior = await self._prior(
                idempotency_key,
                control_state_pb2.Override,
                OVERRIDES,
                actor=ended_by,
                result_key=key,
            )
            if prior is not None:
                return prior
            held = await self._state.get(key, control_state_pb2.Override)
            if held is None:
                raise NotFoundError(f"override {override_id!r} does not exist")
            now = self._wall_ms()
            if held.ends_at_ms <= now:
                raise FailedPreconditionError(
                    f"override {override_id} already ended (at {held.ends_at_ms})"
                )
            ended = control_state_pb2.Override()
            ended.CopyFrom(held)
            ended.ends_at_ms = now
            note = audit.draft(
                actor=ended_by,
                action=audit.Action.OVERRIDE_END,
                target=audit.override_target(override_id),
                at_ms=now,
                detail=reason or "ended early",
            )
            await self._write(
                [(key, ended), *self._index(idempotency_key, key, ended_by, now)], [note]
            )
            group = (ended.asset_class, ended.group)
            current = self._overrides.get(group)
            if current is None or current.override_id == override_id:
                self._overrides[group] = ended  # expired_overrides() hands it to the post
            return ended

    # --- operators' alarm and task actions -----------------------------------------------

    def active_alarm_counts(self) -> dict[str, int]:
        """Active alarms per originator (a devEui, or `<class>/<group>`)."""
        counts: dict[str, int] = {}
        for originator, _ in self._alarms.by_key:
            counts[originator] = counts.get(originator, 0) + 1
        return counts

    def active_alarm_keys(self) -> list[tuple[str, str]]:
        """(originator, type) of every active alarm."""
        return list(self._alarms.by_key)

    def shelved_alarms(self) -> int:
        """Active alarms shelved now."""
        now = self._wall_ms()
        return sum(1 for a in self._alarms.by_key.values() if a.shelved_until_ms > now)

    async def acknowledge_alarm(
        self, alarm_id: str, *, operator: str, comment: str = "", idempotency_key: str = ""
    ) -> operations_pb2.Alarm:
        return await self._operator_alarm_action(
            alarm_id,
            operator,
            idempotency_key,
            comment,
            lambda alarm, now: alarm_book.acknowledge(alarm, operator, now),
        )

    async def clear_alarm(
        self, alarm_id: str, *, operator: str, comment: str = "", idempotency_key: str = ""
    ) -> operations_pb2.Alarm:
        """An operator declares the cause gone (acknowledging is a separate act)."""
        who = audit.operator_actor(operator)
        return await self._operator_alarm_action(
            alarm_id,
            operator,
            idempotency_key,
            comment,
            lambda alarm, now: alarm_book.clear(alarm, now, detail=f"cleared by {who}", actor=who),
        )

    async def shelve_alarm(
        self,
        alarm_id: str,
        *,
        operator: str,
        minutes: float,
        reason: str,
        max_minutes: ShelveLimits,
        idempotency_key: str = "",
    ) -> operations_pb2.Alarm:
        """An operator takes an active alarm out of the list for `minutes`, saying why; at
        most `max_minutes` for its severity (the alarm's as it is when written, whatever
        the caller read before). `unshelve_expired` brings it back when the time is up."""
        if not math.isfinite(minutes):
            raise InvalidArgumentError(f"minutes: must be a finite number, got {minutes}")

        def shelve(alarm: operations_pb2.Alarm, now: int) -> alarm_book.AlarmChange:
            until = now + round(minutes * alarm_book.MS_PER_MINUTE)
            return alarm_book.shelve(alarm, operator, until, reason, now, limits=max_minutes)

        return await self._operator_alarm_action(alarm_id, operator, idempotency_key, "", shelve)

    async def unshelve_alarm(
        self, alarm_id: str, *, operator: str, comment: str = "", idempotency_key: str = ""
    ) -> operations_pb2.Alarm:
        """An operator puts a shelved alarm back in the list before its time is up."""
        who = audit.operator_actor(operator)
        return await self._operator_alarm_action(
            alarm_id,
            operator,
            idempotency_key,
            comment,
            lambda alarm, now: alarm_book.unshelve(
                alarm, now, by=who, detail=f"unshelved by {who}"
            ),
        )

    async def _operator_alarm_action(
        self,
        alarm_id: str,
        operator: str,
        idempotency_key: str,
        comment: str,
        change_of: Callable[[operations_pb2.Alarm, int], alarm_book.AlarmChange],
    ) -> operations_pb2.Alarm:
        """One operator's change of one alarm: answered once per idempotency key, decided
        on the alarm as it is under the lock, written with its audit entry."""
        async with self._lock:
            key = alarm_key(alarm_id)
            prior = await self._prior(
                idempotency_key, operations_pb2.Alarm, ALARMS, actor=operator, result_key=key
            )
            if prior is not None:
                return prior
            alarm = await self._existing_alarm(alarm_id)
            now = self._wall_ms()
            change = change_of(alarm, now)
            return await self._write_alarm(change, comment, idempotency_key, operator, now)

    async def unshelve_expired(self) -> int:
        """Every active alarm whose shelve time is up is back in the list, audited as the
        system's act; returns how many. For the leader's tick: cheap when none is due. A
        shelved alarm that cleared is not in the book of active ones and needs nothing."""
        if not alarm_book.due_to_unshelve(self._alarms.by_key.values(), self._wall_ms()):
            return 0
        async with self._lock:
            now = self._wall_ms()
            due = alarm_book.due_to_unshelve(self._alarms.by_key.values(), now)
            for start in range(0, len(due), UNSHELVE_BATCH):
                changes = [
                    alarm_book.unshelve(
                        alarm, now, by=audit.SYSTEM_ACTOR, detail="shelve time is up"
                    )
                    for alarm in due[start : start + UNSHELVE_BATCH]
                ]
                await self._write(
                    [(alarm_key(c.alarm.alarm_id), c.alarm) for c in changes],
                    [c.audit for c in changes],
                )
                for change in changes:
                    self._alarms = self._alarms.with_alarm(change.alarm)
            return len(due)

    async def _existing_alarm(self, alarm_id: str) -> operations_pb2.Alarm:
        alarm = await self._state.get(alarm_key(alarm_id), operations_pb2.Alarm)
        if alarm is None:
            raise NotFoundError(f"alarm {alarm_id!r} does not exist")
        return alarm

    async def _write_alarm(
        self,
        change: alarm_book.AlarmChange,
        comment: str,
        idempotency_key: str,
        operator: str,
        now: int,
    ) -> operations_pb2.Alarm:
        if change.audit is not None and comment:
            change.audit.detail += f": {comment}"
        key = alarm_key(change.alarm.alarm_id)
        index = self._index(idempotency_key, key, operator, now)
        await self._write([(key, change.alarm), *index], [change.audit])
        self._alarms = self._alarms.with_alarm(change.alarm)
        return change.alarm

    async def open_incident(
        self, decision: OpenIncident, *, opened_by: str, idempotency_key: str = ""
    ) -> operations_pb2.Incident:
        """An incident (a policy's, an operator's, a citizen's) and the departments' tasks
        for it, in one transaction."""
        async with self._lock:
            prior = await self._prior(
                idempotency_key, operations_pb2.Incident, INCIDENTS, actor=opened_by
            )
            if prior is not None:
                return prior
            now = self._wall_ms()
            incident_id = str(uuid.uuid4())
            incident, note = _incident_of(decision, incident_id, now, opened_by)
            key = incident_key(incident_id)
            items: list[tuple[str, Message]] = [(key, incident)]
            notes: list[control_state_pb2.AuditEntry | None] = [note]
            tasks = self._tasks
            for request in tasks_for(decision, origin=f"incident/{incident_id}"):
                change = task_board.request_task(
                    tasks,
                    request.department,
                    request.kind,
                    request.priority,
                    request.latitude,
                    request.longitude,
                    request.detail,
                    request.origin,
                    now,
                    actor=opened_by,
                )
                if change.changed:
                    items.append((task_key(change.task.task_id), change.task))
                    notes.append(change.audit)
                    tasks = tasks.with_task(change.task)
            items.extend(self._index(idempotency_key, key, opened_by, now))
            await self._write(items, notes)
            self._tasks = tasks
            return incident

    async def create_task(
        self, request: RequestTask, *, created_by: str, idempotency_key: str = ""
    ) -> operations_pb2.Task:
        """An operator's task; with an origin it merges into that origin's live task."""
        async with self._lock:
            prior = await self._prior(idempotency_key, operations_pb2.Task, TASKS, actor=created_by)
            if prior is not None:
                return prior
            now = self._wall_ms()
            change = task_board.request_task(
                self._tasks,
                request.department,
                request.kind,
                request.priority,
                request.latitude,
                request.longitude,
                request.detail,
                request.origin,
                now,
                actor=created_by,
                task_id="" if request.origin else str(uuid.uuid4()),
            )
            return await self._write_task(change, idempotency_key, created_by, now)

    async def assign_task(
        self, task_id: str, assignee: str, *, operator: str, idempotency_key: str = ""
    ) -> operations_pb2.Task:
        async with self._lock:
            prior = await self._prior(
                idempotency_key,
                operations_pb2.Task,
                TASKS,
                actor=operator,
                result_key=task_key(task_id),
            )
            if prior is not None:
                return prior
            task = await self._existing_task(task_id)
            now = self._wall_ms()
            change = task_board.assign(task, assignee, operator, now)
            return await self._write_task(change, idempotency_key, operator, now)

    async def close_task(
        self,
        task_id: str,
        *,
        operator: str,
        cancelled: bool,
        comment: str = "",
        idempotency_key: str = "",
    ) -> operations_pb2.Task:
        """DONE or CANCELLED. Done needs someone who did it: an ASSIGNED task is started
        and completed in one step (no RPC reports IN_PROGRESS yet); an OPEN one is refused."""
        async with self._lock:
            prior = await self._prior(
                idempotency_key,
                operations_pb2.Task,
                TASKS,
                actor=operator,
                result_key=task_key(task_id),
            )
            if prior is not None:
                return prior
            task = await self._existing_task(task_id)
            now = self._wall_ms()
            if cancelled:
                changes = [task_board.cancel(task, operator, now, reason=comment)]
            elif task.status == task_board.OPEN:
                raise FailedPreconditionError(
                    f"task {task_id} is OPEN: assign it (AssignTask) before closing it as done, "
                    "or close it as cancelled"
                )
            else:
                changes = []
                if task.status == task_board.ASSIGNED:
                    changes.append(task_board.start(task, operator, now))
                    task = changes[-1].task
                changes.append(task_board.complete(task, operator, now, detail=comment))
            final = changes[-1].task
            key = task_key(task_id)
            index = self._index(idempotency_key, key, operator, now)
            await self._write([(key, final), *index], [c.audit for c in changes])
            self._tasks = self._tasks.with_task(final)
            return final

    async def _existing_task(self, task_id: str) -> operations_pb2.Task:
        task = await self._state.get(task_key(task_id), operations_pb2.Task)
        if task is None:
            raise NotFoundError(f"task {task_id!r} does not exist")
        return task

    async def _write_task(
        self, change: task_board.TaskChange, idempotency_key: str, actor: str, now: int
    ) -> operations_pb2.Task:
        key = task_key(change.task.task_id)
        items: list[tuple[str, Message]] = [(key, change.task)] if change.changed else []
        items.extend(self._index(idempotency_key, key, actor, now))
        if items:
            await self._write(items, [change.audit])
        self._tasks = self._tasks.with_task(change.task)
        return change.task

    # --- idempotency ---------------------------------------------------------------------

    async def _prior(
        self,
        idempotency_key: str,
        message_type: type[M],
        namespace: str,
        *,
        actor: str,
        result_key: str = "",
    ) -> M | None:
        """The result of an earlier request with this key, or None for a first request.

        Call under the lock, so the check and the write of a first request are one step.
        """
        if not idempotency_key:
            return None
        index = await self._while_leading(
            self._state.get(
                idempotency_index_key(idempotency_key), control_state_pb2.IdempotencyRecord
            )
        )
        if index is None:
            return None
        same_kind = index.result_key.startswith(namespace)
        same_target = not result_key or index.result_key == result_key
        if not (same_kind and same_target and index.actor == actor):
            raise InvalidArgumentError(
                f"idempotency_key {idempotency_key!r} was already used for another request "
                f"({index.result_key}): send a new key with each new request"
            )
        first = await self._while_leading(self._state.get(index.result_key, message_type))
        if first is None:
            raise FailedPreconditionError(
                f"idempotency_key {idempotency_key!r}: the result of the first request "
                f"({index.result_key}) is gone"
            )
        return first

    @staticmethod
    def _index(
        idempotency_key: str, result_key: str, actor: str, now: int
    ) -> list[tuple[str, Message]]:
        """The index entry to write with a first request's change (none without a key)."""
        if not idempotency_key:
            return []
        record = control_state_pb2.IdempotencyRecord(
            idempotency_key=idempotency_key, result_key=result_key, created_at_ms=now, actor=actor
        )
        return [(idempotency_index_key(idempotency_key), record)]

    # --- writing -------------------------------------------------------------------------

    async def _write(
        self,
        items: Sequence[tuple[str, Message | None]],
        notes: Sequence[control_state_pb2.AuditEntry | None],
        *,
        absent: Sequence[str] = (),
    ) -> None:
        epoch = self._epoch()
        batch: list[tuple[str, Message | None]] = list(items)
        # An entry's id derives from its content: the same note twice in one pass (a
        # device's two nacks in one batch of acks) is one entry, and etcd refuses a
        # transaction that names a key twice.
        stamped_notes = {}
        for note in notes:
            if note is not None:
                stamped = audit.finalize(note, epoch=epoch)
                stamped_notes[audit_key(stamped.at_ms, stamped.entry_id)] = stamped
        batch.extend(stamped_notes.items())
        await self._while_leading(self._state.put_many(batch, epoch=epoch, absent=absent))

    async def _while_leading(self, call: Awaitable[T]) -> T:
        """Wait for an etcd call made for a write only while this post may still lead: past
        the instant its lease may have ended it has fenced itself, and the caller (and every
        write queued behind this one) hears "not the leader" at once instead of waiting on
        an etcd it cannot reach. An abandoned write may still land; its epoch fences it if
        another post leads, and an operator's retry with the same idempotency key finds it."""
        pending = asyncio.ensure_future(call)
        try:
            while True:
                window = self._write_window_s()
                if window is not None and window <= 0:
                    self._epoch()  # raises NotLeaderError, naming the leader when known
                    raise NotLeaderError("this post's lead ended while it was writing")
                done, _ = await asyncio.wait({pending}, timeout=window)
                if done:
                    return pending.result()
        finally:
            pending.cancel()  # a no-op once done


def _incident_of(
    decision: OpenIncident, incident_id: str, now: int, actor: str
) -> tuple[operations_pb2.Incident, control_state_pb2.AuditEntry]:
    incident = operations_pb2.Incident(
        incident_id=incident_id,
        kind=decision.kind,
        source=decision.source,
        location=operations_pb2.GeoPoint(latitude=decision.latitude, longitude=decision.longitude),
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
    return incident, note


# Finished commands expired per etcd transaction: a ledger key and an idempotency key each,
# and the audit entry, within etcd's 128 operations.
EXPIRE_BATCH = 60
# Ledger entries per transaction of a pass: with up to two audit notes each, within
# etcd's 128 operations per transaction.
LEDGER_BATCH = 40
# Alarms unshelved per transaction: an alarm and its audit entry each, within etcd's 128
# operations.
UNSHELVE_BATCH = 60
EMERGENCY_ALARM = "emergency_command"  # a dangerous command sent without a second person

REPORTS_TO_WAIT = 2
# Above this many stragglers a multicast's retry is the multicast again, not unicasts:
# 20 frames of ~0.35 s at DR3 are a few seconds of a gateway's 360 s an hour.
MAX_STRAGGLER_UNICASTS = 20


def _waits_for_uplinks(devices: Sequence[Device]) -> bool:
    return any(radio_class(d.asset_class) is RadioClass.A for d in devices)


def _priority(
    command: command_pb2.Command, from_policy: bool
) -> command_pb2.CommandPriority.ValueType:
    """Bollards (emergency access) first, then operators, then policies."""
    if command.WhichOneof("action") == "set_bollard_position":
        return command_pb2.PRIORITY_SAFETY
    return command_pb2.PRIORITY_POLICY if from_policy else command_pb2.PRIORITY_OPERATOR


def _class_group(actor: str) -> tuple[assets_pb2.AssetClass.ValueType, str]:
    """`policy:street_lamp/dijon-3` -> (STREET_LAMP, "dijon-3"); anything else -> (0, "")."""
    name, _, group = actor.removeprefix("policy:").partition("/")
    try:
        return assets_pb2.AssetClass.Value(name.upper()), group
    except ValueError:
        return assets_pb2.ASSET_CLASS_UNSPECIFIED, ""


async def _all(state: ControlState, prefix: str, message_type: type[M]) -> list[M]:
    return [entry.value for entry in await list_all(state, prefix, message_type)]
