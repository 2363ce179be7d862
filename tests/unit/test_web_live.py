"""The web console's live stream, its pure parts: event ids and resuming, coalescing."""

from __future__ import annotations

import itertools

import pytest

from citypost.errors import InvalidArgumentError
from console.web.coalesce import Coalescer
from console.web.event_ids import EventId, Resume, Snapshot, on_reconnect

pytestmark = pytest.mark.unit


def test_an_event_id_round_trips_and_orders_by_epoch_then_sequence() -> None:
    assert str(EventId(7, 42)) == "7:42"
    assert EventId.parse(" 7:42 ") == EventId(7, 42)
    assert EventId(7, 100) < EventId(8, 0)
    for bad in ("", "7", "7:", ":4", "a:1", "1:-2", "1:2:3"):
        with pytest.raises(InvalidArgumentError, match="EPOCH:SEQUENCE"):
            EventId.parse(bad)


def test_a_reconnect_resumes_after_its_revision_under_the_same_leader() -> None:
    assert on_reconnect("5:10", epoch=5) == Resume(10)
    assert on_reconnect("5:0", epoch=5) == Resume(0)


@pytest.mark.parametrize(
    ("last", "why"),
    [
        (None, "a new stream"),
        ("", "a new stream"),
        ("garbage", "unreadable"),
        ("4:10", "the leader changed"),  # a failover: the page reads the state afresh
        ("6:10", "the leader changed"),
    ],
)
def test_a_reconnect_gets_a_snapshot_when_it_cannot_resume(last: str | None, why: str) -> None:
    decision = on_reconnect(last, epoch=5)
    assert isinstance(decision, Snapshot)
    assert why in decision.why


def test_the_first_update_of_an_asset_goes_at_once_and_a_repeat_is_dropped() -> None:
    c: Coalescer[str, int] = Coalescer(0.5)
    assert c.offer("lamp-1", 1, 0.0) == [("lamp-1", 1)]
    assert c.offer("lamp-2", 1, 0.0) == [("lamp-2", 1)]
    assert c.offer("lamp-1", 1, 0.1) == []  # what the screen shows already
    assert c.held() == 0


def test_updates_faster_than_two_a_second_wait_and_only_the_latest_goes() -> None:
    c: Coalescer[str, int] = Coalescer(0.5)
    c.offer("bus", 1, 0.0)
    assert c.offer("bus", 2, 0.1) == []
    assert c.offer("bus", 3, 0.2) == []
    assert c.next_due() == 0.5
    assert c.due(0.49) == []
    assert c.due(0.5) == [("bus", 3)]
    # Its next turn is half a second after that one.
    assert c.offer("bus", 4, 0.6) == []
    assert c.due(0.99) == []
    assert c.due(1.0) == [("bus", 4)]
    assert c.offer("bus", 5, 1.6) == [("bus", 5)]  # quiet long enough: at once


def test_a_held_update_that_returns_to_what_was_sent_is_not_sent() -> None:
    c: Coalescer[str, int] = Coalescer(0.5)
    c.offer("signal", 1, 0.0)
    c.offer("signal", 2, 0.1)
    c.offer("signal", 1, 0.2)
    assert c.due(1.0) == []
    assert c.held() == 0


def test_the_rate_per_asset_is_bounded_whatever_the_input_rate() -> None:
    c: Coalescer[int, int] = Coalescer(0.5)
    sent: list[tuple[float, int]] = []
    shown: dict[int, int] = {}
    for step in range(1000):  # 100 updates a second for 10 s, to 3 assets
        t = step * 0.01
        for k, v in c.offer(step % 3, step, t) + c.due(t):
            sent.append((t, k))
            shown[k] = v
    for k, v in c.due(20.0):
        sent.append((20.0, k))
        shown[k] = v
    for key in range(3):
        times = [at for at, k in sent if k == key]
        assert len(times) <= 10 * 2 + 2
        assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(times))
    # The last state of each asset reached the screen.
    assert shown == {0: 999, 1: 997, 2: 998}
    assert c.held() == 0


def test_a_coalescer_needs_a_positive_interval() -> None:
    with pytest.raises(InvalidArgumentError, match="positive"):
        Coalescer(0.0)
