"""The web console's event ids, `<epoch>:<sequence>`, and what a reconnect resumes.

Every event the gateway sends a browser carries the epoch of the post it came
from and its place in that post's stream. A browser that reconnects names the
last id it saw (SSE's `Last-Event-ID`): if the leader is the same and the
gateway still holds every event after that one, the stream resumes where it
stopped; otherwise (a failover, a gap, an id from nowhere) the browser gets a
fresh snapshot first. Resuming across epochs would splice two posts' streams,
whose sequences mean nothing to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from citypost.errors import InvalidArgumentError


@dataclass(frozen=True, order=True, slots=True)
class EventId:
    epoch: int
    seq: int

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.seq < 0:
            raise InvalidArgumentError(f"an event id is two naturals, got {self.epoch}:{self.seq}")

    def __str__(self) -> str:
        return f"{self.epoch}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> EventId:
        epoch, sep, seq = text.strip().partition(":")
        if not sep or not epoch.isdigit() or not seq.isdigit():
            raise InvalidArgumentError(f"an event id is EPOCH:SEQUENCE, got {text!r}")
        return cls(int(epoch), int(seq))


@dataclass(frozen=True, slots=True)
class Resume:
    """Send the held events after `after` (a sequence of the current epoch)."""

    after: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Send the whole state first; `why` is shown to the operator and logged."""

    why: str


def on_reconnect(
    last: str | None, *, epoch: int, oldest_held: int | None, newest: int
) -> Resume | Snapshot:
    """What a reconnecting browser is sent. `oldest_held` is the lowest sequence the
    gateway still holds for this epoch (None: none held); `newest` the last one sent."""
    if not last:
        return Snapshot("a new stream")
    try:
        seen = EventId.parse(last)
    except InvalidArgumentError:
        return Snapshot(f"an unreadable last event id {last!r}")
    if seen.epoch != epoch:
        return Snapshot(f"the leader changed (epoch {seen.epoch} -> {epoch})")
    if seen.seq > newest:
        return Snapshot(f"event {seen} was never sent (the newest is {epoch}:{newest})")
    if seen.seq == newest:
        return Resume(seen.seq)
    if oldest_held is None or seen.seq + 1 < oldest_held:
        return Snapshot(f"the events after {seen} are no longer held")
    return Resume(seen.seq)
