"""What a drill collects, as plain frozen values: the input of the invariant checker.

Every record comes from a source independent of the posts' own opinion: the
devices' execution log (the network server's `Execution`s), the leader key's
history in etcd, what the operator API acknowledged and what the control state
holds afterwards, and the final command ledger. Collecting them is the drill's
job (I/O); this module only holds them, so the checker stays pure.

Times are milliseconds on one wall clock for the whole drill (the execution
log's `real_time_ms`, the ledger's `*_at_ms`, the drill's own fault times).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class CommandStatus(StrEnum):
    """A ledger entry's status (the names of `citypost.v1.CommandStatus`)."""

    QUEUED = "QUEUED"
    SENT = "SENT"
    ACKED = "ACKED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"
    PARTIAL = "PARTIAL"  # a group command some devices had not confirmed at its deadline
    SUPERSEDED = "SUPERSEDED"  # a newer command set the same group's state first
    PENDING_APPROVAL = "PENDING_APPROVAL"  # a dangerous command waiting for a second person
    REJECTED = "REJECTED"  # the second person refused it: never sent
    UNSPECIFIED = "COMMAND_STATUS_UNSPECIFIED"

    @property
    def finished(self) -> bool:
        return self in (
            CommandStatus.ACKED,
            CommandStatus.EXPIRED,
            CommandStatus.FAILED,
            CommandStatus.PARTIAL,
            CommandStatus.SUPERSEDED,
            CommandStatus.REJECTED,
        )


@dataclass(frozen=True)
class ExecutionEvent:
    """One command one device executed, when (the device's log, not the post's)."""

    dev_eui: str
    command_id: str
    epoch: int
    at_ms: int
    asset_class: str = ""


class ExecutionLike(Protocol):
    """The fields of `fleet.network_server.Execution` the checker reads."""

    @property
    def dev_eui(self) -> str: ...
    @property
    def command_id(self) -> str: ...
    @property
    def epoch(self) -> int: ...
    @property
    def real_time_ms(self) -> int: ...
    @property
    def asset_class(self) -> str: ...


def executions_from_log(log: Iterable[ExecutionLike]) -> tuple[ExecutionEvent, ...]:
    """The network server's execution log as evidence (real time: the fault's clock)."""
    return tuple(
        ExecutionEvent(e.dev_eui, e.command_id, e.epoch, e.real_time_ms, e.asset_class) for e in log
    )


@dataclass(frozen=True)
class LeaderTerm:
    """One holder of the leader key in etcd: from its creation to its deletion
    (lease expired, resigned) or replacement; `to_ms` None while it still holds."""

    epoch: int
    post: str
    from_ms: int
    to_ms: int | None = None

    def holds_at(self, at_ms: int) -> bool:
        return self.from_ms <= at_ms and (self.to_ms is None or at_ms < self.to_ms)


@dataclass(frozen=True)
class AcknowledgedWrite:
    """An operator write the API acknowledged (so etcd committed it, by contract).

    `key` is what must be present afterwards: the control-state key of the record
    (e.g. `ledger/<command_id>`) or the idempotency key, as the collector chose;
    `present_keys` of `Evidence` must hold the same kind of keys."""

    key: str
    at_ms: int


@dataclass(frozen=True)
class LedgerEntry:
    """A command as the final ledger holds it; its deadline is issue time + TTL."""

    command_id: str
    status: CommandStatus
    issued_at_ms: int
    ttl_ms: int
    finished_at_ms: int | None = None

    @property
    def deadline_ms(self) -> int:
        return self.issued_at_ms + self.ttl_ms


@dataclass(frozen=True)
class Telemetry:
    """When uplinks of one asset class arrived (sorted or not; duplicates allowed)."""

    asset_class: str
    at_ms: tuple[int, ...]

    @classmethod
    def from_counts(cls, asset_class: str, start_ms: int, per_second: Sequence[int]) -> Telemetry:
        """From per-second uplink counts starting at `start_ms`: each second with an
        uplink becomes one arrival at its start (gaps are then exact to the second)."""
        return cls(
            asset_class, tuple(start_ms + 1000 * i for i, n in enumerate(per_second) if n > 0)
        )


@dataclass(frozen=True)
class FaultWindow:
    """When the fault was injected and when its heal step finished."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Evidence:
    """Everything one drill round collected.

    `observed_from_ms`..`observed_to_ms` is the span the drill watched (telemetry
    gaps are measured within it; the ledger was read at `observed_to_ms`).
    `steady_at_ms` is when the drill first saw the steady state again after the
    heal (None: not seen)."""

    fault: FaultWindow
    observed_from_ms: int
    observed_to_ms: int
    executions: tuple[ExecutionEvent, ...] = ()
    leaders: tuple[LeaderTerm, ...] = ()
    acknowledged_writes: tuple[AcknowledgedWrite, ...] = ()
    present_keys: frozenset[str] = field(default_factory=frozenset)
    ledger: tuple[LedgerEntry, ...] = ()
    telemetry: tuple[Telemetry, ...] = ()
    steady_at_ms: int | None = None
