"""How late readings reach their policy: a histogram of lags with 5 % wide buckets.

Pure: counts in memory, percentiles read back within 5 % of the truth, whatever
the number of readings (a full-scale post applies thousands a second).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_RATIO = 1.05
_LOG_RATIO = math.log(_RATIO)


@dataclass(frozen=True)
class LagSummary:
    count: int
    p50_ms: int
    p99_ms: int
    max_ms: int


class LagHistogram:
    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._count = 0
        self._max = 0

    def add_all(self, lags_ms: Iterable[int]) -> None:
        for lag in lags_ms:
            lag = max(0, lag)
            self._buckets[_bucket(lag)] += 1
            self._count += 1
            self._max = max(self._max, lag)

    def percentile(self, q: float) -> int:
        """The lag under which a share `q` of readings came (the bucket's upper edge, at
        most the largest seen); 0 with no readings."""
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q}")
        if not self._count:
            return 0
        rank = math.ceil(q * self._count)
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return min(self._max, _upper(bucket))
        return self._max

    def summary(self) -> LagSummary:
        return LagSummary(self._count, self.percentile(0.5), self.percentile(0.99), self._max)


def _bucket(lag_ms: int) -> int:
    return 0 if lag_ms < 1 else 1 + int(math.log(lag_ms) / _LOG_RATIO)


def _upper(bucket: int) -> int:
    return 0 if bucket == 0 else math.ceil(_RATIO**bucket)
