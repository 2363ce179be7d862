"""The drill runner: steady state, fault, heal, steady state again, invariants, report.

One round (`DrillRunner.run_round`):
1. wait for the steady state (`chaos.steady_state`); refuse the round if it does
   not come within `steady_timeout_s` (`SteadyStateRefused`, nothing injected);
2. watch a little (`lead_in_s`) while an operator sends group commands;
3. inject the fault, hold it, heal it: the heal runs in a `finally`, so an
   interrupted drill (Ctrl-C, SIGTERM) still undoes its fault;
4. wait for the steady state again (when it came is measured), watch `settle_s`;
5. collect the evidence (devices' execution log, the leader key's history from
   etcd, acknowledged writes and the ledger read from etcd, uplink counters),
   check every invariant and the scenario's expectations, write the report.

The collectors (`LeaderTrail`, `CounterSampler`) run for the whole drill; each
round takes the slice of evidence it watched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridges.registry import class_name
from chaos import faults as fault_lib
from chaos.collect import (
    CounterSampler,
    LeaderTrail,
    live_during,
    now_ms,
    present_keys,
    read_ledger,
)
from chaos.evidence import AcknowledgedWrite, Evidence, FaultWindow, executions_from_log
from chaos.expectations import STEADY_REASONS, check_expectations, expectations_for
from chaos.invariants import Bounds, Report, check_all
from chaos.operator_load import Sender
from chaos.report import ReportFiles, write_report
from chaos.scenarios import LeaderChange, Scenario
from chaos.steady_state import PostView, Role, Snapshot, check_steady_state
from chaos.trails import recent_uplinks, telemetry_from_samples
from citypost.errors import CitypostError, FailedPreconditionError
from console import failover_cli
from console.session import TokenSource
from protos.citypost.v1 import admin_pb2, assets_pb2

log = logging.getLogger(__name__)

# Classes whose devices report often enough to judge "telemetry flowing" in a few
# seconds (bus every 15 s, signals and company cars every 30 s of simulated time).
FLOWING_CLASSES = ("bus", "traffic_signal", "company_car")
# Counter samples read this long before a round's watch serve as its baseline.
BASELINE_MS = 2500
_ROLES = {admin_pb2.POST_ROLE_LEADER: Role.LEADER, admin_pb2.POST_ROLE_STANDBY: Role.STANDBY}


class DrillRefused(CitypostError):
    """The round was refused before anything was injected."""


class SteadyStateRefused(DrillRefused):
    """The steady state did not hold before the fault: the drill injected nothing."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("the steady state does not hold: " + "; ".join(reasons))
        self.reasons = list(reasons)


@dataclass(frozen=True)
class DrillSettings:
    lead_in_s: float = 3.0  # watched before the fault
    settle_s: float = 3.0  # watched after the steady state returned
    steady_timeout_s: float = 90.0  # for the steady state, before and after
    steady_window_s: float = 3.0  # "telemetry flowing": uplinks within this window
    max_lag_revisions: int = 20  # "standby caught up"
    sender_interval_s: float = 0.2
    command_ttl_ttl: float = 10.0  # the operator's commands' TTL, in lease TTLs


@dataclass(frozen=True)
class RoundResult:
    scenario: str
    round_: int
    report: Report
    files: ReportFiles
    observations: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report.ok


def scenario_bounds(scenario: Scenario, lease_ttl_s: float) -> Bounds:
    """The checker's bounds for a scenario. Nobody can mark a command EXPIRED while
    nobody leads: when the leader may change, the hold and the takeover bound add to
    how late a command whose deadline fell in between may settle."""
    bounds = scenario.limits.bounds(lease_ttl_s)
    if scenario.leader_change is LeaderChange.NONE:
        return bounds
    extra_ttl = scenario.hold_ttl + (scenario.limits.takeover_ttl or 0.0)
    extra_ms = round(extra_ttl * lease_ttl_s * 1000)
    return Bounds(bounds.command_slack_ms + extra_ms, bounds.telemetry_gap_ms)


LOAD_OPERATOR = "urban-supervision"


