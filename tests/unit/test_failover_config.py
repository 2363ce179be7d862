"""FailoverConfig's timing rules (lease, keepalive, safety margin)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from citypost.config import FailoverConfig

pytestmark = pytest.mark.unit


def test_the_test_timings_and_the_defaults_are_valid() -> None:
    FailoverConfig()
    config = FailoverConfig(lease_ttl_s=1.0, keepalive_interval_s=0.2, safety_margin_s=0.3)
    assert config.lease_ttl_s == 1.0


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"lease_ttl_s": 1.0, "keepalive_interval_s": 0.34, "safety_margin_s": 0.1}, "/ 3"),
        (
            {"lease_ttl_s": 2.0, "keepalive_interval_s": 0.5, "safety_margin_s": 2.0},
            "< lease_ttl_s",
        ),
        ({"lease_ttl_s": 1.5, "keepalive_interval_s": 0.2, "safety_margin_s": 0.3}, "whole number"),
        # 1 - 0.5 = 0.5 <= 2 x 0.3: one lost keepalive would demote a healthy leader.
        (
            {"lease_ttl_s": 1.0, "keepalive_interval_s": 0.3, "safety_margin_s": 0.5},
            "2 x keepalive",
        ),
    ],
)
def test_bad_timings_name_the_rule(fields: dict[str, float], rule: str) -> None:
    with pytest.raises(ValidationError, match=rule):
        FailoverConfig(**fields)


def test_a_margin_just_inside_the_window_is_accepted() -> None:
    FailoverConfig(lease_ttl_s=2.0, keepalive_interval_s=0.5, safety_margin_s=0.9)
    with pytest.raises(ValidationError, match="2 x keepalive"):
        FailoverConfig(lease_ttl_s=2.0, keepalive_interval_s=0.5, safety_margin_s=1.0)
