"""The drill scenarios as data, and `citypost drill list/run` (arguments, the placeholder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos import scenarios
from chaos.invariants import Bounds
from chaos.scenarios import SCENARIOS, FaultKind, LeaderChange, Limits, Target
from citypost.errors import InvalidArgumentError
from cluster import drill_cli

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_every_fault_of_issue_5_has_a_scenario() -> None:
    assert {s.kind for s in SCENARIOS} == set(FaultKind)
    assert {
        "actor-kill",
        "restart-intensity",
        "post-kill",
        "post-freeze",
        "standby-kill",
        "switchover",
        "etcd-member-kill",
        "etcd-quorum-loss",
        "broker-restart",
        "etcd-partition",
        "etcd-latency",
        "malformed-storm",
    } == {k.value for k in FaultKind}


def test_names_are_unique_kebab_case() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    for name in names:
        assert scenarios.NAME_PATTERN.match(name), name
    assert scenarios.NAME_PATTERN.match("Leader_crash") is None


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_scenario_is_described_and_heals(scenario: scenarios.Scenario) -> None:
    for text in (scenario.breaks, scenario.must_hold, scenario.heal):
        assert text.strip()
        assert "\n" not in text


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_parameters_fit_the_fault(scenario: scenarios.Scenario) -> None:
    kind = scenario.kind
    assert (scenario.link is not None) == (kind is FaultKind.ETCD_LATENCY)
    assert (scenario.storm is not None) == (kind is FaultKind.MALFORMED_STORM)
    assert (scenario.kills_over_limit is not None) == (kind is FaultKind.RESTART_INTENSITY)
    if kind in (FaultKind.POST_FREEZE, FaultKind.ETCD_PARTITION, FaultKind.ETCD_QUORUM_LOSS):
        assert scenario.hold_ttl > 1.0  # "past the TTL", "longer than the TTL"
    if kind is FaultKind.STANDBY_KILL:
        assert scenario.target is Target.STANDBY
        assert scenario.leader_change is LeaderChange.NONE
    if kind in (FaultKind.POST_KILL, FaultKind.POST_FREEZE, FaultKind.ETCD_PARTITION):
        assert scenario.target is Target.LEADER
    if scenario.leader_change is LeaderChange.REQUIRED:
        assert scenario.limits.takeover_ttl is not None


def test_slow_link_variants_straddle_the_ttl() -> None:
    links = [s.link for s in SCENARIOS if s.kind is FaultKind.ETCD_LATENCY]
    assert len(links) == 2
    latencies = sorted(link.latency_ttl for link in links if link is not None)
    assert latencies[0] < 1.0 < latencies[1]
    below, above = sorted((link for link in links if link is not None), key=lambda k: k.latency_ttl)
    assert below.latency_ms(2.0) < 2000 < above.latency_ms(2.0)
    assert all(0.0 <= link.loss < 1.0 for link in (below, above))


def test_limits_become_bounds_for_a_ttl() -> None:
    limits = Limits(takeover_ttl=2.0, command_slack_ttl=0.5, telemetry_gap_ttl={"bus": 3.0})
    assert limits.bounds(2.0) == Bounds(command_slack_ms=1000, telemetry_gap_ms={"bus": 6000})
    assert limits.takeover_ms(2.0) == 4000
    assert Limits().takeover_ms(2.0) is None


def test_get_finds_a_scenario_and_names_the_known_ones_otherwise() -> None:
    assert scenarios.get("leader-crash").kind is FaultKind.POST_KILL
    with pytest.raises(InvalidArgumentError) as raised:
        scenarios.get("leader-explodes")
    message = raised.value.message
    assert "leader-explodes" in message
    for s in SCENARIOS:
        assert s.name in message


def test_ci_suite_names_known_cheap_scenarios() -> None:
    assert 1 <= len(scenarios.CI_SUITE) <= 5
    assert len(set(scenarios.CI_SUITE)) == len(scenarios.CI_SUITE)
    for name in scenarios.CI_SUITE:
        scenarios.get(name)


# --- the command line ----------------------------------------------------------------------


def test_list_json_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert drill_cli.run(["list", "--json"]) == drill_cli.EXIT_OK
    items = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in items] == [s.name for s in SCENARIOS]
    by_name = {item["name"]: item for item in items}
    assert by_name["leader-freeze"]["kind"] == "post-freeze"
    assert by_name["leader-freeze"]["target"] == "leader"
    assert by_name["slow-etcd-above-ttl"]["link"]["latency_ttl"] > 1.0
    assert all(item["heal"] and item["breaks"] and item["must_hold"] for item in items)


def test_list_table_has_one_row_per_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    table = drill_cli.list_table(SCENARIOS)
    assert [row[0] for row in table.rows] == [s.name for s in SCENARIOS]
    assert drill_cli.run(["list"]) == drill_cli.EXIT_OK
    out = capsys.readouterr().out
    for s in SCENARIOS:
        assert s.name in out


def test_run_with_an_unknown_scenario_exits_2_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        drill_cli.run(["run", "leader-explodes"])
    assert exited.value.code == drill_cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "leader-explodes" in err
    assert "leader-crash" in err and "malformed-storm" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "leader-crash", "--rounds", "0"),
        ("run", "leader-crash", "--rounds", "two"),
        ("run", "leader-crash", "--against", "/nonexistent/city.toml"),
        ("run",),
        ("bogus",),
    ],
)
def test_bad_run_arguments_exit_2(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        drill_cli.run(list(argv))
    assert exited.value.code == drill_cli.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_run_with_an_invalid_config_exits_2_and_starts_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "city.toml"
    config.write_text("[city]\nscale = 7\n")  # scale must be <= 1
    argv = ["run", "switchover", "--against", str(config), "--out", str(tmp_path / "out")]
    assert drill_cli.run(argv) == drill_cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert "scale" in captured.err
    assert "starting" not in captured.out and "round" not in captured.out
    assert not (tmp_path / "out").exists()


def test_run_against_a_config_with_no_running_system_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "city.toml"
    config.write_text(f'run_dir = "{tmp_path / "run"}"\n')
    argv = ["run", "leader-crash", "--against", str(config), "--out", str(tmp_path / "out")]
    assert drill_cli.run(argv) == drill_cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no running system" in err and "citypost demo" in err
    assert not (tmp_path / "out").exists()


def test_run_help_names_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        drill_cli.run(["run", "--help"])
    out = capsys.readouterr().out
    assert "exit status" in out
    for code in (drill_cli.EXIT_BROKEN, drill_cli.EXIT_REFUSED, drill_cli.EXIT_INFRASTRUCTURE):
        assert f"{code} " in out
