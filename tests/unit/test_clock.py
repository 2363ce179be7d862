import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from citypost.clock import SimClock
from citypost.errors import ConfigError
from fleet.pacing import TokenBucket, UplinkSchedule

pytestmark = pytest.mark.unit


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_clocks_sharing_an_origin_agree_whatever_their_monotonic_clocks() -> None:
    start = datetime(2024, 1, 15, 16, 0, tzinfo=UTC)
    origin = datetime.now(UTC) - timedelta(seconds=30)  # the city started 30 s ago
    city, post = FakeMonotonic(), FakeMonotonic()
    post.t = 5_000.0  # another process: another monotonic base
    early = SimClock(start, 60.0, monotonic=city, origin=origin)
    late = SimClock(start, 60.0, monotonic=post, origin=origin)
    assert abs(early.now_ts() - late.now_ts()) < 1.0  # wall clock read twice: a few ms
    assert abs(late.now_ts() - (start.timestamp() + 30 * 60)) < 60
    city.t += 10
    post.t += 10
    assert abs(early.now_ts() - late.now_ts()) < 1.0
    unanchored = SimClock(start, 60.0, monotonic=post)
    assert unanchored.now() == start


def test_sim_clock_of_config_uses_its_origin() -> None:
    from citypost.config import SimConfig

    start = datetime(2024, 1, 15, 16, 0, tzinfo=UTC)
    origin = datetime.now(UTC) - timedelta(seconds=10)
    clock = SimClock.of(SimConfig(start=start, speed=60.0, origin=origin))
    assert abs(clock.now_ts() - (start.timestamp() + 600)) < 30


def test_sim_clock_runs_at_its_speed_from_its_start() -> None:
    mono = FakeMonotonic()
    start = datetime(2024, 1, 15, 16, 0, tzinfo=UTC)
    clock = SimClock(start, 60.0, monotonic=mono)
    assert clock.now() == start
    mono.t += 30  # half a real minute = half an hour simulated
    assert clock.now() == start + timedelta(minutes=30)
    assert clock.now().tzinfo is UTC
    assert clock.now_ms() == int((start + timedelta(minutes=30)).timestamp() * 1000)
    assert clock.sim_seconds(2.0) == 120.0
    assert clock.real_seconds(120.0) == 2.0


def test_sim_clock_normalises_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    clock = SimClock(datetime(2024, 1, 15, 17, 0, tzinfo=paris), 1.0, monotonic=FakeMonotonic())
    assert clock.now() == datetime(2024, 1, 15, 16, 0, tzinfo=UTC)
    assert clock.now().utcoffset() == timedelta(0)
    naive = SimClock(datetime(2024, 1, 15, 16, 0), 1.0, monotonic=FakeMonotonic())
    assert naive.now() == datetime(2024, 1, 15, 16, 0, tzinfo=UTC)
    with pytest.raises(ConfigError):
        SimClock(datetime(2024, 1, 1, tzinfo=UTC), 0.0)


def test_token_bucket_grants_bursts_then_paces() -> None:
    mono = FakeMonotonic()
    bucket = TokenBucket(rate=80.0, burst=10.0, monotonic=mono)
    assert bucket.take(50) == (10, 0.0)
    granted, wait = bucket.take(1)
    assert granted == 0 and wait == pytest.approx(1 / 80)
    mono.t += 0.0625  # exactly 5 tokens' worth in binary floating point
    assert bucket.take(50)[0] == 5
    bucket.refund(3)
    assert bucket.take(50)[0] == 3
    mono.t += 100  # idle time never saves more than one burst
    assert bucket.take(1000)[0] == 10


def test_schedule_staggers_pops_in_order_and_reschedules() -> None:
    schedule = UplinkSchedule()
    schedule.stagger(100, 0.0, lambda i: 900.0, random.Random(1))
    assert len(schedule) == 100
    first = schedule.next_due()
    assert first is not None and 0.0 <= first < 900.0
    popped = []
    while (item := schedule.pop_due(900.0)) is not None:
        popped.append(item)
    dues = [due for _, due in popped]
    assert len(popped) == 100 and dues == sorted(dues)
    assert max(dues) - min(dues) > 600  # spread over the interval, not all at once
    schedule.push(7, 1000.0)
    assert schedule.advance(7, 950.0) and schedule.next_due() == 950.0
    assert schedule.advance(7, 990.0) and schedule.next_due() == 950.0  # never later
    assert not schedule.advance(8, 10.0)
    assert schedule.pop_due(949.0) is None
    assert schedule.pop_due(951.0) == (7, 950.0)
    assert schedule.pop_due(2000.0) is None  # the superseded entry is gone


def test_a_late_device_does_not_catch_up_in_a_burst() -> None:
    assert UplinkSchedule.next_after(due=100.0, spoke_at=101.0, delay=60.0) == 160.0
    assert UplinkSchedule.next_after(due=100.0, spoke_at=500.0, delay=60.0) == 560.0
