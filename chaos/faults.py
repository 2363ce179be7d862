"""The fault injectors: each breaks one thing on a `DrillTarget` and has a
heal step that undoes it. The runner calls `heal()` in a `finally`, so it runs
also when the drill is interrupted; every heal is safe to call twice and after
an `inject()` that failed half-way.

A fault hits posts by the role they had when it starts (`Targets`), never by a
fixed name: the leader of round 2 may be the standby of round 1. What a fault
sees of itself (the post escalating, the storm's dead letters) goes into
`observations`, which the scenario's expectations read.
"""

from __future__ import annotations

import contextlib
import os
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import grpc

from chaos.expectations import DEAD_LETTERED, ESCALATED
from chaos.polling import wait_until
from chaos.scenarios import FaultKind, Scenario, Target
from chaos.target import DrillTarget
from citypost.errors import FailedPreconditionError, InfrastructureError
from console.failover_cli import AdminCalls, Handover, plan_switchover, took_over
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc
from security import identities
from security.pki import Kind


@dataclass(frozen=True)
class Targets:
    """Who led and who stood by when the fault started (post names)."""

    leader: str
    standby: str

    def of(self, target: Target | None) -> str:
        return self.standby if target is Target.STANDBY else self.leader


@dataclass
class Drilled:
    """What the faults act on, how long a heal waits, the seed of their randomness."""

    target: DrillTarget
    timeout_s: float = 90.0
    seed: int = 0

    @property
    def lease_ttl_s(self) -> float:
        return self.target.lease_ttl_s

    def address(self, post: str) -> str:
        return self.target.address(post)

    def addresses(self) -> list[str]:
        return list(self.target.addresses().values())

    def status(self, post: str, timeout_s: float = 3.0) -> admin_pb2.PostStatus:
        with self.target.channel_factory()(self.address(post)) as channel:
            status: admin_pb2.PostStatus = admin_pb2_grpc.PostAdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=timeout_s
            )
            return status


class Fault(ABC):
    def __init__(self, drilled: Drilled, scenario: Scenario, targets: Targets) -> None:
        self.drilled = drilled
        self.scenario = scenario
        self.targets = targets
        self.observations: dict[str, object] = {}

    @property
    def post(self) -> str:
        return self.targets.of(self.scenario.target)

    @abstractmethod
    def inject(self) -> None: ...

    @abstractmethod
    def heal(self) -> None: ...

    def describe(self) -> str:
        return self.scenario.breaks


# --- posts ----------------------------------------------------------------------------------


class PostKill(Fault):
    """SIGKILL of a post's whole session; the heal starts it again (it joins as standby)."""

    def inject(self) -> None:
        hit = self.drilled.target.crash_post(self.post)
        self.observations["processes_killed"] = hit

    def heal(self) -> None:
        self.drilled.target.restore_post(self.post, self.drilled.timeout_s)


class PostFreeze(Fault):
    def inject(self) -> None:
        self.observations["processes_frozen"] = self.drilled.target.freeze_post(self.post)

    def heal(self) -> None:
        self.drilled.target.thaw_post(self.post)


class Switchover(Fault):
    """A planned handover to the standby; the heal hands back to the post that led."""

    def inject(self) -> None:
        self._hand_over(self.targets.leader, self.targets.standby)

    def heal(self) -> None:
        with AdminCalls(channel_factory=self.drilled.target.channel_factory()) as calls:
            views = calls.statuses(self.drilled.addresses())
        if any(v.leads and v.name == self.targets.leader for v in views):
            return  # never handed over, or already back
        self._hand_over(self.targets.standby, self.targets.leader)

    def _hand_over(self, leader: str, to: str) -> None:
        addresses = self.drilled.addresses()
        with AdminCalls(channel_factory=self.drilled.target.channel_factory()) as calls:

            def planned() -> Handover | None:
                plan = plan_switchover(calls.statuses(addresses), to)
                return plan if isinstance(plan, Handover) else None

            # The target must be a ready standby first (after a first handover the old
            # leader waits out its hold-off before it stands by).
            plan: Handover = wait_until(
                f"{to} ready to take over from {leader}", planned, self.drilled.timeout_s
            )
            calls.resign(plan.leader.address, hold_off_ms=0)
            wait_until(
                f"{to} leading after {leader} resigned",
                lambda: any(
                    v.status is not None and took_over(v.status, to, plan.from_epoch)
                    for v in calls.statuses([self.drilled.address(to)])
                ),
                self.drilled.timeout_s,
            )


# --- actors ---------------------------------------------------------------------------------


