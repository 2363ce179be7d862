"""The lag histogram's percentiles are within 5 % of the exact ones."""

from __future__ import annotations

import random

import pytest

from post.lag import LagHistogram

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def _exact(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(0, -(-int(q * 1000) * len(ordered) // 1000) - 1)]


def test_percentiles_are_within_five_percent() -> None:
    rng = random.Random(7)
    lags = [int(rng.lognormvariate(5, 1.2)) for _ in range(20_000)]
    histogram = LagHistogram()
    histogram.add_all(lags)
    summary = histogram.summary()
    assert summary.count == len(lags) and summary.max_ms == max(lags)
    for q, got in ((0.5, summary.p50_ms), (0.99, summary.p99_ms)):
        exact = _exact(lags, q)
        assert exact <= got <= exact * 1.05 + 1, (q, exact, got)


def test_empty_and_zero_lags() -> None:
    histogram = LagHistogram()
    assert histogram.summary().p99_ms == 0
    histogram.add_all([0, 0, -5])  # a clock a little ahead counts as no lag
    assert histogram.summary().p50_ms == 0 and histogram.summary().max_ms == 0
    with pytest.raises(ValueError):
        histogram.percentile(0)
