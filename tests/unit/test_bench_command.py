"""`bench.command`'s pure parts: the cities' configs and the secured ÷ plain ratios."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.command import city_config, ratios
from fleet.pacing import fitting_speed
from fleet.population import build_city

pytestmark = pytest.mark.unit


def _args(**changes: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "scale": 0.005,
        "speed": 60.0,
        "load_commands": 10,
        "uplinks_per_s": 500.0,
        "set": [],
    }
    return argparse.Namespace(**{**base, **changes})


def test_the_secured_city_is_the_default_one_and_the_plain_one_only_differs_by_it(
    tmp_path: Path,
) -> None:
    secured = city_config(_args(), tmp_path, tls=True)
    plain = city_config(_args(), tmp_path, tls=False)
    assert secured.security.tls and not plain.security.tls
    assert secured.model_copy(update={"security": plain.security}) == plain


def test_an_override_cannot_turn_the_secured_city_plain(tmp_path: Path) -> None:
    config = city_config(_args(set=["security.tls=false"]), tmp_path, tls=True)
    assert config.security.tls


def test_under_load_the_city_publishes_the_asked_rate_at_the_asked_speed(tmp_path: Path) -> None:
    config = city_config(_args(), tmp_path, tls=True)
    city = build_city(config.city)
    rate = city.uplinks_per_sim_s(config.sim.interval_factor) * config.sim.speed
    assert rate == pytest.approx(500.0)
    # CitySystem keeps the speed: the cap lets that rate through.
    demand = city.uplinks_per_sim_s(config.sim.interval_factor)
    assert fitting_speed(60.0, demand, config.sim.max_uplinks_per_s, explicit=True) == 60.0


def test_without_a_load_phase_the_citys_intervals_are_its_own(tmp_path: Path) -> None:
    assert city_config(_args(load_commands=0), tmp_path, tls=True).sim.interval_factor == 1.0


def test_ratios_per_phase_and_none_where_a_side_has_no_samples() -> None:
    def side(p50: float, p99: float) -> dict[str, object]:
        return {"command_to_ack": {"p50_ms": p50, "p99_ms": p99}}

    secured = {"idle": side(20.0, 40.0), "under_load": {"command_to_ack": {}}}
    plain = {"idle": side(10.0, 32.0), "under_load": side(30.0, 90.0)}
    assert ratios(secured, plain) == {
        "idle": {"p50": 2.0, "p99": 1.25},
        "under_load": {"p50": None, "p99": None},
    }
    # A phase one city did not run (--load-commands 0) is left out.
    assert ratios({"idle": side(5.0, 8.0)}, plain) == {"idle": {"p50": 0.5, "p99": 0.25}}
