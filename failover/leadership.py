"""The leadership decision of one post: lead, stand by, campaign or demote. Pure, no I/O.

The election shell (`failover.election`) keeps an `EtcdView` up to date (the
leader key as last seen, my lease and its keepalives) and asks `decide` what
to be at a given instant of the monotonic clock. The self-fencing rule lives
here: a lease is trusted only until

    deadline = sent_at + granted_ttl - safety_margin

where `sent_at` is when the keepalive (or grant) request whose answer came
back last was SENT. etcd renewed the lease at some moment after that send, so
measuring from the send, not from the answer, can only make the deadline
earlier than etcd's expiry: a leader that stops hearing from etcd (frozen
process, lost quorum, partition) stops commanding before another post can be
elected. The safety margin covers clock-rate drift and the time a command
takes to leave the post.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from citypost.errors import InvalidArgumentError


class Action(StrEnum):
    """What the post must do now."""

    LEAD = "lead"  # I hold the leader key and my lease is valid: command under `epoch`.
    STAND_BY = "stand_by"  # someone else leads (or nobody, and I cannot campaign yet).
    CAMPAIGN = "campaign"  # the key is absent and my lease is valid: try to take it.
    DEMOTE = "demote"  # I hold the key but my lease may have expired: stop commanding.


@dataclass(frozen=True)
class LeaderValue:
    """The value of the leader key: who leads and where its gRPC server listens."""

    name: str
    address: str

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgumentError("leader value: name must not be empty")

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "address": self.address}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> LeaderValue:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"leader value is not JSON: {raw!r}") from exc
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("name"), str)
            or not isinstance(data.get("address"), str)
        ):
            raise InvalidArgumentError(
                f"leader value must be an object with string name and address: {raw!r}"
            )
        return cls(name=data["name"], address=data["address"])


@dataclass(frozen=True)
class LeaderRecord:
    """The leader key as seen in etcd: its value, its create_revision (the epoch), its lease."""

    value: LeaderValue
    epoch: int
    lease_id: int

    @property
    def holder(self) -> str:
        return self.value.name


@dataclass(frozen=True)
class LeaseView:
    """My lease as last heard of.

    `answered_sent_at` is the monotonic time at which the grant or keepalive
    request whose answer came back last was sent; None while no request was
    ever answered (the lease is then not trusted at all).
    """

    lease_id: int
    granted_ttl_s: float
    answered_sent_at: float | None

    def deadline(self, safety_margin_s: float) -> float | None:
        """Monotonic instant from which I must assume the lease may have expired."""
        if self.answered_sent_at is None:
            return None
        return self.answered_sent_at + self.granted_ttl_s - safety_margin_s

    def valid_at(self, now: float, safety_margin_s: float) -> bool:
        deadline = self.deadline(safety_margin_s)
        return deadline is not None and now < deadline


@dataclass(frozen=True)
class EtcdView:
    """What one post last saw of etcd: the leader key (None: absent) and its own lease."""

    me: str
    leader: LeaderRecord | None
    lease: LeaseView | None
    safety_margin_s: float

    def holds_key(self) -> bool:
        """True when the leader key is mine: my name and my current lease.

        A key with my name under another lease is a leftover of an earlier
        incarnation of this post (restarted before its old lease expired): I
        cannot keep it alive, so it is treated like anyone else's and expires.
        """
        return (
            self.leader is not None
            and self.lease is not None
            and self.leader.holder == self.me
            and self.leader.lease_id == self.lease.lease_id
        )

    def lease_deadline(self) -> float | None:
        return None if self.lease is None else self.lease.deadline(self.safety_margin_s)


@dataclass(frozen=True)
class Decision:
    """The action plus what the post reports: who leads, under which epoch, until when.

    For LEAD, `deadline` is the instant at which the decision turns into DEMOTE
    unless a keepalive is answered first; the shell re-decides then.
    """

    action: Action
    leader: LeaderValue | None
    epoch: int | None
    deadline: float | None

    @property
    def may_command(self) -> bool:
        return self.action is Action.LEAD


def decide(view: EtcdView, now: float) -> Decision:
    """Decide what the post is at monotonic instant `now`, from what it last saw of etcd."""
    deadline = view.lease_deadline()
    lease_valid = view.lease is not None and view.lease.valid_at(now, view.safety_margin_s)
    leader = view.leader
    if leader is None:
        # Nobody leads. Campaigning needs a lease I trust, or the key I put could
        # outlive my belief in it (or vanish at once with an expired lease).
        action = Action.CAMPAIGN if lease_valid else Action.STAND_BY
        return Decision(action, None, None, deadline)
    if view.holds_key():
        action = Action.LEAD if lease_valid else Action.DEMOTE
        return Decision(action, leader.value, leader.epoch, deadline)
    return Decision(Action.STAND_BY, leader.value, leader.epoch, deadline)


def may_command(view: EtcdView, now: float) -> bool:
    """The self-fence: True only while I hold the key and my lease cannot have expired."""
    return decide(view, now).may_command
