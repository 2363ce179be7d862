"""The pure parts around the drill runner: the checker's bounds per scenario, the
ledger as evidence, the fault table and targets, and SIGTERM turned into Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import cast

import pytest

from chaos import faults
from chaos.collect import ledger_entry, live_during
from chaos.evidence import CommandStatus, LedgerEntry
from chaos.invariants import Bounds
from chaos.runner import scenario_bounds
from chaos.scenarios import SCENARIOS, FaultKind, LeaderChange, Limits, Scenario, Target
from chaos.target import DrillTarget
from cluster import drill_cli
from protos.citypost.v1 import command_pb2, control_state_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000


def scenario(
    change: LeaderChange,
    *,
    hold_ttl: float = 0.0,
    takeover_ttl: float | None = None,
    kind: FaultKind = FaultKind.POST_FREEZE,
    target: Target | None = Target.LEADER,
) -> Scenario:
    return Scenario(
        name="hand-made",
        breaks="something",
        must_hold="something else",
        kind=kind,
        heal="undo it",
        target=target,
        hold_ttl=hold_ttl,
        leader_change=change,
        limits=Limits(
            takeover_ttl=takeover_ttl,
            command_slack_ttl=1.0,
            telemetry_gap_ttl={"bus": 5.0, "traffic_signal": 2.0},
        ),
    )


# --- scenario_bounds ------------------------------------------------------------------------


def test_a_scenario_keeping_its_leader_gets_its_limits_unchanged() -> None:
    sc = scenario(LeaderChange.NONE, hold_ttl=5.0)
    assert scenario_bounds(sc, 1.5) == sc.limits.bounds(1.5)
    assert scenario_bounds(sc, 1.5) == Bounds(1_500, {"bus": 7_500, "traffic_signal": 3_000})


@pytest.mark.parametrize(
    "sc", [s for s in SCENARIOS if s.leader_change is LeaderChange.NONE], ids=lambda s: s.name
)
def test_every_catalogue_scenario_keeping_its_leader_gets_its_limits(sc: Scenario) -> None:
    assert scenario_bounds(sc, 2.0) == sc.limits.bounds(2.0)


def test_a_required_change_adds_hold_and_takeover_to_the_command_slack() -> None:
    sc = scenario(LeaderChange.REQUIRED, hold_ttl=2.0, takeover_ttl=2.0)
    got = scenario_bounds(sc, 1.5)
    # 1 TTL of slack, plus 2 TTL held, plus 2 TTL for the takeover: 5 TTL of 1.5 s.
    assert got.command_slack_ms == 7_500
    assert got.telemetry_gap_ms == sc.limits.bounds(1.5).telemetry_gap_ms
    assert got.telemetry_gap_ms == {"bus": 7_500, "traffic_signal": 3_000}


def test_an_allowed_change_without_a_takeover_bound_adds_the_hold_only() -> None:
    sc = scenario(LeaderChange.ALLOWED, hold_ttl=2.0, kind=FaultKind.ETCD_QUORUM_LOSS)
    assert scenario_bounds(sc, 1.0).command_slack_ms == 1_000 + 2_000


@pytest.mark.parametrize(
    "sc", [s for s in SCENARIOS if s.leader_change is LeaderChange.REQUIRED], ids=lambda s: s.name
)
def test_every_catalogue_scenario_changing_its_leader_gets_more_slack(sc: Scenario) -> None:
    plain = sc.limits.bounds(1.0)
    got = scenario_bounds(sc, 1.0)
    extra = round((sc.hold_ttl + (sc.limits.takeover_ttl or 0.0)) * 1000)
    assert got.command_slack_ms == plain.command_slack_ms + extra > plain.command_slack_ms
    assert got.telemetry_gap_ms == plain.telemetry_gap_ms


# --- ledger_entry ---------------------------------------------------------------------------


def record(
    status: int, created: int = T0, deadline: int = T0 + 30_000, finished: int = 0
) -> control_state_pb2.CommandRecord:
    return control_state_pb2.CommandRecord(
        command=command_pb2.Command(command_id="c-42", epoch=7),
        status=cast(command_pb2.CommandStatus.ValueType, status),
        created_at_ms=created,
        deadline_ms=deadline,
        finished_at_ms=finished,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (command_pb2.QUEUED, CommandStatus.QUEUED),
        (command_pb2.SENT, CommandStatus.SENT),
        (command_pb2.ACKED, CommandStatus.ACKED),
        (command_pb2.EXPIRED, CommandStatus.EXPIRED),
        (command_pb2.FAILED, CommandStatus.FAILED),
        (command_pb2.COMMAND_STATUS_UNSPECIFIED, CommandStatus.UNSPECIFIED),
    ],
)
def test_ledger_status_names_map_to_command_status(status: int, expected: CommandStatus) -> None:
    assert ledger_entry(record(status)).status is expected


def test_every_proto_status_has_a_command_status() -> None:
    names = set(command_pb2.CommandStatus.keys())
    assert names == {s.value for s in CommandStatus}


def test_a_finished_record_becomes_a_ledger_entry() -> None:
    got = ledger_entry(record(command_pb2.ACKED, T0, T0 + 30_000, T0 + 4_000))
    assert got == LedgerEntry("c-42", CommandStatus.ACKED, T0, 30_000, T0 + 4_000)
    assert got.deadline_ms == T0 + 30_000


def test_an_unfinished_record_has_no_finish_time() -> None:
    got = ledger_entry(record(command_pb2.SENT, T0 + 1_000, T0 + 11_000))
    assert got == LedgerEntry("c-42", CommandStatus.SENT, T0 + 1_000, 10_000, None)


def test_an_unknown_status_number_is_unspecified() -> None:
    assert ledger_entry(record(99)).status is CommandStatus.UNSPECIFIED


# --- live_during ----------------------------------------------------------------------------


def test_live_during_keeps_what_the_drill_answers_for() -> None:
    start = T0 + 10_000
    done_before = LedgerEntry("done", CommandStatus.ACKED, T0, 5_000, start - 1)
    done_at_start = LedgerEntry("edge", CommandStatus.EXPIRED, T0, 5_000, start)
    unfinished = LedgerEntry("open", CommandStatus.SENT, T0, 60_000)
    failed_without_time = LedgerEntry("old", CommandStatus.FAILED, T0, 1_000)
    issued_after = LedgerEntry("new", CommandStatus.ACKED, start + 500, 5_000, start + 900)
    got = live_during(
        [done_before, done_at_start, unfinished, failed_without_time, issued_after], start
    )
    # In their order; a finish time unknown counts as not finished before.
    assert got == [done_at_start, unfinished, failed_without_time, issued_after]


def test_live_during_of_nothing_is_nothing() -> None:
    assert live_during([], T0) == []


# --- faults ---------------------------------------------------------------------------------


def test_every_fault_kind_has_an_injector() -> None:
    assert set(faults._FAULTS) == set(FaultKind)
    for kind, injector in faults._FAULTS.items():
        assert issubclass(injector, faults.Fault), kind


def test_targets_name_posts_by_their_role() -> None:
    targets = faults.Targets(leader="primary", standby="backup")
    assert targets.of(Target.LEADER) == "primary"
    assert targets.of(Target.STANDBY) == "backup"
    assert targets.of(None) == "primary"  # a fault with no target acts on the leader's side


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_fault_for_builds_the_kinds_injector_without_touching_the_system(sc: Scenario) -> None:
    # Building a fault is pure: the system is only used by inject() and heal().
    drilled = faults.Drilled(target=cast(DrillTarget, object()))
    targets = faults.Targets(leader="primary", standby="backup")
    fault = faults.fault_for(sc, drilled, targets)
    assert type(fault) is faults._FAULTS[sc.kind]
    assert fault.observations == {}
    assert fault.post == ("backup" if sc.target is Target.STANDBY else "primary")


# --- SIGTERM as Ctrl-C ----------------------------------------------------------------------


def _marker(signum: int, frame: FrameType | None) -> None:
    """A handler that is only ever compared, never run."""


def _wait_for_signal(seconds: float = 5.0) -> None:
    # The handler runs in the main thread between bytecodes: give it the chance.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def sigterm_marker() -> Iterator[object]:
    original = signal.signal(signal.SIGTERM, _marker)
    try:
        yield _marker
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.mark.timeout(10)
def test_sigterm_inside_the_block_is_a_keyboard_interrupt(sigterm_marker: object) -> None:
    reached_after_kill = False
    with pytest.raises(KeyboardInterrupt), drill_cli._terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not sigterm_marker
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_signal()
        reached_after_kill = True
    assert not reached_after_kill
    assert signal.getsignal(signal.SIGTERM) is sigterm_marker


@pytest.mark.timeout(10)
def test_the_previous_handler_is_back_after_a_normal_exit(sigterm_marker: object) -> None:
    with drill_cli._terminate_as_interrupt():
        pass
    assert signal.getsignal(signal.SIGTERM) is sigterm_marker


@pytest.mark.timeout(10)
def test_outside_the_main_thread_the_handler_is_left_alone(sigterm_marker: object) -> None:
    seen: list[object] = []

    def body() -> None:
        with drill_cli._terminate_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5.0)
    assert seen == [sigterm_marker]


@pytest.mark.timeout(10)
def test_drill_run_interrupted_by_sigterm_exits_130(
    sigterm_marker: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def rounds_killed_by_a_scheduler(*args: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_signal()
        return drill_cli.EXIT_OK

    monkeypatch.setattr(drill_cli, "_run_rounds", rounds_killed_by_a_scheduler)
    args = argparse.Namespace(scenario=SCENARIOS[0], rounds=1, against=None, out=tmp_path, seed=0)
    assert drill_cli._cmd_run(args) == drill_cli.EXIT_INTERRUPTED == 130
    assert signal.getsignal(signal.SIGTERM) is sigterm_marker


def test_link_scenarios_are_unsupported_on_a_target_without_links() -> None:
    without = cast(DrillTarget, SimpleNamespace(links={}))
    with_links = cast(DrillTarget, SimpleNamespace(links={"primary": object()}))
    for sc in SCENARIOS:
        needs_link = sc.kind in (FaultKind.ETCD_PARTITION, FaultKind.ETCD_LATENCY)
        reason = faults.unsupported(sc, without)
        assert bool(reason) is needs_link, sc.name
        if needs_link:
            assert sc.name in reason and "without --against" in reason
        assert faults.unsupported(sc, with_links) == ""
