"""The task lifecycle as pure functions over `Task` values.

    OPEN -> ASSIGNED -> IN_PROGRESS -> DONE, or CANCELLED from any live state.

At most one live (not DONE or CANCELLED) task per (origin, kind) when the
origin is set: requesting it again returns the live one, raising its priority
if the new request is more urgent. Tasks an operator creates without an
origin are never merged. Reassigning is allowed while live (a vehicle breaks
down mid-task): the task goes back to ASSIGNED under the new assignee.
Illegal transitions raise FailedPreconditionError; terminal states are final.

Every change returns the new task and an audit draft; no change, no draft.
`now` is wall-clock milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import audit
from protos.citypost.v1 import control_state_pb2, operations_pb2

Task = operations_pb2.Task
Status = operations_pb2.TaskStatus
Department = operations_pb2.Department

OPEN = operations_pb2.OPEN
ASSIGNED = operations_pb2.ASSIGNED
IN_PROGRESS = operations_pb2.IN_PROGRESS
DONE = operations_pb2.DONE
CANCELLED = operations_pb2.CANCELLED
LIVE: frozenset[Status.ValueType] = frozenset({OPEN, ASSIGNED, IN_PROGRESS})

_TASK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://citypost/task")


@dataclass(frozen=True)
class TaskChange:
    task: operations_pb2.Task
    audit: control_state_pb2.AuditEntry | None  # None: nothing changed, nothing to write

    @property
    def changed(self) -> bool:
        return self.audit is not None


class TaskBoardView(Protocol):
    """What `request_task` needs to know: the live task of an (origin, kind)."""

    def live(self, origin: str, kind: str) -> operations_pb2.Task | None: ...


@dataclass(frozen=True)
class TaskIndex:
    """A `TaskBoardView` over live tasks with an origin, keyed by (origin, kind)."""

    by_key: Mapping[tuple[str, str], operations_pb2.Task] = field(default_factory=dict)

    @classmethod
    def of(cls, tasks: Iterable[operations_pb2.Task]) -> TaskIndex:
        by_key: dict[tuple[str, str], operations_pb2.Task] = {}
        for task in tasks:
            if task.status not in LIVE or not task.origin:
                continue
            key = (task.origin, task.kind)
            if key in by_key:
                raise FailedPreconditionError(
                    f"two live tasks for {key}: {by_key[key].task_id} and {task.task_id}"
                )
            by_key[key] = task
        return cls(by_key)

    def live(self, origin: str, kind: str) -> operations_pb2.Task | None:
        return self.by_key.get((origin, kind))

    def with_task(self, task: operations_pb2.Task) -> TaskIndex:
        """The index after `task` was written: kept while live, dropped once terminal."""
        if not task.origin:
            return self
        by_key = dict(self.by_key)
        key = (task.origin, task.kind)
        if task.status in LIVE:
            by_key[key] = task
        elif key in by_key and by_key[key].task_id == task.task_id:
            del by_key[key]
        return TaskIndex(by_key)


def task_id_for(origin: str, kind: str, created_at_ms: int) -> str:
    """Stable for a task with an origin: every post computes the same id."""
    return str(uuid.uuid5(_TASK_NAMESPACE, f"{origin}\x00{kind}\x00{created_at_ms}"))


def is_live(task: operations_pb2.Task) -> bool:
    return task.status in LIVE


def _status_name(status: Status.ValueType) -> str:
    return operations_pb2.TaskStatus.Name(status)


def _copy(task: operations_pb2.Task) -> operations_pb2.Task:
    copied = operations_pb2.Task()
    copied.CopyFrom(task)
    return copied


def _refuse(task: operations_pb2.Task, what: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"task {task.task_id}: cannot {what} when {_status_name(task.status)}"
    )


def _check_request(
    department: Department.ValueType, kind: str, priority: int, latitude: float, longitude: float
) -> None:
    if department not in operations_pb2.Department.values() or department == 0:
        raise InvalidArgumentError(f"department must be a Department, got {department}")
    if not kind:
        raise InvalidArgumentError("kind must not be empty")
    if not 1 <= priority <= 5:
        raise InvalidArgumentError(f"priority must be in 1..5, got {priority}")
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        raise InvalidArgumentError(f"location ({latitude}, {longitude}) is not on Earth")


def _transition(
    task: operations_pb2.Task,
    status: Status.ValueType,
    action: audit.Action,
    actor: str,
    now: int,
    detail: str,
) -> TaskChange:
    changed = _copy(task)
    changed.status = status
    changed.updated_at_ms = now
    entry = audit.draft(
        actor=actor,
        action=action,
        target=audit.task_target(task.task_id),
        at_ms=now,
        detail=f"{_status_name(task.status)} -> {_status_name(status)}"
        + (f": {detail}" if detail else ""),
    )
    return TaskChange(changed, entry)


def request_task(
    board_view: TaskBoardView,
    department: Department.ValueType,
    kind: str,
    priority: int,
    latitude: float,
    longitude: float,
    detail: str,
    origin: str,
    now: int,
    *,
    actor: str = audit.SYSTEM_ACTOR,
    task_id: str = "",
) -> TaskChange:
    """Open a task, or return the live one of (origin, kind), more urgent if asked.

    `task_id` defaults to a stable id from (origin, kind, now); an operator's
    task without origin should pass one (e.g. derived from the idempotency key).
    """
    _check_request(department, kind, priority, latitude, longitude)
    existing = board_view.live(origin, kind) if origin else None
    if existing is not None:
        if priority >= existing.priority:
            return TaskChange(existing, None)
        urgent = _copy(existing)
        urgent.priority = priority
        urgent.updated_at_ms = now
        entry = audit.draft(
            actor=actor,
            action=audit.Action.TASK_REPRIORITIZE,
            target=audit.task_target(existing.task_id),
            at_ms=now,
            detail=f"priority {existing.priority} -> {priority}: {detail}",
        )
        return TaskChange(urgent, entry)
    if not task_id and not origin:
        raise InvalidArgumentError("task_id must be given for a task without origin")
    task = operations_pb2.Task(
        task_id=task_id or task_id_for(origin, kind, now),
        department=department,
        kind=kind,
        status=OPEN,
        priority=priority,
        detail=detail,
        origin=origin,
        created_at_ms=now,
        updated_at_ms=now,
    )
    task.location.latitude = latitude
    task.location.longitude = longitude
    entry = audit.draft(
        actor=actor,
        action=audit.Action.TASK_CREATE,
        target=audit.task_target(task.task_id),
        at_ms=now,
        detail=f"{kind} for {operations_pb2.Department.Name(department)}, priority {priority}"
        + (f", from {origin}" if origin else ""),
    )
    return TaskChange(task, entry)


def assign(task: operations_pb2.Task, assignee: str, actor: str, now: int) -> TaskChange:
    """OPEN -> ASSIGNED; a live task may be reassigned (back to ASSIGNED)."""
    if not assignee:
        raise InvalidArgumentError("assignee must not be empty")
    if task.status not in LIVE:
        raise _refuse(task, "assign")
    if task.assignee == assignee and task.status in (ASSIGNED, IN_PROGRESS):
        return TaskChange(task, None)
    change = _transition(task, ASSIGNED, audit.Action.TASK_ASSIGN, actor, now, f"to {assignee}")
    change.task.assignee = assignee
    return change


def start(task: operations_pb2.Task, actor: str, now: int) -> TaskChange:
    """ASSIGNED -> IN_PROGRESS."""
    if task.status != ASSIGNED:
        raise _refuse(task, "start")
    return _transition(task, IN_PROGRESS, audit.Action.TASK_START, actor, now, task.assignee)


def complete(task: operations_pb2.Task, actor: str, now: int, *, detail: str = "") -> TaskChange:
    """IN_PROGRESS -> DONE."""
    if task.status != IN_PROGRESS:
        raise _refuse(task, "complete")
    return _transition(task, DONE, audit.Action.TASK_DONE, actor, now, detail)


def cancel(task: operations_pb2.Task, actor: str, now: int, *, reason: str = "") -> TaskChange:
    """Any live state -> CANCELLED."""
    if task.status not in LIVE:
        raise _refuse(task, "cancel")
    return _transition(task, CANCELLED, audit.Action.TASK_CANCEL, actor, now, reason)
