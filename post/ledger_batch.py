"""Changes to ledger entries gathered over one pass, to be written together.

A pass of the ledger loop or a batch of acks may change many commands. Written one
transaction per command under the dispatcher's lock, each costs a round trip to
etcd, and on a slow link to etcd (the slow-etcd drills: 1 s round trips) an
operator's command waits behind all of them. Gathered here, they go in a few
transactions of at most `max_records` entries each (etcd caps the operations of one
transaction). A command changed twice in a pass is written once, as it ended up,
with the audit notes of both changes. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import control_state_pb2

CommandRecord = control_state_pb2.CommandRecord
AuditEntry = control_state_pb2.AuditEntry


class LedgerBatch:
    """Ledger entries as a pass left them, in the order first changed, with their notes."""

    def __init__(self) -> None:
        self._records: dict[str, CommandRecord] = {}
        self._notes: dict[str, list[AuditEntry]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def current(
        self, command_id: str, pending: Mapping[str, CommandRecord]
    ) -> CommandRecord | None:
        """The entry as this pass left it so far, else as `pending` holds it."""
        return self._records.get(command_id) or pending.get(command_id)

    def add(self, record: CommandRecord, notes: Sequence[AuditEntry | None] = ()) -> None:
        command_id = record.command.command_id
        self._records[command_id] = record
        self._notes.setdefault(command_id, []).extend(n for n in notes if n is not None)

    def chunks(self, max_records: int) -> Iterator[tuple[list[CommandRecord], list[AuditEntry]]]:
        """The entries and their notes, at most `max_records` entries at a time."""
        if max_records < 1:
            raise InvalidArgumentError(f"max_records must be >= 1, got {max_records}")
        ids = list(self._records)
        for start in range(0, len(ids), max_records):
            chunk = ids[start : start + max_records]
            notes = [note for command_id in chunk for note in self._notes[command_id]]
            yield [self._records[command_id] for command_id in chunk], notes