def _actor(status: admin_pb2.PostStatus, name: str) -> admin_pb2.ActorStatus | None:
    return next((a for a in status.actors if a.name == name), None)


class ActorKill(Fault):
    """SIGKILL of one asset actor's Ray worker on the target post."""

    def __init__(self, drilled: Drilled, scenario: Scenario, targets: Targets) -> None:
        super().__init__(drilled, scenario, targets)
        self.actor = ""
        self._pid = 0

    def _session(self) -> int:
        return self.drilled.target.session(self.post)

    def _pick(self) -> admin_pb2.ActorStatus:
        status = self.drilled.status(self.post)
        live = sorted(
            (a for a in status.actors if a.healthy and a.worker_pid > 0),
            key=lambda a: (-a.devices, a.name),
        )
        if not live:
            raise FailedPreconditionError(f"post {self.post} reports no live actor worker")
        chosen = next((a for a in live if a.name == self.actor), live[0])
        return chosen

    def kill_one(self) -> None:
        actor = self._pick()
        # Only a process of the post's own session (which the drill started) is signalled.
        if os.getsid(actor.worker_pid) != self._session():
            raise FailedPreconditionError(
                f"worker {actor.worker_pid} of {actor.name} is not in post {self.post}'s session"
            )
        self.actor, self._pid = actor.name, actor.worker_pid
        os.kill(actor.worker_pid, signal.SIGKILL)

    def wait_restarted(self) -> admin_pb2.ActorStatus:
        def back() -> admin_pb2.ActorStatus | None:
            actor = _actor(self.drilled.status(self.post), self.actor)
            ok = actor is not None and actor.healthy and actor.worker_pid not in (0, self._pid)
            return actor if ok else None

        restarted: admin_pb2.ActorStatus = wait_until(
            f"actor {self.actor} back on a new worker", back, self.drilled.timeout_s
        )
        return restarted

    def inject(self) -> None:
        self.kill_one()
        self.observations["actor"] = self.actor
        self.observations["worker_pid"] = self._pid

    def heal(self) -> None:
        if self.actor:
            restarted = self.wait_restarted()
            self.observations["restarts"] = restarted.restarts


class RestartIntensity(ActorKill):
    """The same actor killed past the post's restart intensity: the post must escalate.
    The heal restarts the post if it stays unhealthy."""

    def inject(self) -> None:
        config = self.drilled.target.config.post
        kills = config.max_restarts + (self.scenario.kills_over_limit or 1)
        for i in range(kills):
            self.kill_one()
            if i < kills - 1:
                self.wait_restarted()
        self.observations["actor"] = self.actor
        self.observations["kills"] = kills

        def unhealthy() -> str:
            status = self.drilled.status(self.post)
            return "" if status.healthy else status.unhealthy_reason or "unhealthy"

        try:
            reason = wait_until(f"post {self.post} escalating", unhealthy, self.drilled.timeout_s)
            self.observations[ESCALATED] = True
            self.observations["unhealthy_reason"] = reason
        except InfrastructureError as exc:
            self.observations[ESCALATED] = False
            self.observations["unhealthy_reason"] = str(exc)

    def heal(self) -> None:
        try:
            healthy = self.drilled.status(self.post).healthy
        except grpc.RpcError:
            healthy = False
        if not healthy:
            # Crash and bring back: the drill's own system restarts it, a running one's
            # supervisor does.
            self.drilled.target.crash_post(self.post)
            self.drilled.target.restore_post(self.post, self.drilled.timeout_s)


# --- etcd -----------------------------------------------------------------------------------


class EtcdMembersKill(Fault):
    """SIGKILL of etcd members: one (quorum kept) or a majority. The Raft leader goes
    first, the harder case. The heal restarts every killed member."""

    def __init__(self, drilled: Drilled, scenario: Scenario, targets: Targets) -> None:
        super().__init__(drilled, scenario, targets)
        self.killed: list[int] = []

    def inject(self) -> None:
        target = self.drilled.target
        n = target.etcd_member_count()
        count = self.scenario.etcd_members_killed or n // 2 + 1
        raft = target.raft_leader()
        order = [raft] if raft is not None else []
        order += [i for i in range(n) if i not in order]
        for index in order[:count]:
            target.take_etcd_members([index])
            self.killed.append(index)
        self.observations["members_lost"] = list(self.killed)
        self.observations["raft_leader_lost"] = raft in self.killed

    def heal(self) -> None:
        killed, self.killed = self.killed, []
        self.drilled.target.give_back_etcd_members(killed, self.drilled.timeout_s)


