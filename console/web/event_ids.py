"""The web console's event ids, `<epoch>:<revision>`, and what a reconnect resumes.

Every event the gateway sends a browser carries the leader's epoch and the
control-state revision of its change (operator.Event.revision: both posts
share the store, so a revision means the same at either). A browser that
reconnects names the last id it saw (SSE's `Last-Event-ID`): under the same
leader the stream resumes after that revision (WatchEventsRequest.start_revision),
so the gateway holds nothing; after a failover, or with an id it cannot read,
the browser is told to read the state afresh (a `resync` event) and the stream
starts from now. So does a resume the post refuses because its history no longer
reaches back (FAILED_PRECONDITION).
"""

from __future__ import annotations

from dataclasses import dataclass

from citypost.errors import InvalidArgumentError


@dataclass(frozen=True, order=True, slots=True)
class EventId:
    epoch: int
    seq: int  # the control-state revision

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
    """Watch from the revision after `after`."""

    after: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Send the whole state first; `why` is shown to the operator and logged."""

    why: str


def on_reconnect(last: str | None, *, epoch: int) -> Resume | Snapshot:
    """What a browser that saw `last` (None: a new stream) is sent under `epoch`."""
    if not last:
        return Snapshot("a new stream")
    try:
        seen = EventId.parse(last)
    except InvalidArgumentError:
        return Snapshot(f"an unreadable last event id {last!r}")
    if seen.epoch != epoch:
        return Snapshot(f"the leader changed (epoch {seen.epoch} -> {epoch})")
    return Resume(seen.seq)
