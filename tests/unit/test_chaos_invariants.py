"""The drill invariants over hand-made histories: each one holds on a clean history
and breaks, naming what broke, on a history made to break it."""

from __future__ import annotations

import pytest

from chaos import invariants as inv
from chaos.evidence import (
    AcknowledgedWrite,
    CommandStatus,
    Evidence,
    ExecutionEvent,
    FaultWindow,
    LeaderTerm,
    LedgerEntry,
    Telemetry,
    executions_from_log,
)
from fleet.network_server import Execution

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000


def ex(dev: str, cmd: str, epoch: int, at: int) -> ExecutionEvent:
    return ExecutionEvent(dev, cmd, epoch, T0 + at)


# A leader crash at +10 s: epoch 5 (primary) loses its key at +13 s, epoch 9 (backup)
# takes over at +14 s; the heal (restart) ends at +20 s, steady again at +26 s.
CLEAN_EXECUTIONS = (
    ex("d1", "c1", 5, 1_000),
    ex("d2", "c1", 5, 1_200),
    ex("d1", "c2", 5, 9_000),
    ex("d2", "c2", 9, 14_500),  # c2 re-sent by the new leader: d2 had not executed it
    ex("d1", "c3", 9, 15_000),
)
CLEAN_LEADERS = (
    LeaderTerm(5, "primary", T0, T0 + 13_000),
    LeaderTerm(9, "backup", T0 + 14_000, None),
)
CLEAN_LEDGER = (
    LedgerEntry("c1", CommandStatus.ACKED, T0 + 900, 10_000, T0 + 1_300),
    LedgerEntry("c2", CommandStatus.ACKED, T0 + 8_900, 10_000, T0 + 14_600),
    LedgerEntry("c3", CommandStatus.SENT, T0 + 14_900, 30_000),  # still within its TTL
    LedgerEntry("c4", CommandStatus.EXPIRED, T0 + 2_000, 5_000, T0 + 7_000),
)


def clean() -> Evidence:
    return Evidence(
        fault=FaultWindow(T0 + 10_000, T0 + 20_000),
        observed_from_ms=T0,
        observed_to_ms=T0 + 30_000,
        executions=CLEAN_EXECUTIONS,
        leaders=CLEAN_LEADERS,
        acknowledged_writes=(AcknowledgedWrite("ledger/c1", T0 + 900),),
        present_keys=frozenset({"ledger/c1", "ledger/c2"}),
        ledger=CLEAN_LEDGER,
        telemetry=(Telemetry("street_lamp", tuple(T0 + i * 1_000 for i in range(31))),),
        steady_at_ms=T0 + 26_000,
    )


# --- (a) single commander


def test_single_commander_holds_for_non_decreasing_epochs() -> None:
    assert inv.single_commander(CLEAN_EXECUTIONS) == []


def test_single_commander_breaks_when_an_older_epoch_executes_after_a_newer_one() -> None:
    log = (*CLEAN_EXECUTIONS, ex("d3", "c9", 5, 16_000))
    violations = inv.single_commander(log)
    assert len(violations) == 1
    v = violations[0]
    assert v.invariant == inv.SINGLE_COMMANDER
    assert "d3" in v.detail and "c9" in v.detail and "epoch 5" in v.detail
    assert "epoch 9" in v.detail and "c2" in v.detail  # the newer epoch's first execution


def test_single_commander_orders_by_time_not_by_log_order() -> None:
    # Logged in order, but the old epoch's execution happened later: an interleave.
    log = (ex("d1", "c1", 5, 1_000), ex("d2", "c2", 9, 2_000), ex("d3", "c3", 5, 3_000))
    assert [v.detail.split()[1] for v in inv.single_commander(log)] == ["d3"]
    # Logged out of order, but in time the epochs never interleave.
    assert inv.single_commander((log[1], log[0])) == []


