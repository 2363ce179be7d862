"""The declared fail-safe states, and when the gate applies them."""

from __future__ import annotations

import pytest

from bridges.failsafe import FailsafeWatch, failsafe_commands
from citypost.config import load_config
from citypost.errors import ConfigError
from fleet.population import build_city
from protos.citypost.v1 import assets_pb2, telemetry_pb2

pytestmark = pytest.mark.unit
AC = assets_pb2.AssetClass


def test_not_armed_until_a_leader_was_seen() -> None:
    watch = FailsafeWatch(bound_s=30.0)
    assert not watch.due(1_000.0)  # posts still starting: not an outage


def test_due_once_per_outage_past_the_bound_and_ended_by_a_leader() -> None:
    watch = FailsafeWatch(bound_s=30.0)
    watch.leader_confirmed(100.0)
    assert not watch.due(130.0)  # exactly the bound: a long takeover is not an outage
    assert watch.due(130.5)
    assert not watch.due(200.0)  # applied once, not again every check
    assert watch.leader_confirmed(201.0)  # ends it
    assert not watch.leader_confirmed(202.0)
    assert not watch.due(231.0)
    assert watch.due(232.5)  # the next outage
    assert watch.entered == 2


def test_each_group_of_a_commanded_class_gets_its_fail_safe_action() -> None:
    registry = build_city(load_config(overrides={"city.scale": 0.002}).city).registry
    commands = failsafe_commands(registry, epoch=7, now_ms=1_800_000_000_000)
    by_class: dict[int, set[str]] = {}
    for command in commands:
        by_class.setdefault(command.asset_class, set()).add(command.target.group)
        assert command.epoch == 7
        if command.asset_class == AC.STREET_LAMP:
            assert command.set_brightness.brightness_pct == 100
        elif command.asset_class == AC.TRAFFIC_SIGNAL:
            assert command.set_signal_mode.phase == telemetry_pb2.FLASHING_AMBER
        else:
            assert command.asset_class == AC.BOLLARD
            assert command.set_bollard_position.position == telemetry_pb2.LOWERED
    commanded = (AC.STREET_LAMP, AC.TRAFFIC_SIGNAL, AC.BOLLARD)
    expected = {
        cls: {g for c, g in registry.groups() if c == cls}
        for cls in commanded
        if any(c == cls for c, _ in registry.groups())
    }
    assert by_class == expected  # every group of those classes, sensors none
    assert len({c.command_id for c in commands}) == len(commands)


def test_no_fail_safe_without_a_leaders_epoch() -> None:
    registry = build_city(load_config(overrides={"city.scale": 0.002}).city).registry
    with pytest.raises(ConfigError, match="epoch"):
        failsafe_commands(registry, epoch=0, now_ms=0)


def test_the_bound_must_outlast_a_lease() -> None:
    with pytest.raises(ConfigError, match="failsafe_after_s"):
        load_config(overrides={"failover.failsafe_after_s": 2.0})
