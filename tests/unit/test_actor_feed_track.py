"""An actor's track in the feed: the next event to send, and what is not yet applied."""

from __future__ import annotations

import pytest

from post.actor_feed import _Event, _Track

pytestmark = pytest.mark.unit


def track_with(first_seq: int, count: int, acked: int) -> _Track:
    track = _Track(seq=first_seq + count - 1, acked=acked)
    for seq in range(first_seq, first_seq + count):
        track.events.append(_Event(seq, 0, None, readings=seq))
    return track


@pytest.mark.parametrize(
    ("first_seq", "count", "acked", "expected"),
    [
        (1, 5, 0, 1),  # nothing applied yet: the oldest
        (1, 5, 3, 4),
        (1, 5, 5, None),  # all applied
        (10, 3, 4, 10),  # acked before what the snapshot left: the oldest kept
        (10, 0, 9, None),  # no events
    ],
)
def test_the_next_event_is_the_first_after_the_last_applied(
    first_seq: int, count: int, acked: int, expected: int | None
) -> None:
    track = track_with(first_seq, count, acked)
    event = track.next_event()
    assert (event.seq if event else None) == expected
    unapplied = [seq for seq in range(first_seq, first_seq + count) if seq > acked]
    assert track.behind() == sum(unapplied)  # each event here holds `seq` readings
