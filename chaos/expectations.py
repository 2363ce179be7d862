"""What a scenario expects beyond the invariants every drill checks: whether the
leader had to change, how fast, that the old leader stopped before the new one
started, and facts the fault itself observed (a post escalating). Pure, like
chaos/invariants.py, and reported the same way (as `Violation`s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chaos.evidence import Evidence
from chaos.invariants import Measures, Violation
from chaos.scenarios import FaultKind, LeaderChange, Scenario

LEADER_KEPT = "leader_kept"  # LeaderChange.NONE
LEADER_REPLACED = "leader_replaced"  # LeaderChange.REQUIRED
TAKEOVER_BOUNDED = "takeover_within_bound"
OLD_LEADER_STOPPED_FIRST = "old_leader_stopped_before_takeover"
POST_ESCALATED = "post_escalated"  # restart-intensity: the fault saw the post report it
STORM_DEAD_LETTERED = "storm_dead_lettered"  # every malformed uplink counted, by reason
NO_COMMAND_WITHOUT_QUORUM = "no_command_without_quorum"  # etcd-quorum-loss
STEADY_AGAIN = "steady_state_restored"  # every scenario: after the heal

# Facts a fault reports about itself (`observations`).
ESCALATED = "escalated"  # bool
DEAD_LETTERED = "dead_lettered"  # {reason: [sent, counted by the leader]}
STEADY_REASONS = "steady_after_reasons"  # why the steady state did not return (runner)


def expectations_for(scenario: Scenario) -> tuple[str, ...]:
    """The names this scenario is checked against, in order (a report lists them all)."""
    names: list[str] = []
    if scenario.leader_change is LeaderChange.NONE:
        names.append(LEADER_KEPT)
    if scenario.leader_change is LeaderChange.REQUIRED:
        names.append(LEADER_REPLACED)
    if scenario.limits.takeover_ttl is not None:
        names.append(TAKEOVER_BOUNDED)
    names.append(OLD_LEADER_STOPPED_FIRST)
    if scenario.kind is FaultKind.RESTART_INTENSITY:
        names.append(POST_ESCALATED)
    if scenario.kind is FaultKind.MALFORMED_STORM:
        names.append(STORM_DEAD_LETTERED)
    if scenario.kind is FaultKind.ETCD_QUORUM_LOSS:
        names.append(NO_COMMAND_WITHOUT_QUORUM)
    names.append(STEADY_AGAIN)
    return tuple(names)


def check_expectations(
    scenario: Scenario,
    evidence: Evidence,
    measures: Measures,
    *,
    lease_ttl_s: float,
    observations: Mapping[str, object] | None = None,
) -> list[Violation]:
    observations = observations or {}
    out: list[Violation] = []
    names: Sequence[str] = expectations_for(scenario)
    if evidence.steady_at_ms is None:
        reasons = observations.get(STEADY_REASONS)
        why = "; ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else "not seen"
        out.append(
            Violation(STEADY_AGAIN, f"the steady state did not return after the heal: {why}")
        )
    if measures.old_epoch is None:
        # The steady state before the fault requires a leader: without one nothing below
        # can be judged, and saying so is the honest answer.
        return [Violation(names[0], "no leader held the key when the fault started"), *out]
    newer = sorted(
        (t for t in evidence.leaders if t.epoch > measures.old_epoch), key=lambda t: t.from_ms
    )
    if LEADER_KEPT in names:
        if newer:
            out.append(
                Violation(
                    LEADER_KEPT,
                    f"epoch {measures.old_epoch} was replaced by epoch {newer[0].epoch} "
                    f"({newer[0].post}) at {newer[0].from_ms} ms; this fault must not move it",
                )
            )
        elif measures.detection_ms is not None:
            out.append(
                Violation(
                    LEADER_KEPT,
                    f"the leader key of epoch {measures.old_epoch} went away "
                    f"{measures.detection_ms} ms after the fault started",
                )
            )
    if LEADER_REPLACED in names and measures.takeover_ms is None:
        out.append(
            Violation(
                LEADER_REPLACED,
                f"no epoch above {measures.old_epoch} took the leader key by "
                f"{evidence.observed_to_ms} ms",
            )
        )
    bound_ms = scenario.limits.takeover_ms(lease_ttl_s)
    if (
        TAKEOVER_BOUNDED in names
        and bound_ms is not None
        and measures.takeover_ms is not None
        and measures.takeover_ms > bound_ms
    ):
        out.append(
            Violation(
                TAKEOVER_BOUNDED,
                f"the new leader took the key {measures.takeover_ms} ms after the fault "
                f"started; bound {bound_ms} ms ({scenario.limits.takeover_ttl:g} TTL)",
            )
        )
    if (
        measures.takeover_ms is not None
        and measures.old_epoch_last_execution_ms is not None
        and measures.old_epoch_last_execution_ms >= measures.takeover_ms
    ):
        out.append(
            Violation(
                OLD_LEADER_STOPPED_FIRST,
                f"a command of epoch {measures.old_epoch} was executed "
                f"{measures.old_epoch_last_execution_ms} ms after the fault started, not "
                f"before the new leader took the key at {measures.takeover_ms} ms",
            )
        )
    if POST_ESCALATED in names and observations.get(ESCALATED) is not True:
        out.append(
            Violation(
                POST_ESCALATED,
                f"the post did not report itself unhealthy after its actor was killed "
                f"{scenario.kills_over_limit} times past post.max_restarts "
                f"({observations.get(ESCALATED, 'not observed')})",
            )
        )
    if STORM_DEAD_LETTERED in names:
        out.extend(_dead_lettered(observations.get(DEAD_LETTERED)))
    if NO_COMMAND_WITHOUT_QUORUM in names:
        # No command can be written (ledger before downlink) nor a lease kept without a
        # quorum: after one TTL of grace for what was already on its way, devices execute
        # nothing until the members are back.
        quiet_from = evidence.fault.start_ms + round(lease_ttl_s * 1000)
        late = [e for e in evidence.executions if quiet_from <= e.at_ms < evidence.fault.end_ms]
        if late:
            first = min(late, key=lambda e: e.at_ms)
            out.append(
                Violation(
                    NO_COMMAND_WITHOUT_QUORUM,
                    f"{len(late)} executions while etcd had no quorum, the first: command "
                    f"{first.command_id} of epoch {first.epoch} on {first.dev_eui} at "
                    f"{first.at_ms - evidence.fault.start_ms} ms after the fault started",
                )
            )
    return out


def _dead_lettered(seen: object) -> list[Violation]:
    """Each reason's dead letters counted by the leader reach what the storm sent."""
    if not isinstance(seen, Mapping) or not seen:
        return [Violation(STORM_DEAD_LETTERED, "the storm's dead letters were not observed")]
    out = []
    for reason, (sent, counted) in sorted(seen.items()):
        if counted < sent:
            out.append(
                Violation(
                    STORM_DEAD_LETTERED,
                    f"{reason}: {sent} malformed uplinks sent, {counted} counted as dead letters",
                )
            )
    return out
