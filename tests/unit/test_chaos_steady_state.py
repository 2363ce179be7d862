"""The steady-state check a drill runs before injecting a fault and after healing."""

from __future__ import annotations

import dataclasses

import pytest

from chaos.evidence import CommandStatus, LedgerEntry
from chaos.steady_state import PostView, Role, Snapshot, check_steady_state

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000_000


def steady() -> Snapshot:
    return Snapshot(
        at_ms=T0 + 60_000,
        posts=(PostView("primary", Role.LEADER), PostView("backup", Role.STANDBY, 0)),
        devices={"street_lamp": 15, "bollard": 4, "camera": 0},
        uplinks_recent={"street_lamp": 30, "bollard": 2},
        unfinished=(LedgerEntry("c1", CommandStatus.SENT, T0 + 55_000, 10_000),),
        leader_key_post="primary",
        max_lag_revisions=2,
    )


def test_holds_on_a_healthy_system() -> None:
    # The camera class has no devices, so its silence does not count.
    assert check_steady_state(steady()) == []


def test_no_leader() -> None:
    s = dataclasses.replace(
        steady(),
        posts=(PostView("primary", Role.UNKNOWN), PostView("backup", Role.STANDBY, 0)),
        leader_key_post=None,
    )
    assert check_steady_state(s) == ["0 posts lead (none), not one"]


def test_two_leaders() -> None:
    s = dataclasses.replace(
        steady(), posts=(PostView("primary", Role.LEADER), PostView("backup", Role.LEADER))
    )
    reasons = check_steady_state(s)
    assert "2 posts lead (primary, backup), not one" in reasons
    assert "no standby answers" in reasons


def test_leader_not_the_key_holder() -> None:
    s = dataclasses.replace(steady(), leader_key_post="backup")
    (reason,) = check_steady_state(s)
    assert "primary" in reason and "backup" in reason


def test_lagging_standby() -> None:
    s = dataclasses.replace(
        steady(), posts=(PostView("primary", Role.LEADER), PostView("backup", Role.STANDBY, 7))
    )
    assert check_steady_state(s) == ["standby backup is 7 revisions behind (bound 2)"]


def test_standby_with_unknown_lag() -> None:
    s = dataclasses.replace(
        steady(), posts=(PostView("primary", Role.LEADER), PostView("backup", Role.STANDBY))
    )
    assert check_steady_state(s) == ["standby backup: lag unknown"]


def test_silent_asset_class() -> None:
    s = dataclasses.replace(steady(), uplinks_recent={"street_lamp": 30, "bollard": 0})
    assert check_steady_state(s) == ["bollard: no uplink from its 4 devices in 10 s"]


def test_stale_unacknowledged_command() -> None:
    stale = LedgerEntry("c9", CommandStatus.QUEUED, T0, 10_000)
    s = dataclasses.replace(steady(), unfinished=(*steady().unfinished, stale))
    (reason,) = check_steady_state(s)
    assert "c9" in reason and "QUEUED" in reason and "50000 ms past" in reason
