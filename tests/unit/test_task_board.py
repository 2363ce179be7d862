"""The task lifecycle: OPEN -> ASSIGNED -> IN_PROGRESS -> DONE, or CANCELLED."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import audit
from post import task_board as board
from post.task_board import ASSIGNED, CANCELLED, DONE, IN_PROGRESS, OPEN, TaskIndex
from protos.citypost.v1 import operations_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

T0 = 1_700_000_000_000
ROADS = operations_pb2.ROADS
ORIGIN = "alarm/4f6c"
EMPTY = TaskIndex()


def requested(
    view: board.TaskBoardView = EMPTY, priority: int = 3, origin: str = ORIGIN, **kwargs: str
) -> board.TaskChange:
    return board.request_task(
        view, ROADS, "repair_lamp", priority, 47.33, 5.0, "lamp dark", origin, T0, **kwargs
    )


def at(status: operations_pb2.TaskStatus.ValueType) -> operations_pb2.Task:
    task = requested().task
    task.status = status
    task.assignee = "car-12" if status != OPEN else ""
    return task


def test_a_request_opens_a_task_and_audits_it() -> None:
    change = requested()
    task = change.task
    assert task.status == OPEN and task.kind == "repair_lamp" and task.department == ROADS
    assert (task.priority, task.origin, task.created_at_ms) == (3, ORIGIN, T0)
    assert (task.location.latitude, task.location.longitude) == (47.33, 5.0)
    assert task.task_id == board.task_id_for(ORIGIN, "repair_lamp", T0)
    assert change.audit is not None and change.audit.action == audit.Action.TASK_CREATE


def test_the_full_path_to_done() -> None:
    task = requested().task
    assigned = board.assign(task, "car-12", "op-roads", T0 + 1)
    assert assigned.task.status == ASSIGNED and assigned.task.assignee == "car-12"
    started = board.start(assigned.task, "car-12", T0 + 2)
    assert started.task.status == IN_PROGRESS
    done = board.complete(started.task, "car-12", T0 + 3, detail="lamp replaced")
    assert done.task.status == DONE and done.task.updated_at_ms == T0 + 3
    audits = [c.audit for c in (assigned, started, done)]
    assert [a.action for a in audits if a] == [
        audit.Action.TASK_ASSIGN,
        audit.Action.TASK_START,
        audit.Action.TASK_DONE,
    ]
    assert done.audit is not None and done.audit.detail == "IN_PROGRESS -> DONE: lamp replaced"
    assert task.status == OPEN  # inputs are never changed


@pytest.mark.parametrize("status", [OPEN, ASSIGNED, IN_PROGRESS])
def test_cancel_from_any_live_state(status: operations_pb2.TaskStatus.ValueType) -> None:
    change = board.cancel(at(status), "op-roads", T0 + 1, reason="duplicate report")
    assert change.task.status == CANCELLED
    assert change.audit is not None and change.audit.detail.endswith("duplicate report")


Transition = Callable[[operations_pb2.Task], board.TaskChange]
TRANSITIONS: dict[str, Transition] = {
    "assign": lambda t: board.assign(t, "car-99", "op", T0 + 1),
    "start": lambda t: board.start(t, "op", T0 + 1),
    "complete": lambda t: board.complete(t, "op", T0 + 1),
    "cancel": lambda t: board.cancel(t, "op", T0 + 1),
}
LEGAL = {
    (OPEN, "assign"),
    (OPEN, "cancel"),
    (ASSIGNED, "assign"),
    (ASSIGNED, "start"),
    (ASSIGNED, "cancel"),
    (IN_PROGRESS, "assign"),
    (IN_PROGRESS, "complete"),
    (IN_PROGRESS, "cancel"),
}


@pytest.mark.parametrize("status", [OPEN, ASSIGNED, IN_PROGRESS, DONE, CANCELLED])
@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_every_transition_is_legal_or_refused(
    status: operations_pb2.TaskStatus.ValueType, name: str
) -> None:
    task = at(status)
    if (status, name) in LEGAL:
        assert TRANSITIONS[name](task).changed
    else:
        with pytest.raises(FailedPreconditionError, match=f"cannot {name}"):
            TRANSITIONS[name](task)


def test_reassigning_in_progress_goes_back_to_assigned() -> None:
    change = board.assign(at(IN_PROGRESS), "car-7", "op", T0 + 1)
    assert change.task.status == ASSIGNED and change.task.assignee == "car-7"


def test_assigning_to_the_same_assignee_changes_nothing() -> None:
    task = at(ASSIGNED)
    change = board.assign(task, "car-12", "op", T0 + 1)
    assert not change.changed and change.task == task


# --- one live task per (origin, kind)


def test_a_second_request_returns_the_live_task() -> None:
    first = requested().task
    again = requested(TaskIndex.of([first]))
    assert not again.changed and again.task == first


def test_a_more_urgent_request_raises_the_priority() -> None:
    first = requested(priority=3).task
    urgent = requested(TaskIndex.of([first]), priority=1)
    assert urgent.task.task_id == first.task_id and urgent.task.priority == 1
    assert urgent.audit is not None and urgent.audit.action == audit.Action.TASK_REPRIORITIZE


def test_after_the_task_is_done_a_new_request_opens_a_new_one() -> None:
    first = requested().task
    index = TaskIndex.of([first])
    done = board.complete(
        board.start(board.assign(first, "c", "op", T0).task, "c", T0).task, "c", T0
    )
    index = index.with_task(done.task)
    assert index.live(ORIGIN, "repair_lamp") is None
    later = board.request_task(index, ROADS, "repair_lamp", 3, 47.3, 5.0, "", ORIGIN, T0 + 9)
    assert later.changed and later.task.task_id != first.task_id


def test_two_live_tasks_for_one_origin_and_kind_break_the_index() -> None:
    first = requested().task
    twin = operations_pb2.Task()
    twin.CopyFrom(first)
    twin.task_id = "twin"
    with pytest.raises(FailedPreconditionError, match="two live tasks"):
        TaskIndex.of([first, twin])


def test_tasks_without_origin_are_never_merged() -> None:
    one = requested(origin="", task_id="op-task-1").task
    two = requested(TaskIndex.of([one]), origin="", task_id="op-task-2")
    assert two.changed and two.task.task_id == "op-task-2"
    with pytest.raises(InvalidArgumentError, match="task_id"):
        requested(origin="")


# --- validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"department": operations_pb2.DEPARTMENT_UNSPECIFIED}, "department"),
        ({"kind": ""}, "kind"),
        ({"priority": 0}, "priority"),
        ({"priority": 6}, "priority"),
        ({"latitude": 91.0}, "location"),
    ],
)
def test_a_bad_request_is_refused(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "department": ROADS,
        "kind": "repair_lamp",
        "priority": 3,
        "latitude": 47.3,
        "longitude": 5.0,
        "detail": "",
        "origin": ORIGIN,
        "now": T0,
    } | kwargs
    with pytest.raises(InvalidArgumentError, match=field):
        board.request_task(EMPTY, **args)  # type: ignore[arg-type]


def test_an_empty_assignee_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="assignee"):
        board.assign(at(OPEN), "", "op", T0)
