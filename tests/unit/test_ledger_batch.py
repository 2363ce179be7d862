"""A pass's ledger changes: one entry per command as it ended up, its notes kept, in chunks."""

from __future__ import annotations

import pytest

from citypost.errors import InvalidArgumentError
from post.ledger_batch import LedgerBatch
from protos.citypost.v1 import command_pb2, control_state_pb2

pytestmark = pytest.mark.unit


def record(command_id: str, attempts: int) -> control_state_pb2.CommandRecord:
    return control_state_pb2.CommandRecord(
        command=command_pb2.Command(command_id=command_id), attempts=attempts
    )


def note(action: str) -> control_state_pb2.AuditEntry:
    return control_state_pb2.AuditEntry(action=action)


def test_a_command_changed_twice_is_written_once_as_it_ended_with_both_notes() -> None:
    batch = LedgerBatch()
    batch.add(record("a", 1), [note("count")])
    batch.add(record("b", 1))
    batch.add(record("a", 2), [None, note("send")])
    assert len(batch) == 2
    [(records, notes)] = list(batch.chunks(10))
    assert [(r.command.command_id, r.attempts) for r in records] == [("a", 2), ("b", 1)]
    assert [n.action for n in notes] == ["count", "send"]


def test_current_prefers_the_passs_own_change_to_the_pending_entry() -> None:
    batch = LedgerBatch()
    pending = {"a": record("a", 1), "b": record("b", 1)}
    batch.add(record("a", 3))
    assert batch.current("a", pending) == record("a", 3)
    assert batch.current("b", pending) == record("b", 1)
    assert batch.current("c", pending) is None


def test_chunks_hold_at_most_max_records_each_with_their_own_notes() -> None:
    batch = LedgerBatch()
    for i in range(5):
        batch.add(record(str(i), 1), [note(f"n{i}")])
    chunks = list(batch.chunks(2))
    assert [len(records) for records, _ in chunks] == [2, 2, 1]
    assert [[n.action for n in notes] for _, notes in chunks] == [
        ["n0", "n1"],
        ["n2", "n3"],
        ["n4"],
    ]
    with pytest.raises(InvalidArgumentError, match="max_records"):
        list(batch.chunks(0))
