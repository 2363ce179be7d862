"""A scenario's own expectations: which ones each scenario gets, and each one holding
on a history that satisfies it and breaking, naming what broke, on one made to break it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from chaos import expectations as exp
from chaos import invariants as inv
from chaos.evidence import Evidence, ExecutionEvent, FaultWindow, LeaderTerm
from chaos.invariants import Measures
from chaos.scenarios import SCENARIOS, FaultKind, LeaderChange, Limits, Scenario, Target

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000
FAULT_START = T0 + 10_000
TTL_S = 1.0  # so a takeover bound of 2 TTL is 2000 ms


def scenario(
    kind: FaultKind = FaultKind.POST_KILL,
    change: LeaderChange = LeaderChange.NONE,
    takeover_ttl: float | None = None,
) -> Scenario:
    return Scenario(
        name="hand-made",
        breaks="something",
        must_hold="something else",
        kind=kind,
        heal="undo it",
        target=Target.LEADER,
        leader_change=change,
        limits=Limits(takeover_ttl=takeover_ttl),
        kills_over_limit=2 if kind is FaultKind.RESTART_INTENSITY else None,
    )


KEEP = scenario(FaultKind.STANDBY_KILL, LeaderChange.NONE)
REPLACE = scenario(FaultKind.POST_KILL, LeaderChange.REQUIRED, takeover_ttl=2.0)
ALLOW = scenario(FaultKind.ETCD_LATENCY, LeaderChange.ALLOWED)
QUORUM = scenario(FaultKind.ETCD_QUORUM_LOSS, LeaderChange.ALLOWED)
ESCALATE = scenario(FaultKind.RESTART_INTENSITY, LeaderChange.ALLOWED)
STORM = scenario(FaultKind.MALFORMED_STORM, LeaderChange.NONE)


def evidence(
    *leaders: LeaderTerm,
    executions: tuple[ExecutionEvent, ...] = (),
    steady_at_ms: int | None = T0 + 22_000,
) -> Evidence:
    return Evidence(
        fault=FaultWindow(FAULT_START, T0 + 20_000),
        observed_from_ms=T0,
        observed_to_ms=T0 + 30_000,
        executions=executions,
        leaders=leaders,
        steady_at_ms=steady_at_ms,
    )


def check(
    sc: Scenario,
    ev: Evidence,
    measures: Measures | None = None,
    observations: Mapping[str, object] | None = None,
    lease_ttl_s: float = TTL_S,
) -> list[inv.Violation]:
    return exp.check_expectations(
        sc,
        ev,
        inv.measures(ev) if measures is None else measures,
        lease_ttl_s=lease_ttl_s,
        observations=observations,
    )


def names_of(violations: list[inv.Violation]) -> list[str]:
    return [v.invariant for v in violations]


# The leader before the fault, still holding; and one deposed at +3 s, replaced at +4 s.
KEPT = (LeaderTerm(5, "primary", T0, None),)


def replaced(takeover_after_ms: int) -> tuple[LeaderTerm, ...]:
    return (
        LeaderTerm(5, "primary", T0, FAULT_START + takeover_after_ms - 100),
        LeaderTerm(9, "backup", FAULT_START + takeover_after_ms, None),
    )


# --- expectations_for -----------------------------------------------------------------------


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_every_scenario_gets_the_rules_of_its_kind(sc: Scenario) -> None:
    names = exp.expectations_for(sc)
    assert exp.OLD_LEADER_STOPPED_FIRST in names
    assert (exp.LEADER_KEPT in names) == (sc.leader_change is LeaderChange.NONE)
    assert (exp.LEADER_REPLACED in names) == (sc.leader_change is LeaderChange.REQUIRED)
    assert (exp.TAKEOVER_BOUNDED in names) == (sc.limits.takeover_ttl is not None)
    assert (exp.POST_ESCALATED in names) == (sc.kind is FaultKind.RESTART_INTENSITY)
    assert (exp.STORM_DEAD_LETTERED in names) == (sc.kind is FaultKind.MALFORMED_STORM)
    assert len(names) == len(set(names))


def test_expectations_come_in_a_fixed_order() -> None:
    steady = exp.STEADY_AGAIN
    assert exp.expectations_for(KEEP) == (exp.LEADER_KEPT, exp.OLD_LEADER_STOPPED_FIRST, steady)
    assert exp.expectations_for(REPLACE) == (
        exp.LEADER_REPLACED,
        exp.TAKEOVER_BOUNDED,
        exp.OLD_LEADER_STOPPED_FIRST,
        steady,
    )
    assert exp.expectations_for(ALLOW) == (exp.OLD_LEADER_STOPPED_FIRST, steady)
    assert exp.expectations_for(ESCALATE) == (
        exp.OLD_LEADER_STOPPED_FIRST,
        exp.POST_ESCALATED,
        steady,
    )
    assert exp.expectations_for(STORM) == (
        exp.LEADER_KEPT,
        exp.OLD_LEADER_STOPPED_FIRST,
        exp.STORM_DEAD_LETTERED,
        steady,
    )


def test_a_takeover_bound_without_a_required_change_is_still_checked() -> None:
    allowed_but_bounded = scenario(FaultKind.ETCD_LATENCY, LeaderChange.ALLOWED, takeover_ttl=1.0)
    assert exp.expectations_for(allowed_but_bounded) == (
        exp.TAKEOVER_BOUNDED,
        exp.OLD_LEADER_STOPPED_FIRST,
        exp.STEADY_AGAIN,
    )


# --- leader kept ----------------------------------------------------------------------------


def test_leader_kept_holds_when_the_same_epoch_leads_throughout() -> None:
    executions = (ExecutionEvent("d1", "c1", 5, FAULT_START + 5_000),)
    assert check(KEEP, evidence(*KEPT, executions=executions)) == []


def test_leader_kept_breaks_when_a_newer_epoch_took_the_key() -> None:
    violations = check(KEEP, evidence(*replaced(4_000)))
    assert names_of(violations) == [exp.LEADER_KEPT]
    detail = violations[0].detail
    assert "epoch 5" in detail and "epoch 9" in detail and "backup" in detail
    assert str(FAULT_START + 4_000) in detail


def test_leader_kept_breaks_when_the_key_went_away_without_a_successor() -> None:
    ev = evidence(LeaderTerm(5, "primary", T0, FAULT_START + 2_500))
    violations = check(KEEP, ev)
    assert names_of(violations) == [exp.LEADER_KEPT]
    assert "epoch 5" in violations[0].detail and "2500 ms" in violations[0].detail


def test_leader_kept_reads_detection_from_the_measures() -> None:
    # The evidence shows nothing wrong; the measures say the key went away.
    violations = check(KEEP, evidence(*KEPT), Measures(old_epoch=5, detection_ms=1_200))
    assert names_of(violations) == [exp.LEADER_KEPT]
    assert "1200 ms" in violations[0].detail


# --- leader replaced, takeover bound --------------------------------------------------------


def test_leader_replaced_holds_with_a_takeover_within_the_bound() -> None:
    assert check(REPLACE, evidence(*replaced(1_500))) == []


def test_leader_replaced_breaks_without_a_takeover() -> None:
    ev = evidence(LeaderTerm(5, "primary", T0, FAULT_START + 1_000))
    violations = check(REPLACE, ev)
    assert names_of(violations) == [exp.LEADER_REPLACED]
    assert "above 5" in violations[0].detail
    assert str(ev.observed_to_ms) in violations[0].detail


def test_a_takeover_past_the_bound_breaks_it() -> None:
    violations = check(REPLACE, evidence(*replaced(2_500)))
    assert names_of(violations) == [exp.TAKEOVER_BOUNDED]
    assert "2500 ms" in violations[0].detail and "2000 ms" in violations[0].detail


def test_a_takeover_exactly_at_the_bound_holds() -> None:
    assert check(REPLACE, evidence(*replaced(2_000))) == []


def test_the_takeover_bound_scales_with_the_lease_ttl() -> None:
    # 2500 ms is past 2 TTL of 1 s but within 2 TTL of 1.5 s.
    assert check(REPLACE, evidence(*replaced(2_500)), lease_ttl_s=1.5) == []


def test_a_slow_takeover_is_not_judged_without_a_bound() -> None:
    assert check(ALLOW, evidence(*replaced(60_000))) == []


# --- the old leader stopped first -----------------------------------------------------------


def test_old_epoch_executions_before_the_takeover_hold() -> None:
    executions = (
        ExecutionEvent("d1", "c1", 5, FAULT_START + 900),
        ExecutionEvent("d2", "c1", 9, FAULT_START + 1_600),
    )
    assert check(REPLACE, evidence(*replaced(1_500), executions=executions)) == []


@pytest.mark.parametrize("after_takeover_ms", [0, 300])
def test_an_old_epoch_execution_at_or_after_the_takeover_breaks_it(after_takeover_ms: int) -> None:
    executions = (ExecutionEvent("d1", "c7", 5, FAULT_START + 1_500 + after_takeover_ms),)
    violations = check(REPLACE, evidence(*replaced(1_500), executions=executions))
    assert names_of(violations) == [exp.OLD_LEADER_STOPPED_FIRST]
    detail = violations[0].detail
    assert "epoch 5" in detail and f"{1_500 + after_takeover_ms} ms" in detail
    assert "1500 ms" in detail


def test_old_leader_stopped_first_is_checked_for_allowed_changes_too() -> None:
    executions = (ExecutionEvent("d1", "c7", 5, FAULT_START + 5_000),)
    violations = check(ALLOW, evidence(*replaced(3_000), executions=executions))
    assert names_of(violations) == [exp.OLD_LEADER_STOPPED_FIRST]


def test_old_epoch_executions_without_a_takeover_are_not_a_violation_of_it() -> None:
    executions = (ExecutionEvent("d1", "c7", 5, FAULT_START + 5_000),)
    assert check(ALLOW, evidence(*KEPT, executions=executions)) == []


# --- escalation -----------------------------------------------------------------------------


def test_an_observed_escalation_holds() -> None:
    assert check(ESCALATE, evidence(*KEPT), observations={exp.ESCALATED: True}) == []


@pytest.mark.parametrize(
    ("observations", "shown"),
    [
        ({exp.ESCALATED: False}, "False"),
        ({}, "not observed"),
        (None, "not observed"),
        ({exp.ESCALATED: "yes"}, "yes"),  # only a real True counts
    ],
)
def test_an_escalation_not_observed_breaks_it(
    observations: Mapping[str, object] | None, shown: str
) -> None:
    violations = check(ESCALATE, evidence(*KEPT), observations=observations)
    assert names_of(violations) == [exp.POST_ESCALATED]
    assert shown in violations[0].detail
    assert "2 times" in violations[0].detail


def test_escalation_is_not_asked_of_other_scenarios() -> None:
    assert check(ALLOW, evidence(*KEPT), observations={exp.ESCALATED: False}) == []


# --- storm dead-lettered --------------------------------------------------------------------


def test_every_storm_reason_counted_holds() -> None:
    seen = {"bad_json": (100, 100), "oversized": (20, 25)}  # more counted: other traffic
    assert check(STORM, evidence(*KEPT), observations={exp.DEAD_LETTERED: seen}) == []


def test_a_reason_counted_below_what_was_sent_breaks_it() -> None:
    seen = {"oversized": (20, 20), "bad_json": (100, 97), "unknown_device": (50, 10)}
    violations = check(STORM, evidence(*KEPT), observations={exp.DEAD_LETTERED: seen})
    assert names_of(violations) == [exp.STORM_DEAD_LETTERED] * 2
    # One per short reason, by reason name.
    assert violations[0].detail.startswith("bad_json:")
    assert "100" in violations[0].detail and "97" in violations[0].detail
    assert violations[1].detail.startswith("unknown_device:")


@pytest.mark.parametrize("seen", [None, {}, "garbage"])
def test_storm_dead_letters_not_observed_break_it(seen: object) -> None:
    observations = {} if seen is None else {exp.DEAD_LETTERED: seen}
    violations = check(STORM, evidence(*KEPT), observations=observations)
    assert names_of(violations) == [exp.STORM_DEAD_LETTERED]
    assert "not observed" in violations[0].detail


# --- no leader when the fault started -------------------------------------------------------


@pytest.mark.parametrize("sc", [KEEP, REPLACE, ALLOW, ESCALATE, STORM])
def test_no_leader_at_fault_start_is_one_violation_naming_it(sc: Scenario) -> None:
    # The key was only taken after the fault started; the storm was not observed either:
    # still one violation, under the scenario's first expectation.
    ev = evidence(LeaderTerm(9, "backup", FAULT_START + 500, None))
    assert inv.measures(ev).old_epoch is None
    violations = check(sc, ev, observations={})
    assert violations == [
        inv.Violation(exp.expectations_for(sc)[0], "no leader held the key when the fault started")
    ]


# --- quorum loss ----------------------------------------------------------------------------


def test_quorum_loss_is_checked_for_commands_without_a_quorum() -> None:
    assert exp.NO_COMMAND_WITHOUT_QUORUM in exp.expectations_for(QUORUM)
    assert exp.NO_COMMAND_WITHOUT_QUORUM not in exp.expectations_for(ALLOW)


def test_executions_during_quorum_loss_after_one_ttl_break_it() -> None:
    ttl_ms = round(TTL_S * 1000)
    executions = (
        ExecutionEvent("d1", "c1", 5, FAULT_START + ttl_ms - 1),  # on its way: grace
        ExecutionEvent("d2", "c2", 5, FAULT_START + ttl_ms + 10),
        ExecutionEvent("d3", "c3", 5, T0 + 20_000),  # at the heal: quorum is back
    )
    got = check(QUORUM, evidence(*KEPT, executions=executions))
    assert [v.invariant for v in got] == [exp.NO_COMMAND_WITHOUT_QUORUM]
    assert "1 executions" in got[0].detail and "c2" in got[0].detail


def test_no_execution_during_quorum_loss_holds() -> None:
    executions = (ExecutionEvent("d1", "c1", 5, T0 + 25_000),)
    assert check(QUORUM, evidence(*KEPT, executions=executions)) == []


# --- the steady state after the heal --------------------------------------------------------


def test_no_steady_state_after_the_heal_breaks_it_with_the_reasons() -> None:
    observations = {exp.STEADY_REASONS: ["no standby answers", "bus: no uplink"]}
    got = check(KEEP, evidence(*KEPT, steady_at_ms=None), observations=observations)
    assert [v.invariant for v in got] == [exp.STEADY_AGAIN]
    assert "no standby answers; bus: no uplink" in got[0].detail


def test_every_scenario_is_checked_for_the_steady_state_after_the_heal() -> None:
    for sc in SCENARIOS:
        assert exp.expectations_for(sc)[-1] == exp.STEADY_AGAIN