# --- the broker -----------------------------------------------------------------------------


class BrokerRestart(Fault):
    def __init__(self, drilled: Drilled, scenario: Scenario, targets: Targets) -> None:
        super().__init__(drilled, scenario, targets)
        self._killed = False

    def inject(self) -> None:
        self.drilled.target.kill_broker()
        self._killed = True

    def heal(self) -> None:
        if self._killed:
            self.drilled.target.restore_broker(self.drilled.timeout_s)
            self._killed = False


# --- links to etcd --------------------------------------------------------------------------


class LinkPartition(Fault):
    def inject(self) -> None:
        self.drilled.target.link(self.post).partition()

    def heal(self) -> None:
        self.drilled.target.link(self.post).heal()


class LinkLatency(Fault):
    def inject(self) -> None:
        link = self.scenario.link
        if link is None:
            raise FailedPreconditionError(f"scenario {self.scenario.name} names no link")
        latency = link.latency_ms(self.drilled.lease_ttl_s)
        self.observations["latency_ms"] = latency
        self.observations["loss"] = link.loss
        self.drilled.target.link(self.post).degrade(latency, link.loss)

    def heal(self) -> None:
        self.drilled.target.link(self.post).heal()


# --- malformed uplinks ----------------------------------------------------------------------


class MalformedStorm(Fault):
    """Publishes the storm; the heal stops it and compares what the leader counted in
    its dead letters with what was sent, per reason."""

    def __init__(self, drilled: Drilled, scenario: Scenario, targets: Targets) -> None:
        super().__init__(drilled, scenario, targets)
        self._publisher: Any = None
        self._before: dict[str, int] = {}

    def inject(self) -> None:
        from chaos.storm import StormPublisher  # paho client only for this drill

        storm = self.scenario.storm
        if storm is None:
            raise FailedPreconditionError(f"scenario {self.scenario.name} names no storm")
        self._before = dict(self.drilled.status(self.post).dead_letters_by_reason)
        target = self.drilled.target
        config = target.config
        # A network server gone wrong: only a network server's certificate may publish
        # device events on the city's broker.
        tls = identities.tls_identity(config, Kind.NETWORK_SERVER, identities.NETWORK_SERVER)
        self._publisher = StormPublisher(
            config.mqtt, target.city, storm, edge=config.edge, seed=self.drilled.seed, tls=tls
        )
        self._publisher.start()

    def heal(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        publisher.stop()
        sent: dict[str, int] = dict(publisher.sent_by_reason())

        counted: dict[str, int] = {}

        def all_counted() -> bool:
            now = self.drilled.status(self.post).dead_letters_by_reason
            counted.update({r: now.get(r, 0) - self._before.get(r, 0) for r in sent})
            return all(counted[r] >= sent[r] for r in sent)

        # The edge may still be working through the storm's tail; what it counted by the
        # deadline is what the expectation judges.
        with contextlib.suppress(InfrastructureError):
            wait_until("the storm's dead letters counted", all_counted, 10.0)
        self.observations[DEAD_LETTERED] = {r: [sent[r], counted.get(r, 0)] for r in sorted(sent)}


_FAULTS: dict[FaultKind, type[Fault]] = {
    FaultKind.ACTOR_KILL: ActorKill,
    FaultKind.RESTART_INTENSITY: RestartIntensity,
    FaultKind.POST_KILL: PostKill,
    FaultKind.POST_FREEZE: PostFreeze,
    FaultKind.STANDBY_KILL: PostKill,
    FaultKind.SWITCHOVER: Switchover,
    FaultKind.ETCD_MEMBER_KILL: EtcdMembersKill,
    FaultKind.ETCD_QUORUM_LOSS: EtcdMembersKill,
    FaultKind.BROKER_RESTART: BrokerRestart,
    FaultKind.ETCD_PARTITION: LinkPartition,
    FaultKind.ETCD_LATENCY: LinkLatency,
    FaultKind.MALFORMED_STORM: MalformedStorm,
}


def unsupported(scenario: Scenario, target: DrillTarget) -> str:
    """Why this target cannot run the scenario at all ("" when it can)."""
    if scenario.kind in (FaultKind.ETCD_PARTITION, FaultKind.ETCD_LATENCY) and not target.links:
        return (
            f"{scenario.name} needs each post's etcd traffic through a link the drill "
            "controls, and this system has none; run it on the drill's own system "
            "(without --against)"
        )
    return ""


def fault_for(scenario: Scenario, drilled: Drilled, targets: Targets) -> Fault:
    return _FAULTS[scenario.kind](drilled, scenario, targets)
