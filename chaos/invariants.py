"""The invariants a drill checks afterwards, as pure functions over `Evidence`.

Each invariant returns the list of its `Violation`s (empty: it holds); each
detail names the command, device, epoch or key concerned, so a report says
what broke, not only that something did. The measures (telemetry gaps,
detection, takeover and steady-state times) are computed here too;
`check_all` gathers everything in one `Report`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.evidence import (
    AcknowledgedWrite,
    CommandStatus,
    Evidence,
    ExecutionEvent,
    LeaderTerm,
    LedgerEntry,
    Telemetry,
)

SINGLE_COMMANDER = "single_commander"
SINGLE_LEADER_KEY = "single_leader_key"
EXECUTED_ONCE = "executed_once"
WRITES_DURABLE = "acknowledged_writes_present"
COMMANDS_SETTLED = "commands_settled_within_ttl"
TELEMETRY_GAP = "telemetry_gap_bounded"
# Every invariant check_all checks, in its order (a report lists the held ones too).
INVARIANTS: tuple[str, ...] = (
    SINGLE_COMMANDER,
    SINGLE_LEADER_KEY,
    EXECUTED_ONCE,
    WRITES_DURABLE,
    COMMANDS_SETTLED,
    TELEMETRY_GAP,
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str


@dataclass(frozen=True)
class Bounds:
    """What the checker tolerates. `command_slack_ms`: how late past its deadline a
    command may finish (the ledger's driver ticks, clock skew between posts).
    `telemetry_gap_ms`: the longest allowed gap per asset class (a class absent from
    it, and every class when it is empty, is only measured, never a violation)."""

    command_slack_ms: int = 0
    telemetry_gap_ms: Mapping[str, int] = field(default_factory=dict)


# --- (a) single commander -------------------------------------------------------------------


def _by_time(executions: Iterable[ExecutionEvent]) -> list[ExecutionEvent]:
    # Ties in time are ordered by epoch: executions in the same millisecond cannot be
    # told apart, so the checker gives them the benefit of the doubt.
    return sorted(executions, key=lambda e: (e.at_ms, e.epoch))


def single_commander(executions: Sequence[ExecutionEvent]) -> list[Violation]:
    """Executions of two epochs never interleave: over all devices' executions ordered
    by time, the epoch sequence is non-decreasing. Once any device executed a command
    of epoch N, no device executes one of an epoch below N (so no old leader commands
    after, or between, its successor's commands). One violation per late execution,
    naming it and the newer epoch's first execution it came after."""
    out: list[Violation] = []
    newest: ExecutionEvent | None = None
    first_of_epoch: dict[int, ExecutionEvent] = {}
    for e in _by_time(executions):
        first_of_epoch.setdefault(e.epoch, e)
        if newest is not None and e.epoch < newest.epoch:
            first = first_of_epoch[newest.epoch]
            out.append(
                Violation(
                    SINGLE_COMMANDER,
                    f"device {e.dev_eui} executed command {e.command_id} of epoch {e.epoch} "
                    f"at {e.at_ms} ms, after epoch {newest.epoch}'s first execution "
                    f"(command {first.command_id} on {first.dev_eui} at {first.at_ms} ms)",
                )
            )
        if newest is None or e.epoch > newest.epoch:
            newest = e
    return out


def single_leader_key(leaders: Sequence[LeaderTerm]) -> list[Violation]:
    """etcd's leader history has one holder at a time with growing epochs: ordered by
    start, each term ends at or before the next starts, and the next epoch is higher."""
    out: list[Violation] = []
    terms = sorted(leaders, key=lambda t: (t.from_ms, t.epoch))
    for older, newer in itertools.pairwise(terms):
        if newer.epoch <= older.epoch:
            out.append(
                Violation(
                    SINGLE_LEADER_KEY,
                    f"epoch {newer.epoch} ({newer.post}) started at {newer.from_ms} ms after "
                    f"epoch {older.epoch} ({older.post}): epochs must grow",
                )
            )
        if older.to_ms is None or older.to_ms > newer.from_ms:
            end = "still open" if older.to_ms is None else f"ending at {older.to_ms} ms"
            out.append(
                Violation(
                    SINGLE_LEADER_KEY,
                    f"epoch {older.epoch} ({older.post}) {end} overlaps epoch {newer.epoch} "
                    f"({newer.post}) from {newer.from_ms} ms",
                )
            )
    return out


# --- (b) executed once ----------------------------------------------------------------------


def executed_once(executions: Sequence[ExecutionEvent]) -> list[Violation]:
    """No device executes one command_id twice (a re-send under a new epoch keeps the
    command_id, so this also catches an old and a new leader both getting through)."""
    seen: dict[tuple[str, str], list[ExecutionEvent]] = defaultdict(list)
    for e in _by_time(executions):
        seen[(e.dev_eui, e.command_id)].append(e)
    out: list[Violation] = []
    for (dev_eui, command_id), runs in seen.items():
        if len(runs) > 1:
            when = ", ".join(f"epoch {e.epoch} at {e.at_ms} ms" for e in runs)
            out.append(
                Violation(
                    EXECUTED_ONCE,
                    f"device {dev_eui} executed command {command_id} {len(runs)} times: {when}",
                )
            )
    return out


# --- (c) acknowledged writes are durable ----------------------------------------------------


def acknowledged_writes_present(
    writes: Sequence[AcknowledgedWrite], present_keys: frozenset[str]
) -> list[Violation]:
    """Every write the operator API acknowledged is present in the control state
    afterwards (an acknowledgement means etcd committed it: a failover must not lose it)."""
    return [
        Violation(WRITES_DURABLE, f"write {w.key} acknowledged at {w.at_ms} ms is missing")
        for w in writes
        if w.key not in present_keys
    ]


# --- (d) commands settle within their TTL ---------------------------------------------------


def commands_settled(
    ledger: Sequence[LedgerEntry], now_ms: int, slack_ms: int = 0
) -> list[Violation]:
    """Every command ends ACKED, EXPIRED, FAILED, PARTIAL, SUPERSEDED or REJECTED by its deadline
    (issue + TTL, or its approval's deadline while it waits) plus `slack_ms`; none is
    silently lost. A command still QUEUED, SENT or PENDING_APPROVAL is a violation
    only once `now_ms` (when the ledger was read) is past that; a finished one whose
    `finished_at_ms` is known must have finished by then; an unknown status always is."""
    out: list[Violation] = []
    for c in ledger:
        limit = c.deadline_ms + slack_ms
        if c.status.finished:
            if c.finished_at_ms is not None and c.finished_at_ms > limit:
                out.append(
                    Violation(
                        COMMANDS_SETTLED,
                        f"command {c.command_id} became {c.status.value} at {c.finished_at_ms} "
                        f"ms, {c.finished_at_ms - c.deadline_ms} ms past its deadline "
                        f"{c.deadline_ms} ms",
                    )
                )
        elif c.status in (CommandStatus.QUEUED, CommandStatus.SENT, CommandStatus.PENDING_APPROVAL):
            if now_ms > limit:
                out.append(
                    Violation(
                        COMMANDS_SETTLED,
                        f"command {c.command_id} still {c.status.value} at {now_ms} ms, "
                        f"past its deadline {c.deadline_ms} ms",
                    )
                )
        else:
            out.append(
                Violation(COMMANDS_SETTLED, f"command {c.command_id} has status {c.status.value}")
            )
    return out


# --- (e) telemetry gaps ---------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """The longest stretch without an uplink of one asset class."""

    asset_class: str
    from_ms: int
    to_ms: int

    @property
    def length_ms(self) -> int:
        return self.to_ms - self.from_ms


def longest_gap(telemetry: Telemetry, observed_from_ms: int, observed_to_ms: int) -> Gap:
    """The longest gap between consecutive uplinks within the observed span, counting its
    edges: from the span's start to the first uplink and from the last one to its end
    (a class silent from the fault to the end of the drill has a gap to the end).
    Uplinks outside the span are ignored."""
    inside = sorted(t for t in telemetry.at_ms if observed_from_ms <= t <= observed_to_ms)
    points = [observed_from_ms, *inside, observed_to_ms]
    start, end = max(itertools.pairwise(points), key=lambda p: p[1] - p[0])
    return Gap(telemetry.asset_class, start, end)


def telemetry_gaps(evidence: Evidence) -> dict[str, Gap]:
    """The longest gap of each asset class the drill watched (a measure for the report)."""
    return {
        t.asset_class: longest_gap(t, evidence.observed_from_ms, evidence.observed_to_ms)
        for t in evidence.telemetry
    }


def telemetry_gap_bounded(gaps: Mapping[str, Gap], bound_ms: Mapping[str, int]) -> list[Violation]:
    """A class whose longest gap exceeds its bound (classes without a bound pass)."""
    return [
        Violation(
            TELEMETRY_GAP,
            f"{cls}: no uplink for {gap.length_ms} ms ({gap.from_ms}..{gap.to_ms} ms), "
            f"bound {bound_ms[cls]} ms",
        )
        for cls, gap in sorted(gaps.items())
        if cls in bound_ms and gap.length_ms > bound_ms[cls]
    ]


# --- (f) measures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Measures:
    """Times from the fault, in milliseconds; None when it did not happen.

    - `old_epoch`: the epoch whose leader held the key when the fault started.
    - `detection_ms`: fault start → the old epoch's leader key gone from etcd (lease
      expired, resigned or replaced): when the cluster noticed. None if it never went
      (the fault did not depose the leader, e.g. a standby crash).
    - `old_epoch_last_execution_ms`: fault start → the last execution of an old-epoch
      command (negative if the last one came before the fault): when the old leader's
      commanding really stopped; with a partition it must be before `takeover_ms`.
    - `takeover_ms`: fault start → the first term of an epoch above the old one began
      (the new leader's key created).
    - `steady_ms`: fault end (heal done) → the steady state seen again (`steady_at_ms`).
    - `operator_outage_ms`: the outage operators feel: the longest stretch without an
      acknowledged operator write, from the last one before the fault (or the fault's
      start) to the end of the observed span; None without writes to measure.
    - `execution_outage_ms`: the same for device executions of any command.
    """

    old_epoch: int | None = None
    detection_ms: int | None = None
    old_epoch_last_execution_ms: int | None = None
    takeover_ms: int | None = None
    steady_ms: int | None = None
    operator_outage_ms: int | None = None
    execution_outage_ms: int | None = None


def outage_ms(at_ms: Iterable[int], fault_start_ms: int, observed_to_ms: int) -> int | None:
    """The longest stretch without an event, from the last event before the fault (or
    the fault's start) on; the span's end counts only if nothing came after the fault.
    None when there was no event at all."""
    times = sorted(at_ms)
    if not times:
        return None
    before = [t for t in times if t < fault_start_ms]
    after = [t for t in times if fault_start_ms <= t <= observed_to_ms]
    points = [before[-1] if before else fault_start_ms, *after]
    if not after:
        points.append(observed_to_ms)
    return max((b - a for a, b in itertools.pairwise(points)), default=0)


def measures(evidence: Evidence) -> Measures:
    start = evidence.fault.start_ms
    steady = (
        None if evidence.steady_at_ms is None else evidence.steady_at_ms - evidence.fault.end_ms
    )
    outages = {
        "operator_outage_ms": outage_ms(
            (w.at_ms for w in evidence.acknowledged_writes), start, evidence.observed_to_ms
        ),
        "execution_outage_ms": outage_ms(
            (e.at_ms for e in evidence.executions), start, evidence.observed_to_ms
        ),
    }
    old = next((t for t in evidence.leaders if t.holds_at(start)), None)
    if old is None:
        return Measures(steady_ms=steady, **outages)
    detection = None if old.to_ms is None else old.to_ms - start
    old_runs = [e.at_ms for e in evidence.executions if e.epoch == old.epoch]
    last = max(old_runs) - start if old_runs else None
    newer = [t.from_ms for t in evidence.leaders if t.epoch > old.epoch]
    takeover = min(newer) - start if newer else None
    return Measures(old.epoch, detection, last, takeover, steady, **outages)


# --- everything -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    violations: tuple[Violation, ...]
    gaps: Mapping[str, Gap]
    measures: Measures
    checked: tuple[str, ...] = INVARIANTS  # every name checked, held or not

    def adding(self, names: Sequence[str], violations: Sequence[Violation]) -> Report:
        """This report with more checks (a scenario's own expectations) and their results."""
        return Report(
            (*self.violations, *violations),
            self.gaps,
            self.measures,
            (*self.checked, *(n for n in names if n not in self.checked)),
        )

    @property
    def ok(self) -> bool:
        return not self.violations

    def broken(self) -> list[str]:
        """The invariants that broke, each once, in the order checked."""
        return list(dict.fromkeys(v.invariant for v in self.violations))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the machine report."""
        return {
            "ok": self.ok,
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in self.violations],
            "telemetry_gaps_ms": {
                cls: {"length": g.length_ms, "from": g.from_ms, "to": g.to_ms}
                for cls, g in sorted(self.gaps.items())
            },
            "measures_ms": {
                "old_epoch": self.measures.old_epoch,
                "detection": self.measures.detection_ms,
                "old_epoch_last_execution": self.measures.old_epoch_last_execution_ms,
                "takeover": self.measures.takeover_ms,
                "steady": self.measures.steady_ms,
                "operator_outage": self.measures.operator_outage_ms,
                "execution_outage": self.measures.execution_outage_ms,
            },
        }


def check_all(evidence: Evidence, bounds: Bounds | None = None) -> Report:
    bounds = bounds or Bounds()
    gaps = telemetry_gaps(evidence)
    violations = [
        *single_commander(evidence.executions),
        *single_leader_key(evidence.leaders),
        *executed_once(evidence.executions),
        *acknowledged_writes_present(evidence.acknowledged_writes, evidence.present_keys),
        *commands_settled(evidence.ledger, evidence.observed_to_ms, bounds.command_slack_ms),
        *telemetry_gap_bounded(gaps, bounds.telemetry_gap_ms),
    ]
    return Report(tuple(violations), gaps, measures(evidence))
