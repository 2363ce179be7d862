"""Per-key rate limits (citizen reports per reporter, per app and address, per post),
pure and bounded in memory.

A token bucket per key: `burst` at once, then `rate_per_s` on average. Keys
not seen for a while are forgotten (least recently used first) past
`max_keys`, so a flood of new reporter ids cannot grow memory without bound;
a forgotten key simply starts again with a full bucket.

`acquire_all` takes one token from each of several limits or from none: a
call refused by the post's global budget must not also spend its address's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self._burst), now))
        return min(float(self._burst), tokens + (now - at) * self._rate)

    def wait_s(self, key: str) -> float:
        """0.0 if a token is there now, else the seconds until one is; nothing is taken."""
        tokens = self._tokens(key, self._monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate

    def try_acquire(self, key: str) -> float:
        """0.0 when allowed (a token is taken), else the seconds until the next token."""
        now = self._monotonic()
        tokens = self._tokens(key, now)
        self._buckets.pop(key, None)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class Limit:
    """One limit a call passes: its name (said to the caller), the limiter, the key."""

    name: str
    limiter: KeyedRateLimiter
    key: str


@dataclass(frozen=True)
class Refusal:
    limit: Limit
    wait_s: float


def acquire_all(limits: Sequence[Limit]) -> Refusal | None:
    """A token from each limit, or from none: None when taken, else the first limit
    (in the order given: narrowest first) that has no token now, with its wait.

    Not atomic across threads; the citizen service calls it under its report lock.
    """
    for limit in limits:
        wait = limit.limiter.wait_s(limit.key)
        if wait > 0:
            return Refusal(limit, wait)
    for limit in limits:
        limit.limiter.try_acquire(limit.key)
    return None