def test_single_leader_key_breaks_on_overlapping_terms() -> None:
    assert inv.single_leader_key(CLEAN_LEADERS) == []
    overlapping = (LeaderTerm(5, "primary", T0, None), LeaderTerm(9, "backup", T0 + 14_000))
    (v,) = inv.single_leader_key(overlapping)
    assert v.invariant == inv.SINGLE_LEADER_KEY and "epoch 5" in v.detail and "9" in v.detail


# --- (b) executed once


def test_executed_once_holds_when_each_device_runs_a_command_once() -> None:
    assert inv.executed_once(CLEAN_EXECUTIONS) == []


def test_executed_once_breaks_on_a_second_execution_by_the_same_device() -> None:
    log = (*CLEAN_EXECUTIONS, ex("d1", "c2", 9, 14_700))
    (v,) = inv.executed_once(log)
    assert v.invariant == inv.EXECUTED_ONCE
    assert "d1" in v.detail and "c2" in v.detail and "epoch 5" in v.detail
    assert "epoch 9" in v.detail and "2 times" in v.detail


# --- (c) acknowledged writes


def test_acknowledged_writes_present_holds_when_every_key_is_there() -> None:
    e = clean()
    assert inv.acknowledged_writes_present(e.acknowledged_writes, e.present_keys) == []


def test_acknowledged_writes_present_breaks_on_a_lost_write() -> None:
    writes = (AcknowledgedWrite("ledger/c1", T0), AcknowledgedWrite("state/overrides/o7", T0 + 5))
    (v,) = inv.acknowledged_writes_present(writes, frozenset({"ledger/c1"}))
    assert v.invariant == inv.WRITES_DURABLE and "state/overrides/o7" in v.detail


# --- (d) commands settled within their TTL


def test_commands_settled_holds_for_finished_and_in_flight_commands() -> None:
    assert inv.commands_settled(CLEAN_LEDGER, now_ms=T0 + 30_000) == []


def test_commands_settled_breaks_on_a_command_left_sent_past_its_deadline() -> None:
    ledger = (*CLEAN_LEDGER, LedgerEntry("c5", CommandStatus.QUEUED, T0, 10_000))
    (v,) = inv.commands_settled(ledger, now_ms=T0 + 30_000)
    assert v.invariant == inv.COMMANDS_SETTLED and "c5" in v.detail and "QUEUED" in v.detail


def test_commands_settled_breaks_on_a_command_finished_late_unless_within_slack() -> None:
    late = (LedgerEntry("c6", CommandStatus.ACKED, T0, 10_000, T0 + 10_500),)
    (v,) = inv.commands_settled(late, now_ms=T0 + 30_000)
    assert "c6" in v.detail and "500 ms past" in v.detail
    assert inv.commands_settled(late, now_ms=T0 + 30_000, slack_ms=1_000) == []


def test_commands_settled_breaks_on_an_unknown_status() -> None:
    odd = (LedgerEntry("c7", CommandStatus.UNSPECIFIED, T0, 10_000),)
    (v,) = inv.commands_settled(odd, now_ms=T0 + 1)
    assert "c7" in v.detail


# --- (e) telemetry gaps


def test_telemetry_gap_is_measured_and_holds_within_its_bound() -> None:
    gaps = inv.telemetry_gaps(clean())
    assert gaps["street_lamp"].length_ms == 1_000
    assert inv.telemetry_gap_bounded(gaps, {"street_lamp": 2_000}) == []


def test_telemetry_gap_breaks_its_bound_and_counts_the_span_edges() -> None:
    # Uplinks until the fault at +10 s, then silence to the end of the observation.
    lamps = Telemetry("street_lamp", tuple(T0 + i * 1_000 for i in range(11)))
    gap = inv.longest_gap(lamps, T0, T0 + 30_000)
    assert (gap.from_ms, gap.to_ms, gap.length_ms) == (T0 + 10_000, T0 + 30_000, 20_000)
    (v,) = inv.telemetry_gap_bounded({"street_lamp": gap}, {"street_lamp": 5_000})
    assert v.invariant == inv.TELEMETRY_GAP and "street_lamp" in v.detail and "20000" in v.detail
    # Without a bound it is a measure only.
    assert inv.telemetry_gap_bounded({"street_lamp": gap}, {}) == []


