"""`python -m bench.downlink` at a small scale: what must hold whatever the machine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import downlink
from bench.downlink import RX2_BUDGET_S, Transmission, overlapping, run, worst_hour
from bridges.airtime import DEFAULT_CHANNELS_HZ, RX2_FREQUENCY_HZ

pytestmark = pytest.mark.unit

TOP_KEYS = {
    "benchmark",
    "scale",
    "devices",
    "lamps",
    "lamp_groups",
    "bollards",
    "gateways",
    "rx2_dr",
    "profile_frame_bytes",
    "profile_frame_airtime_s",
    "rx2_budget_s_per_hour",
    "horizon_s",
    "operator_commands",
    "unicast_to_multicast",
    "within_duty_cycle",
    "multicast",
    "unicast",
    "cpu_s",
}
SCENARIO_KEYS = {
    "lamps",
    "lamps_reached",
    "lamps_unreached",
    "time_to_99_pct_s",
    "time_to_100_pct_s",
    "rx2_worst_hour",
    "deferred",
    "dropped",
    "transmissions",
    "airtime_s",
    "operator_commands",
    "still_queued",
    "multicasts_pending",
    "simulated_s",
    "clock_steps",
    "cpu_s",
}
HEADLINE_KEYS = {
    "time_to_100_pct",
    "lower_bound",
    "airtime",
    "profile_airtime",
}


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return run(scale=0.01, operator_commands=12, lamp_commands=4)


@pytest.fixture(scope="module")
def saturated() -> dict[str, Any]:
    # At DR0 a 45-byte frame takes 2.6 s: one frame per lamp overflows the gateways' hour.
    return run(scale=0.05, rx2_dr=0, operator_commands=6, lamp_commands=2)


def test_every_lamp_gets_the_multicast(small: dict[str, Any], saturated: dict[str, Any]) -> None:
    for result in (small, saturated):
        multicast = result["multicast"]
        assert multicast["lamps"] == result["lamps"] > 0
        assert multicast["lamps_reached"] == result["lamps"]
        assert multicast["lamps_unreached"] == 0
        assert multicast["time_to_100_pct_s"] is not None
        assert multicast["multicasts_pending"] == 0
        # One transmission per (group, gateway serving some of its lamps), not per lamp.
        assert result["lamp_groups"] <= multicast["transmissions"]["profile"] < result["lamps"]


def test_airtime_per_gateway_never_above_the_budget(
    small: dict[str, Any], saturated: dict[str, Any]
) -> None:
    for result in (small, saturated):
        assert result["within_duty_cycle"] is True
        for scenario in ("multicast", "unicast"):
            worst = result[scenario]["rx2_worst_hour"]
            assert worst["budget_s"] == RX2_BUDGET_S == 360.0
            assert 0 < worst["airtime_s"] <= RX2_BUDGET_S + 1e-6
            assert worst["ratio"] <= 1.0


def test_multicast_uses_less_airtime_than_unicast(
    small: dict[str, Any], saturated: dict[str, Any]
) -> None:
    for result in (small, saturated):
        multicast, unicast = result["multicast"], result["unicast"]
        assert multicast["airtime_s"]["total"] < unicast["airtime_s"]["total"]
        assert multicast["airtime_s"]["profile"] < unicast["airtime_s"]["profile"]
        assert unicast["transmissions"]["profile"] == unicast["lamps_reached"]
        assert result["unicast_to_multicast"]["airtime"] > 1


def test_unicast_overflowing_the_hour_waits_for_it(saturated: dict[str, Any]) -> None:
    unicast, multicast = saturated["unicast"], saturated["multicast"]
    assert unicast["deferred"] > 0
    assert unicast["rx2_worst_hour"]["ratio"] > 0.9  # the busiest gateway filled its hour
    assert unicast["time_to_100_pct_s"] > 3600 > multicast["time_to_100_pct_s"]
    assert saturated["unicast_to_multicast"]["time_to_100_pct"] > 1


def test_operator_commands_all_go_and_are_counted(small: dict[str, Any]) -> None:
    for scenario in ("multicast", "unicast"):
        ops = small[scenario]["operator_commands"]
        assert ops["count"] == 16
        assert ops["sent"] == 16
        assert ops["waiting_at_horizon"] == 0
        assert {k: v["count"] for k, v in ops["by_kind"].items()} == {"bollard": 12, "lamp": 4}
        latency = ops["latency_s"]
        assert 0 <= latency["p50"] <= latency["p99"] <= latency["max"]
        assert small[scenario]["transmissions"]["operator"] == 16


def test_a_short_horizon_leaves_commands_waiting() -> None:
    result = run(scale=0.01, operator_commands=10, lamp_commands=0, horizon_h=0.05)  # 180 s
    ops = result["multicast"]["operator_commands"]
    assert ops["sent"] == 3  # at 30, 90 and 150 s of the 600 s spread
    assert ops["waiting_at_horizon"] == 7


def test_the_overlap_check_finds_a_gateway_sending_two_frames_at_once() -> None:
    gw = "0016c001f1000001"
    one_after_the_other = [
        Transmission(gw, 0.0, 0.5, RX2_FREQUENCY_HZ, (), -1),
        Transmission(gw, 0.5, 0.5, RX2_FREQUENCY_HZ, (), -1),
        Transmission("0016c001f1000002", 0.2, 0.5, RX2_FREQUENCY_HZ, (), -1),
    ]
    assert overlapping(one_after_the_other) is None
    at_once = [*one_after_the_other, Transmission(gw, 0.9, 0.5, RX2_FREQUENCY_HZ, (), -1)]
    assert overlapping(at_once) == (gw, 0.9)


def test_the_json_has_the_documented_keys(small: dict[str, Any]) -> None:
    assert set(small) == TOP_KEYS
    assert small["benchmark"] == "downlink"
    assert small["profile_frame_bytes"] == 45
    assert set(small["unicast_to_multicast"]) == HEADLINE_KEYS
    for scenario in ("multicast", "unicast"):
        assert set(small[scenario]) == SCENARIO_KEYS
    documented = downlink.__doc__ or ""
    undocumented = {
        key
        for key in TOP_KEYS | SCENARIO_KEYS | HEADLINE_KEYS
        if key != "benchmark" and f"`{key}`" not in documented
    }
    assert undocumented == set()
    assert json.loads(json.dumps(small)) == small


def test_main_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert downlink.main(["--scale", "0.01", "--operator-commands", "4", "--horizon-h", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == TOP_KEYS
    assert printed["operator_commands"]["bollard"] == 4


def _tx(gateway: str, at: float, airtime: float, frequency: int = RX2_FREQUENCY_HZ) -> Transmission:
    return Transmission(gateway, at, airtime, frequency, (), -1)


def test_worst_hour_counts_a_transmission_until_an_hour_after_its_start() -> None:
    txs = [
        _tx("g1", 0.0, 100.0),
        _tx("g1", 1800.0, 200.0),
        _tx("g1", 3599.0, 50.0),  # with the two above: 350 s within (-1, 3599]
        _tx("g1", 3600.0, 100.0),  # the first one has left: 200 + 50 + 100
        _tx("g2", 10.0, 340.0),
        _tx("g2", 20.0, 300.0, DEFAULT_CHANNELS_HZ[0]),  # RX1 sub-band: not RX2's budget
    ]
    assert worst_hour([tx.at for tx in txs], txs) == ("g1", 350.0)
    txs.append(_tx("g2", 3609.0, 15.0))
    assert worst_hour([tx.at for tx in txs], txs) == ("g2", 355.0)
