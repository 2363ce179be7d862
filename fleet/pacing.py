"""When each device speaks next, how fast the network server may publish, how far behind it is.

Pure: simulated timestamps and an injected monotonic clock in, decisions out.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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


def receive_windows_at(due: float, radio_now: float) -> float:
    """When a class A device's receive windows open after its uplink due at `due`.

    At the uplink's own (event) time when the radio scheduler has not moved past it:
    RX1 one second later, RX2 two, as the device listens. An uplink that went out late
    (the rate cap, a busy machine) is older than the radio's present: its gateways'
    transmissions and duty-cycle books have moved on, and frames cannot be placed in
    their past. Then the windows open at the radio's present, as if the network server
    had heard the uplink just now (the frame waiting for that device is not lost to
    the lag; a real network server would have missed the windows).
    """
    return max(due, radio_now)


PACE_WINDOW_S = 30.0  # real seconds the lag and effective speed are measured over
PACE_SAMPLE_S = 0.25  # at most one sample per this many real seconds
PACE_MIN_SPAN_S = 1.0  # an effective speed needs at least this much real time


@dataclass(frozen=True, slots=True)
class Pace:
    """How the network server keeps up with its simulated clock, over a window of real time."""

    effective_speed: float | None  # simulated s its front advanced per real s; None: too soon
    lag_s: float  # simulated seconds its front is behind the clock now (the latest sample)
    lag_max_s: float  # the most it was behind within the window
    span_s: float  # real seconds the samples span


class PaceMeter:
    """The network server's publishing front, sampled over a sliding window of real time.

    The front is the simulated instant before which every scheduled uplink has been
    handled (published or lost): the clock's now when nothing is due, else the earliest
    due time still waiting. `now - front` is how far behind its schedule the city is;
    how fast the front moves per real second is the speed the city really runs at,
    whatever the clock says. The front never goes back.
    """

    def __init__(
        self,
        window_s: float = PACE_WINDOW_S,
        *,
        sample_s: float = PACE_SAMPLE_S,
        min_span_s: float = PACE_MIN_SPAN_S,
    ) -> None:
        if window_s <= 0 or sample_s < 0 or min_span_s <= 0:
            raise ValueError(
                f"window_s and min_span_s must be > 0, sample_s >= 0; got "
                f"{window_s}, {sample_s}, {min_span_s}"
            )
        self.window_s = window_s
        self._sample_s = sample_s
        self._min_span_s = min_span_s
        self._samples: deque[tuple[float, float, float]] = deque()  # (real, front, lag)
        self._front = -math.inf

    def observe(self, real: float, now: float, next_due: float | None) -> None:
        """One look at the schedule: real monotonic seconds, the simulated now, and the
        earliest due time still waiting (None: nothing scheduled)."""
        front = now if next_due is None else min(now, next_due)
        self._front = max(self._front, front)
        lag = max(0.0, now - self._front)
        samples = self._samples
        if not samples or real - samples[-1][0] >= self._sample_s:
            samples.append((real, self._front, lag))
        self._trim(real)

    def _trim(self, real: float) -> None:
        samples = self._samples
        while samples and samples[0][0] < real - self.window_s:
            samples.popleft()

    def pace(self, real: float) -> Pace | None:
        """The figures over the window that ends at `real`; None without a sample in it."""
        self._trim(real)
        samples = self._samples
        if not samples:
            return None
        first_real, first_front, _ = samples[0]
        last_real, last_front, last_lag = samples[-1]
        span = last_real - first_real
        speed = (last_front - first_front) / span if span >= self._min_span_s else None
        return Pace(speed, last_lag, max(lag for _, _, lag in samples), span)
