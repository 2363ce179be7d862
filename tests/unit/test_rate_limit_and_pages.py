import pytest

from api.pagination import decode_token, encode_token, page_size
from api.rate_limit import KeyedRateLimiter
from citypost.errors import InvalidArgumentError

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_key() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(rate_per_s=0.1, burst=3, monotonic=clock)
    assert [limiter.try_acquire("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire("alice")
    assert wait == pytest.approx(10.0)
    assert limiter.try_acquire("bob") == 0.0  # another reporter is not affected
    clock.now += 10.0
    assert limiter.try_acquire("alice") == 0.0
    assert limiter.try_acquire("alice") > 0


def test_memory_is_bounded_and_forgotten_keys_start_full() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(rate_per_s=0.01, burst=1, max_keys=2, monotonic=clock)
    assert limiter.try_acquire("a") == 0.0
    assert limiter.try_acquire("a") > 0
    limiter.try_acquire("b")
    limiter.try_acquire("c")  # "a" is the least recently used: forgotten
    assert limiter.try_acquire("a") == 0.0


def test_page_size_and_tokens() -> None:
    assert page_size(0) == 100
    assert page_size(7) == 7
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgumentError, match="page_size"):
            page_size(bad)
    assert decode_token(encode_token("alarms/0042")) == "alarms/0042"
    assert decode_token("") == ""
    with pytest.raises(InvalidArgumentError, match="page_token"):
        decode_token("%%%")
