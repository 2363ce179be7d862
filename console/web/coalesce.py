"""At most a few updates per second per asset, the latest one winning.

A lamp group's transition changes thousands of assets at once and a bus
reports every few seconds; an operator's screen needs each asset's latest
state, not every reading. `Coalescer` keeps, per asset, the state last sent
and the one pending: an update goes out at once if the asset's previous one
went out at least `min_interval_s` ago, else it waits and is replaced by any
newer one until its turn. An update equal to what was last sent is dropped.
Pure: the caller gives the time.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from citypost.errors import InvalidArgumentError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Slot(Generic[V]):
    sent: V | None = None
    sent_at: float = float("-inf")
    pending: V | None = None
    has_pending: bool = False


@dataclass(slots=True)
class Coalescer(Generic[K, V]):
    min_interval_s: float = 0.5  # 2 updates per second per asset
    _slots: dict[K, _Slot[V]] = field(default_factory=dict)
    _due: list[tuple[float, int, K]] = field(default_factory=list)
    _order: int = 0

    def __post_init__(self) -> None:
        if not self.min_interval_s > 0:
            raise InvalidArgumentError(
                f"min_interval_s must be positive, got {self.min_interval_s}"
            )

    def offer(self, key: K, value: V, now: float) -> list[tuple[K, V]]:
        """A new state of `key`: returned at once if it may go now, else held."""
        slot = self._slots.setdefault(key, _Slot())
        if not slot.has_pending and value == slot.sent:
            return []
        if now - slot.sent_at >= self.min_interval_s and not slot.has_pending:
            slot.sent, slot.sent_at = value, now
            return [(key, value)]
        if not slot.has_pending:
            self._order += 1
            heapq.heappush(self._due, (slot.sent_at + self.min_interval_s, self._order, key))
        slot.pending, slot.has_pending = value, True
        return []

    def due(self, now: float) -> list[tuple[K, V]]:
        """The held states whose turn has come, oldest turn first."""
        out: list[tuple[K, V]] = []
        while self._due and self._due[0][0] <= now:
            _, _, key = heapq.heappop(self._due)
            slot = self._slots[key]
            value = slot.pending
            slot.pending, slot.has_pending = None, False
            if value == slot.sent:
                continue  # it went back to what the screen already shows
            slot.sent, slot.sent_at = value, now
            out.append((key, value))  # type: ignore[arg-type]
        return out

    def next_due(self) -> float | None:
        """When `due` will next have something, if anything is held."""
        return self._due[0][0] if self._due else None

    def forget(self) -> None:
        """After a snapshot: nothing is known to be on the screen any more."""
        self._slots.clear()
        self._due.clear()

    def held(self) -> int:
        return len(self._due)
