"""Per-key rate limits (citizen reports per reporter), pure and bounded in memory.

A token bucket per key: `burst` at once, then `rate_per_s` on average. Keys
not seen for a while are forgotten (least recently used first) past
`max_keys`, so a flood of new reporter ids cannot grow memory without bound;
a forgotten key simply starts again with a full bucket.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class KeyedRateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s must be > 0, burst >= 1 and max_keys >= 1")
        self._rate, self._burst, self._max_keys = rate_per_s, burst, max_keys
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def try_acquire(self, key: str) -> float:
        """0.0 when allowed (a token is taken), else the seconds until the next token."""
        now = self._monotonic()
        tokens, at = self._buckets.pop(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
