"""The drills of the SRE team as data: what each breaks, what must hold, how it heals.

A `Scenario` names its fault (`FaultKind`), the fault's parameters, the limits
the checker applies and the heal step that undoes the fault (always run, also
when a drill is interrupted). Timings are in multiples of the lease TTL
(`failover.lease_ttl_s`), so a scenario means the same on any config: a freeze
"past the TTL" stays past it when the TTL changes. `Limits.bounds` turns them
into the checker's `Bounds` for one TTL.

Nothing here injects anything; the injectors and the runner read these values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chaos.invariants import Bounds
from citypost.errors import InvalidArgumentError

NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

# Every drill checks every invariant (chaos.invariants.check_all); `must_hold` says
# which one the scenario is about.


class FaultKind(StrEnum):
    ACTOR_KILL = "actor-kill"  # SIGKILL of one asset actor's Ray worker
    RESTART_INTENSITY = "restart-intensity"  # the same actor killed past max_restarts
    POST_KILL = "post-kill"  # SIGKILL of a post's process group (CitySystem.crash_post)
    POST_FREEZE = "post-freeze"  # SIGSTOP of a post's session, then SIGCONT
    STANDBY_KILL = "standby-kill"  # SIGKILL of the standby, then restart_post
    SWITCHOVER = "switchover"  # planned handover (Resign with hold-off), then back
    ETCD_MEMBER_KILL = "etcd-member-kill"  # one member of three: quorum kept
    ETCD_QUORUM_LOSS = "etcd-quorum-loss"  # a majority of members killed
    BROKER_RESTART = "broker-restart"  # mosquitto killed and started again
    ETCD_PARTITION = "etcd-partition"  # a post's traffic to etcd dropped, broker reachable
    ETCD_LATENCY = "etcd-latency"  # latency and loss added between a post and etcd
    MALFORMED_STORM = "malformed-storm"  # malformed and oversized uplinks published


class Target(StrEnum):
    """Which post a fault hits, by its role when the fault starts (not by name)."""

    LEADER = "leader"
    STANDBY = "standby"


class LeaderChange(StrEnum):
    """What the leader key must do because of the fault."""

    NONE = "none"  # the leader before the fault still leads after it, same epoch
    REQUIRED = "required"  # a higher epoch must take over within `Limits.takeover_ttl`
    ALLOWED = "allowed"  # either is fine; the invariants decide


@dataclass(frozen=True)
class Link:
    """A degraded link between a post and etcd: one-way added latency (in TTLs) and
    the share of packets dropped."""

    latency_ttl: float
    loss: float = 0.0

    def latency_ms(self, lease_ttl_s: float) -> int:
        return round(self.latency_ttl * lease_ttl_s * 1000)


@dataclass(frozen=True)
class Storm:
    """Uplinks the drill publishes itself: malformed ones (bad JSON, base64, LPP, unknown
    devices) and ones over `ingest.max_message_bytes`, per second."""

    malformed_per_s: int
    oversized_per_s: int
    oversized_factor: float = 4.0  # times max_message_bytes


@dataclass(frozen=True)
class Limits:
    """What the checker tolerates, in lease TTLs. `takeover_ttl`: fault start to the new
    leader's key (None: no takeover expected, or not bounded). `command_slack_ttl`: how
    late past its deadline a command may settle. `telemetry_gap_ttl`: the longest gap
    per asset class (classes absent are only measured)."""

    takeover_ttl: float | None = None
    command_slack_ttl: float = 1.0
    telemetry_gap_ttl: Mapping[str, float] = field(default_factory=dict)

    def bounds(self, lease_ttl_s: float) -> Bounds:
        ttl_ms = lease_ttl_s * 1000
        return Bounds(
            command_slack_ms=round(self.command_slack_ttl * ttl_ms),
            telemetry_gap_ms={c: round(t * ttl_ms) for c, t in self.telemetry_gap_ttl.items()},
        )

    def takeover_ms(self, lease_ttl_s: float) -> int | None:
        if self.takeover_ttl is None:
            return None
        return round(self.takeover_ttl * lease_ttl_s * 1000)


@dataclass(frozen=True)
class Scenario:
    name: str
    breaks: str  # one line: what the fault does
    must_hold: str  # one line: what the drill proves
    kind: FaultKind
    heal: str  # what undoes the fault; the runner always runs it
    target: Target | None = None
    hold_ttl: float = 0.0  # how long the fault lasts before the heal (0: instantaneous)
    leader_change: LeaderChange = LeaderChange.NONE
    limits: Limits = field(default_factory=Limits)
    # Fault-specific parameters; None where the kind has none.
    kills_over_limit: int | None = None  # restart-intensity: kills beyond post.max_restarts
    etcd_members_killed: int | None = None  # of the cluster's members; None: a majority
    link: Link | None = None
    storm: Storm | None = None

    def hold_s(self, lease_ttl_s: float) -> float:
        return self.hold_ttl * lease_ttl_s

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for `drill list --json` and the reports."""
        return {
            "name": self.name,
            "breaks": self.breaks,
            "must_hold": self.must_hold,
            "kind": self.kind.value,
            "heal": self.heal,
            "target": None if self.target is None else self.target.value,
            "hold_ttl": self.hold_ttl,
            "leader_change": self.leader_change.value,
            "limits": {
                "takeover_ttl": self.limits.takeover_ttl,
                "command_slack_ttl": self.limits.command_slack_ttl,
                "telemetry_gap_ttl": dict(sorted(self.limits.telemetry_gap_ttl.items())),
            },
            "kills_over_limit": self.kills_over_limit,
            "etcd_members_killed": self.etcd_members_killed,
            "link": None
            if self.link is None
            else {"latency_ttl": self.link.latency_ttl, "loss": self.link.loss},
            "storm": None
            if self.storm is None
            else {
                "malformed_per_s": self.storm.malformed_per_s,
                "oversized_per_s": self.storm.oversized_per_s,
                "oversized_factor": self.storm.oversized_factor,
            },
        }


