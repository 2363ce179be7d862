"""When each device speaks next, and how fast the network server may publish.

Pure: simulated timestamps and an injected monotonic clock in, decisions out.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable

from citypost.errors import ConfigError

# The network server's cap is a ceiling, not a pace to run at: 10 % under it leaves room
# for bursts (devices due at once) and for the rest of the machine's work.
SPEED_HEADROOM = 0.9


def fitting_speed(
    speed: float, demand_per_sim_s: float, cap_per_s: float, *, explicit: bool
) -> float:
    """The simulated speed at which the city's uplinks fit under the network server's cap.

    Past the cap, devices would go out late while the simulated clock runs on, and look
    silent in simulated time when they are not. So a default speed is lowered to the
    fastest that fits (whole, when at least 1), and a speed the user asked for that
    cannot be kept is refused with what would work.
    """
    if demand_per_sim_s <= 0:
        return speed
    limit = cap_per_s * SPEED_HEADROOM / demand_per_sim_s
    if speed <= limit:
        return speed
    fitted = math.floor(limit) if limit >= 1 else math.floor(limit * 100) / 100
    if explicit or fitted <= 0:
        raise ConfigError(
            f"sim.speed {speed:g}: the simulated city would publish "
            f"{speed * demand_per_sim_s:,.0f} uplinks/s, more than sim.max_uplinks_per_s "
            f"({cap_per_s:,.0f}, less {1 - SPEED_HEADROOM:.0%} headroom) lets it: choose a "
            f"speed of {fitted:g} or less, a smaller city.scale or a larger sim.interval_factor"
        )
    return float(fitted)


class TokenBucket:
    """At most `rate` events a second on average, bursts of at most `burst`."""

    def __init__(
        self, rate: float, burst: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self._monotonic = monotonic
        self._tokens = burst
        self._at = monotonic()

    def take(self, wanted: int = 1) -> tuple[int, float]:
        """Take up to `wanted` tokens: (granted, 0.0), or (0, real seconds to wait for one)."""
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        if granted >= 1:
            self._tokens -= granted
            return granted, 0.0
        return 0, (1 - self._tokens) / self.rate

    def refund(self, unused: int) -> None:
        """Give back tokens taken but not used."""
        self._tokens = min(self.burst, self._tokens + unused)


class UplinkSchedule:
    """A heap of (due simulated time, device index), with lazy deletion on reschedule.

    A device that falls behind (the rate cap binds, the broker is away) is not
    made to catch up with every missed uplink: its next one is due one interval
    after it actually spoke, so a backlog never turns into a burst.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []  # (due, index, generation)
        self._entries: dict[int, tuple[float, int]] = {}  # index -> (due, generation)
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stagger(
        self, count: int, start: float, interval_of: Callable[[int], float], rng: random.Random
    ) -> None:
        """First uplinks at random over one interval, so the city does not report at once."""
        for i in range(count):
            self.push(i, start + rng.uniform(0.0, interval_of(i)))

    def push(self, index: int, due: float) -> None:
        """(Re)schedule a device; an earlier entry for it is forgotten."""
        self._generation += 1
        self._entries[index] = (due, self._generation)
        heapq.heappush(self._heap, (due, index, self._generation))

    def advance(self, index: int, due: float) -> bool:
        """Bring a scheduled device's next uplink forward to `due`; False if not scheduled."""
        entry = self._entries.get(index)
        if entry is None:
            return False
        if due < entry[0]:
            self.push(index, due)
        return True

    def _drop_stale(self) -> None:
        heap, entries = self._heap, self._entries
        while heap:
            _, index, generation = heap[0]
            entry = entries.get(index)
            if entry is not None and entry[1] == generation:
                return
            heapq.heappop(heap)

    def next_due(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> tuple[int, float] | None:
        """(index, due) of the earliest device due at or before now, removed; else None."""
        self._drop_stale()
        if not self._heap or self._heap[0][0] > now:
            return None
        due, index, _ = heapq.heappop(self._heap)
        del self._entries[index]
        return index, due

    @staticmethod
    def next_after(due: float, spoke_at: float, delay: float) -> float:
        """Next due time: one delay after the due time, or after it spoke if over a delay late."""
        return spoke_at + delay if spoke_at - due > delay else due + delay
