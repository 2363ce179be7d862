"""Alarm rules on hand-made histories: delay-on, delay-off, chattering, state kept."""

from __future__ import annotations

import pytest

from actors.alarm_rules import AlarmRule, AlarmShaper
from actors.decisions import ClearAlarm, Decision, OpenIncident, RaiseAlarm
from citypost.errors import InvalidArgumentError
from protos.citypost.v1 import operations_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

MIN = 60_000
CAM = "00000000000000c1"
UP = RaiseAlarm(CAM, "camera_offline", operations_pb2.MINOR, "no uplink for 5 min")
DOWN = ClearAlarm(CAM, "camera_offline", "camera back online")


def _run(shaper: AlarmShaper, history: list[tuple[int, Decision | None]]) -> list[tuple[int, str]]:
    """Feed (minute, condition) events, ticking every minute; what the post is told."""
    told: list[tuple[int, str]] = []
    events = dict(history)
    last = max(m for m, _ in history)
    for minute in range(last + 1):
        now = minute * MIN
        decisions = [events[minute]] if events.get(minute) is not None else []
        for d in [*shaper.shape(decisions, now), *shaper.tick(now)]:
            told.append((minute, "raise" if isinstance(d, RaiseAlarm) else "clear"))
    return told


def test_delay_on_raises_only_a_condition_that_holds() -> None:
    shaper = AlarmShaper({"camera_offline": AlarmRule(delay_on_s=300)})
    # A blip of 2 minutes raises nothing; a condition held 5 minutes raises once.
    assert _run(shaper, [(0, UP), (2, DOWN), (10, UP), (20, None)]) == [(15, "raise")]


def test_delay_off_keeps_a_flapping_alarm_raised_and_clears_once_stable() -> None:
    shaper = AlarmShaper({"camera_offline": AlarmRule(delay_off_s=600, chatter_count=99)})
    history: list[tuple[int, Decision | None]] = [
        (0, UP), (3, DOWN), (5, UP), (8, DOWN), (40, None)
    ]  # fmt: skip
    assert _run(shaper, history) == [(0, "raise"), (18, "clear")]


def test_no_delay_passes_raise_and_clear_at_once() -> None:
    shaper = AlarmShaper()
    assert _run(shaper, [(0, UP), (1, DOWN), (5, None)]) == [(0, "raise"), (1, "clear")]


def test_a_chattering_alarm_is_raised_once_and_held_until_stable() -> None:
    rule = AlarmRule(chatter_count=3, chatter_window_s=3600, chatter_stable_s=1800)
    shaper = AlarmShaper({"camera_offline": rule})
    history: list[tuple[int, Decision | None]] = [
        (0, UP), (1, DOWN), (10, UP), (11, DOWN), (20, UP), (21, DOWN), (30, UP),
        (31, DOWN), (80, None),
    ]  # fmt: skip
    told = _run(shaper, history)
    # Raised and cleared twice, then the third onset is chattering: raised, held 30 min.
    assert told == [(0, "raise"), (1, "clear"), (10, "raise"), (11, "clear"), (20, "raise"),
                    (61, "clear")]  # fmt: skip
    assert shaper.chattering() == []


def test_chattering_is_said_in_the_alarm_and_counted_while_raised() -> None:
    rule = AlarmRule(delay_off_s=300, chatter_count=3, chatter_stable_s=1200)
    shaper = AlarmShaper({"camera_offline": rule})
    out = shaper.shape([UP], 0)
    assert out == [UP]
    for minute in (2, 4):  # back before delay-off each time: never cleared, still counted
        shaper.shape([DOWN], (minute - 1) * MIN)
        out = shaper.shape([UP], minute * MIN)
    assert len(out) == 1 and isinstance(out[0], RaiseAlarm) and "chattering" in out[0].detail
    assert shaper.chattering() == [(CAM, "camera_offline")]
    shaper.shape([DOWN], 5 * MIN)
    assert shaper.tick(20 * MIN) == []  # delay-off passed, but not the stable time
    cleared = shaper.tick(25 * MIN)
    assert len(cleared) == 1 and "stable again after chattering" in cleared[0].detail


def test_updates_of_a_raised_alarm_and_other_decisions_pass_through() -> None:
    shaper = AlarmShaper({"camera_offline": AlarmRule(delay_on_s=60)})
    incident = OpenIncident(operations_pb2.INCIDENT_FIRE, operations_pb2.CAMERA_DETECTION,
                            47.3, 5.0, "Dijon", "fire", 1, CAM)  # fmt: skip
    assert shaper.shape([UP, incident], 0) == [incident]
    assert shaper.tick(MIN) == [UP]
    worse = RaiseAlarm(CAM, "camera_offline", operations_pb2.MAJOR, "no uplink for 60 min")
    assert shaper.shape([worse], 2 * MIN) == [worse]


def test_a_clear_for_an_alarm_it_never_saw_goes_through() -> None:
    """After a restart without a snapshot, the post may still hold the alarm."""
    assert AlarmShaper().shape([DOWN], 0) == [DOWN]


def test_the_state_survives_a_snapshot_and_restore() -> None:
    shaper = AlarmShaper({"camera_offline": AlarmRule(delay_on_s=300)})
    shaper.shape([UP], 0)
    restored = AlarmShaper({"camera_offline": AlarmRule(delay_on_s=300)})
    restored.restore(shaper.snapshot())
    assert restored.tick(4 * MIN) == []
    assert restored.tick(5 * MIN) == [UP]
    with pytest.raises(InvalidArgumentError):
        restored.restore([{"originator": CAM}])


def test_bad_rules_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        AlarmRule(delay_on_s=-1)
    with pytest.raises(InvalidArgumentError):
        AlarmRule(chatter_count=1)