class DrillRunner:
    """Drills on one `DrillTarget`; `start()` the collectors, `stop()` them."""

    def __init__(
        self,
        drilled: fault_lib.Drilled,
        out_dir: Path,
        settings: DrillSettings | None = None,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.drilled = drilled
        self._progress = progress or (lambda line: log.info("%s", line))
        self.target = drilled.target
        self.out_dir = out_dir
        self.settings = settings or DrillSettings()
        self.city = self.target.config.city.name
        self.lease_ttl_s = self.target.lease_ttl_s
        # Posts keep their addresses across restarts (their ports are fixed per post).
        self._addresses = self.target.addresses()
        self.trail = LeaderTrail(self.target.endpoints, self.city, tls=self.target.identity)
        self._operator: TokenSource | None = None
        self.sampler = CounterSampler(
            self._addresses, channel_factory=self.target.channel_factory()
        )

    def start(self) -> DrillRunner:
        self.target.start()
        # The drill's operator load acts as the lamps' operators (urban supervision).
        self._operator = self.target.operator_tokens(LOAD_OPERATOR)
        self.trail.start()
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()
        self.trail.stop()
        self.target.close()

    def __enter__(self) -> DrillRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the steady state --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        at = now_ms()
        with failover_cli.AdminCalls(2.0, channel_factory=self.target.channel_factory()) as calls:
            views = calls.statuses(list(self._addresses.values()))
        leader_applied = failover_cli.leader_applied(views)
        posts: list[PostView] = []
        leader_name = ""
        for view in views:
            if view.status is None:
                continue
            role = _ROLES.get(view.status.role, Role.UNKNOWN)
            lag = None
            if (
                role is Role.STANDBY
                and leader_applied is not None
                and view.status.HasField("applied_revision")
            ):
                lag = max(0, leader_applied - view.status.applied_revision)
            if role is Role.LEADER:
                leader_name = view.name
            posts.append(PostView(view.name, role, lag))
        window_ms = round(self.settings.steady_window_s * 1000)
        devices: dict[str, int] = {}
        recent: dict[str, int] = {}
        if leader_name:
            status = self.sampler.latest(leader_name, window_ms)
            if status is not None:
                for actor in status.actors:
                    cls = class_name(actor.asset_class)
                    if cls in FLOWING_CLASSES:
                        devices[cls] = devices.get(cls, 0) + actor.devices
            recent = recent_uplinks(
                self.sampler.samples(at - window_ms), leader_name, window_ms, at
            )
        current = self.trail.current()
        ledger = read_ledger(self.target.endpoints, self.city, tls=self.target.identity)
        return Snapshot(
            at_ms=at,
            posts=tuple(posts),
            devices=devices,
            uplinks_recent=recent,
            window_s=self.settings.steady_window_s,
            unfinished=tuple(e for e in ledger if not e.status.finished),
            leader_key_post=None if current is None else current.post,
            max_lag_revisions=self.settings.max_lag_revisions,
        )

    def wait_steady(self, timeout_s: float) -> tuple[int | None, list[str]]:
        """When the steady state held (None: not within `timeout_s`) and the last reasons."""
        deadline = time.monotonic() + timeout_s
        reasons: list[str] = ["not checked"]
        while True:
            try:
                snapshot = self.snapshot()
                reasons = check_steady_state(snapshot)
                if not reasons:
                    return snapshot.at_ms, []
            except CitypostError as exc:
                reasons = [f"cannot read the system: {exc.message}"]
            if time.monotonic() >= deadline:
                return None, reasons
            time.sleep(1.0)

    # --- one round ---------------------------------------------------------------------------

    def targets(self) -> fault_lib.Targets:
        current = self.trail.current()
        if current is None:
            raise FailedPreconditionError("nobody holds the leader key")
        others = [name for name in self._addresses if name != current.post]
        if not others:
            raise FailedPreconditionError(f"{current.post} leads but no other post exists")
        return fault_lib.Targets(leader=current.post, standby=others[0])

    def run_round(self, scenario: Scenario, round_: int) -> RoundResult:
        s = self.settings
        unsupported = fault_lib.unsupported(scenario, self.target)
        if unsupported:
            raise DrillRefused(unsupported)
        steady_before, reasons = self.wait_steady(s.steady_timeout_s)
        if steady_before is None:
            raise SteadyStateRefused(reasons)
        targets = self.targets()
        self._progress(
            f"round {round_}: steady state holds ({targets.leader} leads, "
            f"{targets.standby} stands by)"
        )
        observed_from = now_ms()
        ttl_ms = round(s.command_ttl_ttl * self.lease_ttl_s * 1000)
        sender = Sender(
            list(self._addresses.values()),
            f"{scenario.name}-{round_}-{observed_from}",
            window_s=max(10.0, 5 * self.lease_ttl_s),
            groups=self._lamp_groups(),
            interval_s=s.sender_interval_s,
            ttl_ms=ttl_ms,
            channel_factory=self.target.channel_factory(),
            token=self._operator,
        ).start()
        fault = fault_lib.fault_for(scenario, self.drilled, targets)
        try:
            time.sleep(s.lead_in_s)
            self._progress(f"round {round_}: injecting: {fault.describe()}")
            fault_start = now_ms()
            try:
                fault.inject()
                time.sleep(scenario.hold_s(self.lease_ttl_s))
            finally:
                self._progress(f"round {round_}: healing: {scenario.heal}")
                fault.heal()
            fault_end = now_ms()
            self._progress(
                f"round {round_}: healed {(fault_end - fault_start) / 1000:.1f} s after the "
                "fault started; waiting for the steady state"
            )
            steady_after, after_reasons = self.wait_steady(s.steady_timeout_s)
            time.sleep(s.settle_s)
        finally:
            sender.stop()
        observed_to = now_ms()
        evidence = self._evidence(
            FaultWindow(fault_start, fault_end), observed_from, observed_to, sender, steady_after
        )
        report = check_all(evidence, scenario_bounds(scenario, self.lease_ttl_s))
        report = report.adding(
            expectations_for(scenario),
            check_expectations(
                scenario,
                evidence,
                report.measures,
                lease_ttl_s=self.lease_ttl_s,
                observations={**fault.observations, STEADY_REASONS: after_reasons},
            ),
        )
        extra = {
            "targets": {"leader": targets.leader, "standby": targets.standby},
            "observations": fault.observations,
            "steady_after_reasons": after_reasons,
            "operator": {"acknowledged": len(sender.acked), "not_acknowledged": len(sender.failed)},
            "lease_ttl_s": self.lease_ttl_s,
            "scenario": scenario.to_dict(),
        }
        files = write_report(
            evidence,
            report,
            self.out_dir / f"{scenario.name}-round-{round_}",
            scenario=scenario.name,
            round_=round_,
            extra=extra,
        )
        return RoundResult(scenario.name, round_, report, files, dict(fault.observations))

    def _lamp_groups(self) -> list[str]:
        groups = self.target.city.registry.groups()
        lamps = sorted(
            (g for (cls, g) in groups if cls == assets_pb2.STREET_LAMP),
            key=lambda g: len(groups[(assets_pb2.STREET_LAMP, g)]),
        )
        return lamps[:2]  # the smallest: each command reaches few devices, quickly

    def _evidence(
        self,
        window: FaultWindow,
        observed_from: int,
        observed_to: int,
        sender: Sender,
        steady_at: int | None,
    ) -> Evidence:
        executions = tuple(
            e
            for e in executions_from_log(self.target.executions())
            if observed_from <= e.at_ms <= observed_to
        )
        terms = tuple(
            t
            for t in self.trail.terms()
            if t.from_ms <= observed_to and (t.to_ms is None or t.to_ms >= observed_from)
        )
        acked = [AcknowledgedWrite(a.ledger_key, a.at_ms) for a in sender.acked]
        ledger = read_ledger(self.target.endpoints, self.city, tls=self.target.identity)
        return Evidence(
            fault=window,
            observed_from_ms=observed_from,
            observed_to_ms=observed_to,
            executions=executions,
            leaders=terms,
            acknowledged_writes=tuple(acked),
            present_keys=present_keys(ledger),
            ledger=tuple(live_during(ledger, observed_from)),
            telemetry=telemetry_from_samples(
                self.sampler.samples(observed_from - BASELINE_MS), observed_from
            ),
            steady_at_ms=steady_at,
        )