# Classes that report often (bus 15 s, traffic signal and company car 30 s of simulated
# time): a gap there is the fault's, not the schedule's. The others are only measured.
_FREQUENT = ("bus", "traffic_signal", "company_car")


def _gaps(ttls: float) -> dict[str, float]:
    return dict.fromkeys(_FREQUENT, ttls)


# The takeover after a lost leader: its lease expires (1 TTL) and the standby's campaign
# and first keepalive take a fraction more; 2 TTLs leave room for the driver's ticks.
_TAKEOVER_AFTER_LOSS = 2.0

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="actor-crash",
        breaks="SIGKILL of one asset actor's Ray worker on the leading post",
        must_hold="its supervisor restarts it from its snapshot; the leader keeps leading",
        kind=FaultKind.ACTOR_KILL,
        heal="nothing to undo: the supervisor restarts the actor; the drill waits for it",
        target=Target.LEADER,
        limits=Limits(telemetry_gap_ttl=_gaps(5.0)),
    ),
    Scenario(
        name="restart-intensity",
        breaks="the same asset actor killed more often than post.max_restarts in its window",
        must_hold="the post escalates (reports itself unhealthy); one commander throughout",
        kind=FaultKind.RESTART_INTENSITY,
        heal="stop killing; if the post stays unhealthy, crash it and bring it back",
        target=Target.LEADER,
        leader_change=LeaderChange.ALLOWED,
        kills_over_limit=2,
    ),
    Scenario(
        name="leader-crash",
        breaks="SIGKILL of the leading post's whole process group",
        must_hold="the standby takes over within the bound; no command lost or run twice",
        kind=FaultKind.POST_KILL,
        heal="bring the crashed post back (a running system's supervisor does); it stands by",
        target=Target.LEADER,
        leader_change=LeaderChange.REQUIRED,
        limits=Limits(takeover_ttl=_TAKEOVER_AFTER_LOSS, telemetry_gap_ttl=_gaps(5.0)),
    ),
    Scenario(
        name="leader-freeze",
        breaks="SIGSTOP of the leading post's session for twice the TTL, then SIGCONT",
        must_hold="the thawed post never commands under its old epoch after the takeover",
        kind=FaultKind.POST_FREEZE,
        heal="SIGCONT of the post's session; it must find itself deposed and stand by",
        target=Target.LEADER,
        hold_ttl=2.0,
        leader_change=LeaderChange.REQUIRED,
        limits=Limits(takeover_ttl=_TAKEOVER_AFTER_LOSS, telemetry_gap_ttl=_gaps(5.0)),
    ),
    Scenario(
        name="standby-crash",
        breaks="SIGKILL of the standby post, which then returns",
        must_hold="the leader keeps leading; the returned standby catches up",
        kind=FaultKind.STANDBY_KILL,
        heal="bring the standby back (a running system's supervisor does)",
        target=Target.STANDBY,
        limits=Limits(telemetry_gap_ttl=_gaps(2.0)),
    ),
    Scenario(
        name="switchover",
        breaks="a planned handover to the standby (failover switchover), then back",
        must_hold="the standby leads under a higher epoch fast; no command lost or run twice",
        kind=FaultKind.SWITCHOVER,
        heal="switch back to the post that led before (a second switchover)",
        target=Target.LEADER,
        hold_ttl=2.0,  # the standby leads a while before the switchback
        leader_change=LeaderChange.REQUIRED,
        limits=Limits(takeover_ttl=1.0, telemetry_gap_ttl=_gaps(2.0)),
    ),
    Scenario(
        name="etcd-member-kill",
        breaks="SIGKILL of one etcd member (quorum kept)",
        must_hold="the leader keeps leading; acknowledged writes survive",
        kind=FaultKind.ETCD_MEMBER_KILL,
        heal="bring the member back (restart, or SIGCONT on a running system), wait healthy",
        etcd_members_killed=1,
        limits=Limits(telemetry_gap_ttl=_gaps(2.0)),
    ),
    Scenario(
        name="etcd-quorum-loss",
        breaks="a majority of etcd members killed for twice the TTL, then restarted",
        must_hold="nobody commands without a lease; after restore one leader, writes intact",
        kind=FaultKind.ETCD_QUORUM_LOSS,
        heal="bring every member back (restart, or SIGCONT on a running system), wait healthy",
        hold_ttl=2.0,
        leader_change=LeaderChange.ALLOWED,
        etcd_members_killed=None,
    ),
    Scenario(
        name="broker-restart",
        breaks="mosquitto killed, down for twice the TTL, then started again",
        must_hold="the leader keeps leading; telemetry resumes; commands settle or expire",
        kind=FaultKind.BROKER_RESTART,
        heal="start mosquitto again on its port and persistence (or its supervisor does)",
        hold_ttl=2.0,
        limits=Limits(telemetry_gap_ttl=_gaps(10.0)),
    ),
    Scenario(
        name="leader-partition",
        breaks="the leader's traffic to etcd dropped for twice the TTL; the broker still reached",
        must_hold="the cut-off leader stops commanding before the standby starts",
        kind=FaultKind.ETCD_PARTITION,
        heal="the link between the post and etcd forwards again (held bytes delivered)",
        target=Target.LEADER,
        hold_ttl=2.0,
        leader_change=LeaderChange.REQUIRED,
        limits=Limits(takeover_ttl=_TAKEOVER_AFTER_LOSS, telemetry_gap_ttl=_gaps(5.0)),
    ),
    Scenario(
        name="slow-etcd-below-ttl",
        breaks="latency a quarter of the TTL and 5% loss between the leader and etcd",
        must_hold="the leader keeps its lease and leads throughout, same epoch",
        kind=FaultKind.ETCD_LATENCY,
        heal="the link between the post and etcd forwards without delay again",
        target=Target.LEADER,
        hold_ttl=5.0,
        link=Link(latency_ttl=0.25, loss=0.05),
        limits=Limits(telemetry_gap_ttl=_gaps(2.0)),
    ),
    Scenario(
        name="slow-etcd-above-ttl",
        breaks="latency 1.5 times the TTL and 30% loss between the leader and etcd",
        must_hold="a leader that cannot renew stops commanding; still one commander",
        kind=FaultKind.ETCD_LATENCY,
        heal="the link between the post and etcd forwards without delay again",
        target=Target.LEADER,
        hold_ttl=5.0,
        leader_change=LeaderChange.ALLOWED,
        link=Link(latency_ttl=1.5, loss=0.3),
    ),
    Scenario(
        name="malformed-storm",
        breaks="a storm of malformed and oversized uplinks while the city runs",
        must_hold="they go to the dead letters; real telemetry and commands keep flowing",
        kind=FaultKind.MALFORMED_STORM,
        heal="stop publishing the storm",
        hold_ttl=5.0,
        storm=Storm(malformed_per_s=200, oversized_per_s=20),
        limits=Limits(telemetry_gap_ttl=_gaps(2.0)),
    ),
)

# A few cheap scenarios, one round each, for CI.
CI_SUITE: tuple[str, ...] = ("leader-crash", "switchover", "etcd-member-kill", "malformed-storm")

_BY_NAME: dict[str, Scenario] = {s.name: s for s in SCENARIOS}


def names() -> list[str]:
    return [s.name for s in SCENARIOS]


def get(name: str) -> Scenario:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidArgumentError(
            f"no scenario {name!r}; known scenarios: {', '.join(names())}"
        ) from None
