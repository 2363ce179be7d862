"""Restart intensity (Erlang/OTP style) and the supervisor's pure decisions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.supervision import (
    ActorHealth,
    Escalate,
    HealthView,
    Ping,
    Restart,
    RestartIntensity,
    SupervisionPolicy,
    Verdict,
    decide,
    restarts_within,
)
from citypost.errors import ConfigError, InvalidArgumentError

pytestmark = pytest.mark.unit

POLICY = SupervisionPolicy(ping_interval_s=1.0, deadline_s=3.0, max_restarts=2, window_s=10.0)


def view(*actors: ActorHealth, restarts: tuple[float, ...] = ()) -> HealthView:
    return HealthView(policy=POLICY, actors=actors, restart_times=restarts)


# ------------------------------------------------------------ RestartIntensity


def test_up_to_max_restarts_in_the_window_are_ok_the_next_escalates() -> None:
    intensity = RestartIntensity(max_restarts=3, window_s=5.0)
    assert [intensity.record(t) for t in (0.0, 1.0, 2.0)] == [Verdict.RESTART_OK] * 3
    assert intensity.record(3.0) is Verdict.ESCALATE


def test_restarts_older_than_the_window_are_forgotten() -> None:
    intensity = RestartIntensity(max_restarts=2, window_s=5.0)
    intensity.record(0.0)
    intensity.record(1.0)
    # At 5.0 the restart at 0.0 is exactly one window old: out.
    assert intensity.record(5.0) is Verdict.RESTART_OK
    assert intensity.restart_times == (1.0, 5.0)
    assert intensity.record(5.5) is Verdict.ESCALATE


def test_zero_max_restarts_escalates_on_the_first_restart() -> None:
    assert RestartIntensity(max_restarts=0, window_s=1.0).record(0.0) is Verdict.ESCALATE


def test_verdict_recovers_once_the_window_has_passed() -> None:
    intensity = RestartIntensity(max_restarts=1, window_s=2.0)
    intensity.record(0.0)
    assert intensity.record(1.0) is Verdict.ESCALATE
    assert intensity.verdict(1.5) is Verdict.ESCALATE
    assert intensity.verdict(3.0) is Verdict.RESTART_OK
    assert intensity.record(3.5) is Verdict.RESTART_OK


def test_equal_timestamps_count_separately() -> None:
    intensity = RestartIntensity(max_restarts=1, window_s=1.0)
    assert intensity.record(7.0) is Verdict.RESTART_OK
    assert intensity.record(7.0) is Verdict.ESCALATE


@pytest.mark.parametrize(
    ("max_restarts", "window_s"),
    [(-1, 1.0), (1, 0.0), (1, -2.0), (1, math.inf), (1, math.nan)],
)
def test_bad_intensity_is_a_config_error(max_restarts: int, window_s: float) -> None:
    with pytest.raises(ConfigError):
        RestartIntensity(max_restarts, window_s)


def test_time_going_backwards_or_not_finite_is_refused() -> None:
    intensity = RestartIntensity(max_restarts=5, window_s=10.0)
    intensity.record(10.0)
    with pytest.raises(InvalidArgumentError):
        intensity.record(9.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgumentError):
            intensity.record(bad)
    assert intensity.restart_times == (10.0,)


@given(
    max_restarts=st.integers(min_value=0, max_value=5),
    window_s=st.floats(min_value=0.1, max_value=100.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=30),
)
def test_verdict_matches_a_brute_force_count(
    max_restarts: int, window_s: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, window_s)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
        expected_within = sum(1 for t in times if now - window_s < t <= now)
        expected = Verdict.ESCALATE if expected_within > max_restarts else Verdict.RESTART_OK
        assert intensity.record(now) is expected
        assert restarts_within(intensity.restart_times, now, window_s) == expected_within


# ------------------------------------------------------------ decide


def test_a_recently_heard_actor_needs_nothing() -> None:
    assert decide(view(ActorHealth("lamps", last_ok=10.0)), now=10.5) == []


def test_a_quiet_actor_is_pinged_once_per_interval() -> None:
    quiet = ActorHealth("lamps", last_ok=10.0)
    assert decide(view(quiet), now=11.0) == [Ping("lamps")]
    pinged = ActorHealth("lamps", last_ok=10.0, last_ping=11.0)
    assert decide(view(pinged), now=11.5) == []
    assert decide(view(pinged), now=12.0) == [Ping("lamps")]


def test_an_answer_after_the_ping_resets_the_clock() -> None:
    answered = ActorHealth("lamps", last_ok=11.2, last_ping=11.0)
    assert decide(view(answered), now=12.0) == []


def test_an_actor_silent_past_the_deadline_is_restarted() -> None:
    silent = ActorHealth("lamps", last_ok=10.0, last_ping=12.5)
    assert decide(view(silent), now=13.0) == [Restart("lamps", silent_for_s=3.0)]


def test_restarts_come_first_then_pings_each_in_name_order() -> None:
    actors = (
        ActorHealth("water", last_ok=0.0),
        ActorHealth("bollards", last_ok=3.5),
        ActorHealth("lamps", last_ok=0.5),
        ActorHealth("cameras", last_ok=3.0),
        ActorHealth("parking", last_ok=4.9),
    )
    assert decide(view(*actors), now=5.0) == [
        Restart("lamps", 4.5),
        Restart("water", 5.0),
        Ping("bollards"),
        Ping("cameras"),
    ]


def test_restarts_beyond_the_intensity_escalate_instead() -> None:
    dead = ActorHealth("lamps", last_ok=0.0)
    # Two restarts in the window already; a third exceeds max_restarts=2.
    actions = decide(view(dead, restarts=(15.0, 18.0)), now=20.0)
    assert len(actions) == 1
    assert isinstance(actions[0], Escalate)
    assert "lamps" in actions[0].reason
    # One restart in the window: the second is still within the intensity.
    assert decide(view(dead, restarts=(18.0,)), now=20.0) == [Restart("lamps", 20.0)]
    # Old restarts do not count.
    assert decide(view(dead, restarts=(1.0, 2.0)), now=20.0) == [Restart("lamps", 20.0)]


def test_many_actors_dying_at_once_escalate_even_without_history() -> None:
    actors = tuple(ActorHealth(f"a{i}", last_ok=0.0) for i in range(3))
    actions = decide(view(*actors), now=5.0)
    assert len(actions) == 1 and isinstance(actions[0], Escalate)
    # Escalation leaves no pings for the others.
    healthy = ActorHealth("b", last_ok=3.5)
    assert decide(view(*actors, healthy), now=5.0) == actions


def test_an_answer_in_the_future_counts_as_just_now() -> None:
    assert decide(view(ActorHealth("lamps", last_ok=12.0)), now=10.0) == []


def test_empty_view_decides_nothing() -> None:
    assert decide(view(), now=0.0) == []


def test_bad_views_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        decide(view(ActorHealth("a", 0.0), ActorHealth("a", 1.0)), now=2.0)
    with pytest.raises(InvalidArgumentError):
        decide(view(ActorHealth("a", math.nan)), now=2.0)
    with pytest.raises(InvalidArgumentError):
        decide(view(ActorHealth("a", 0.0)), now=math.inf)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ping_interval_s": 0.0},
        {"ping_interval_s": 3.0, "deadline_s": 3.0},
        {"deadline_s": 0.5},
        {"deadline_s": math.nan},
        {"max_restarts": -1},
        {"window_s": 0.0},
    ],
)
def test_bad_policies_are_config_errors(kwargs: dict[str, float]) -> None:
    base: dict[str, float] = {
        "ping_interval_s": 1.0,
        "deadline_s": 3.0,
        "max_restarts": 2,
        "window_s": 10.0,
    }
    with pytest.raises(ConfigError):
        SupervisionPolicy(**{**base, **kwargs})  # type: ignore[arg-type]


@given(
    last_oks=st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=8),
    now=st.floats(min_value=0.0, max_value=200.0),
)
def test_every_actor_gets_at_most_one_action_and_restarts_mean_the_deadline_passed(
    last_oks: list[float], now: float
) -> None:
    actors = tuple(ActorHealth(f"a{i}", last_ok=t) for i, t in enumerate(last_oks))
    policy = SupervisionPolicy(ping_interval_s=1.0, deadline_s=3.0, max_restarts=100, window_s=1.0)
    actions = decide(HealthView(policy, actors), now)
    names = [a.name for a in actions if isinstance(a, Ping | Restart)]
    assert len(names) == len(set(names))
    by_name = {a.name: a for a in actors}
    for action in actions:
        assert isinstance(action, Ping | Restart)
        silent = now - by_name[action.name].last_ok
        if isinstance(action, Restart):
            assert silent >= policy.deadline_s
        else:
            assert policy.ping_interval_s <= silent < policy.deadline_s
