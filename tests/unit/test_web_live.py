"""The web console's live stream, its pure parts: event ids and resuming."""

from __future__ import annotations

import pytest

from citypost.errors import InvalidArgumentError
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