def test_telemetry_from_per_second_counts() -> None:
    t = Telemetry.from_counts("bollard", T0, [3, 0, 0, 1])
    assert t.at_ms == (T0, T0 + 3_000)
    assert inv.longest_gap(t, T0, T0 + 3_000).length_ms == 3_000


# --- (f) measures


def test_measures_of_a_leader_crash() -> None:
    m = inv.measures(clean())
    assert m.old_epoch == 5
    assert m.detection_ms == 3_000  # key gone at +13 s, fault at +10 s
    assert m.old_epoch_last_execution_ms == -1_000  # its last execution was at +9 s
    assert m.takeover_ms == 4_000
    assert m.steady_ms == 6_000


def test_measures_when_the_leader_was_not_deposed() -> None:
    e = clean()
    stays = Evidence(
        fault=e.fault,
        observed_from_ms=e.observed_from_ms,
        observed_to_ms=e.observed_to_ms,
        leaders=(LeaderTerm(5, "primary", T0, None),),
    )
    m = inv.measures(stays)
    assert (m.old_epoch, m.detection_ms, m.takeover_ms, m.steady_ms) == (5, None, None, None)


# --- all together


def test_check_all_on_a_clean_history() -> None:
    report = inv.check_all(clean(), inv.Bounds(telemetry_gap_ms={"street_lamp": 2_000}))
    assert report.ok and report.violations == () and report.broken() == []
    d = report.to_dict()
    assert d["ok"] is True
    assert d["measures_ms"]["takeover"] == 4_000
    assert d["telemetry_gaps_ms"]["street_lamp"]["length"] == 1_000


def test_check_all_reports_every_broken_invariant() -> None:
    e = clean()
    broken = Evidence(
        fault=e.fault,
        observed_from_ms=e.observed_from_ms,
        observed_to_ms=e.observed_to_ms,
        executions=(*e.executions, ex("d1", "c3", 5, 16_000)),  # old epoch, and twice
        leaders=e.leaders,
        acknowledged_writes=(*e.acknowledged_writes, AcknowledgedWrite("ledger/c8", T0)),
        present_keys=e.present_keys,
        ledger=(*e.ledger, LedgerEntry("c5", CommandStatus.SENT, T0, 1_000)),
        telemetry=e.telemetry,
    )
    report = inv.check_all(broken)
    assert not report.ok
    assert report.broken() == [
        inv.SINGLE_COMMANDER,
        inv.EXECUTED_ONCE,
        inv.WRITES_DURABLE,
        inv.COMMANDS_SETTLED,
    ]


def test_executions_from_the_network_server_log() -> None:
    log = [Execution("d1", "c1", 5, "set_brightness", 40.0, 123, T0 + 7, "street_lamp", "g")]
    assert executions_from_log(log) == (ExecutionEvent("d1", "c1", 5, T0 + 7, "street_lamp"),)


def test_the_outage_operators_feel_runs_from_the_last_write_before_the_fault() -> None:
    from chaos.invariants import outage_ms

    # writes every 100 ms, a fault at 1,000 ms, then nothing until 3,400 ms
    writes = [*range(0, 1000, 100), 3400, 3500]
    assert outage_ms(writes, 1000, 10_000) == 3400 - 900
    # nothing after the fault at all: the outage runs to the end of the observed span
    assert outage_ms([0, 900], 1000, 5000) == 5000 - 900
    # no write before the fault: from the fault's start
    assert outage_ms([1500, 1600], 1000, 5000) == 500
    assert outage_ms([], 1000, 5000) is None
