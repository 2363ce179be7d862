"""The steady state a drill requires before it injects a fault and after it heals,
as a pure check over a snapshot the drill took (I/O is the drill's).

It holds when: exactly one post leads (and it is the one holding the leader key,
when the key was read), a standby answers and is caught up, every asset class
with devices sent uplinks in the recent window, and no unfinished command is
older than its TTL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from chaos.evidence import LedgerEntry


class Role(StrEnum):
    LEADER = "LEADER"
    STANDBY = "STANDBY"
    UNKNOWN = "UNKNOWN"  # did not answer, or answered without a role


@dataclass(frozen=True)
class PostView:
    """One post's answer: its role and, for a standby, how many etcd revisions it
    is behind the leader's last write (None: unknown)."""

    name: str
    role: Role
    lag_revisions: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """What the drill saw at `at_ms`.

    `leader_key_post`: the post named by the leader key in etcd (None: no key, or
    not read). `uplinks_recent`: uplinks per asset class in the last `window_s`
    seconds; `devices`: devices per asset class. `unfinished`: the ledger's
    QUEUED/SENT commands."""

    at_ms: int
    posts: tuple[PostView, ...]
    devices: Mapping[str, int] = field(default_factory=dict)
    uplinks_recent: Mapping[str, int] = field(default_factory=dict)
    window_s: float = 10.0
    unfinished: tuple[LedgerEntry, ...] = ()
    leader_key_post: str | None = None
    max_lag_revisions: int = 0


def check_steady_state(snapshot: Snapshot) -> list[str]:
    """The reasons the steady state does not hold (empty: it holds)."""
    reasons: list[str] = []
    leaders = [p.name for p in snapshot.posts if p.role is Role.LEADER]
    if len(leaders) != 1:
        reasons.append(f"{len(leaders)} posts lead ({', '.join(leaders) or 'none'}), not one")
    elif snapshot.leader_key_post is not None and snapshot.leader_key_post != leaders[0]:
        reasons.append(
            f"{leaders[0]} says it leads but the leader key names {snapshot.leader_key_post}"
        )
    standbys = [p for p in snapshot.posts if p.role is Role.STANDBY]
    if not standbys:
        reasons.append("no standby answers")
    for p in standbys:
        if p.lag_revisions is None:
            reasons.append(f"standby {p.name}: lag unknown")
        elif p.lag_revisions > snapshot.max_lag_revisions:
            reasons.append(
                f"standby {p.name} is {p.lag_revisions} revisions behind "
                f"(bound {snapshot.max_lag_revisions})"
            )
    for cls, n in sorted(snapshot.devices.items()):
        if n > 0 and snapshot.uplinks_recent.get(cls, 0) <= 0:
            reasons.append(f"{cls}: no uplink from its {n} devices in {snapshot.window_s:g} s")
    for c in snapshot.unfinished:
        if not c.status.finished and snapshot.at_ms > c.deadline_ms:
            reasons.append(
                f"command {c.command_id} still {c.status.value} "
                f"{snapshot.at_ms - c.deadline_ms} ms past its TTL"
            )
    return reasons
