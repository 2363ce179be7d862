"""The actor feed against in-process actors: order, replay after a crash, back-pressure."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from actors.asset_actor import AssetActor
from actors.pool import ActorKey, Call
from citypost.errors import ActorUnavailableError, ResourceExhaustedError
from post.actor_feed import ActorFeed
from protos.citypost.v1 import assets_pb2, telemetry_pb2
from tests.unit.test_asset_actor import CountingPolicy

pytestmark = pytest.mark.unit

LAMPS: ActorKey = (assets_pb2.STREET_LAMP, "talant")
SIGNALS: ActorKey = (assets_pb2.TRAFFIC_SIGNAL, "dijon-1")
BUSES: ActorKey = (assets_pb2.BUS, "line-3")


class InProcessPool:
    """Actors as plain objects; `crash` stands for Ray restarting one empty."""

    def __init__(self, keys: Iterable[ActorKey]) -> None:
        self.actors = {key: AssetActor(key[1], [], CountingPolicy) for key in keys}
        self.unreachable: set[ActorKey] = set()

    def actor_keys(self) -> Iterable[ActorKey]:
        return list(self.actors)

    def crash(self, key: ActorKey) -> None:
        self.actors[key] = AssetActor(key[1], [], CountingPolicy)

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            if call.key in self.unreachable:
                out.append(ActorUnavailableError(f"{call.key} is restarting"))
            else:
                out.append(getattr(self.actors[call.key], call.method)(*call.args))
        return out

    def seen(self, key: ActorKey) -> int:
        policy = self.actors[key]._policy
        assert isinstance(policy, CountingPolicy)
        return policy.seen


def _items(key: ActorKey, n: int, start: int = 0) -> list[telemetry_pb2.Telemetry]:
    return [
        telemetry_pb2.Telemetry(dev_eui=f"{i:016x}", asset_class=key[0], group=key[1])
        for i in range(start, start + n)
    ]


def _feed(pool: InProcessPool, delivered: list[tuple[str, Any]], **kw: Any) -> ActorFeed:
    feed = ActorFeed(
        pool,
        now_ms=lambda: 1_800_000_000_000,
        deliver=lambda name, decisions: delivered.append((name, decisions)),
        **{"max_event_delay_s": 0.01, **kw},
    )
    feed.start()
    return feed


def _settled(feed: ActorFeed) -> None:
    assert feed.wait_idle(5.0), "the feed did not apply what it was given"


def test_each_actor_gets_its_groups_and_buses_also_reach_signals() -> None:
    pool = InProcessPool([LAMPS, SIGNALS, BUSES])
    delivered: list[tuple[str, Any]] = []
    feed = _feed(pool, delivered)
    feed.submit(_items(LAMPS, 3) + _items(BUSES, 2))
    _settled(feed)
    assert pool.seen(LAMPS) == 3
    assert pool.seen(BUSES) == 2
    assert pool.seen(SIGNALS) == 2  # signals hear the buses
    assert {name for name, _ in delivered} == {
        "policy:street_lamp/talant",
        "policy:bus/line-3",
        "policy:traffic_signal/dijon-1",
    }


def test_a_crashed_actor_is_restored_and_replayed_without_loss_or_double_decisions() -> None:
    pool = InProcessPool([LAMPS, SIGNALS])
    delivered: list[tuple[str, Any]] = []
    feed = _feed(pool, delivered, snapshot_every=3)
    sent = 0
    for round_ in range(7):
        feed.submit(_items(LAMPS, 5, start=round_ * 5))
        _settled(feed)
        sent += 5
    pool.crash(LAMPS)  # state gone: what Ray gives back after SIGKILL
    pool.unreachable.add(LAMPS)
    feed.submit(_items(LAMPS, 5, start=100) + _items(SIGNALS, 1))
    sent += 5
    _settled(feed)
    assert pool.seen(SIGNALS) == 1  # the others go on
    assert feed.stats().down == ["policy:street_lamp/talant"]
    pool.unreachable.clear()
    assert feed.recover_down() == []
    _settled(feed)
    assert pool.seen(LAMPS) == sent  # snapshot + replay: every reading, once
    assert feed.stats().restarts["policy:street_lamp/talant"] == 1
    lamp_decisions = [d for name, d in delivered if name == "policy:street_lamp/talant"]
    assert len(lamp_decisions) == 8  # one per batch, none twice
    feed.submit(_items(LAMPS, 1, start=200))
    _settled(feed)
    assert pool.seen(LAMPS) == sent + 1
    feed.stop()


def test_ticks_are_part_of_the_sequence() -> None:
    pool = InProcessPool([LAMPS])
    delivered: list[tuple[str, Any]] = []
    feed = _feed(pool, delivered)
    feed.submit(_items(LAMPS, 2))
    _settled(feed)
    feed.tick()
    _settled(feed)
    feed.submit(_items(LAMPS, 2))
    _settled(feed)
    assert pool.actors[LAMPS].health().seq == 3
    assert pool.seen(LAMPS) == 4


def test_an_actor_too_far_behind_pushes_back() -> None:
    pool = InProcessPool([LAMPS])
    feed = _feed(pool, [], max_behind_readings=3, snapshot_every=100)
    pool.unreachable.add(LAMPS)
    feed.submit(_items(LAMPS, 1))
    _settled(feed)  # the actor is found down; what follows waits for it
    for _ in range(2):
        feed.submit(_items(LAMPS, 1))
    with pytest.raises(ResourceExhaustedError, match="behind"):
        feed.submit(_items(LAMPS, 1))
    pool.unreachable.clear()
    feed.recover_down()
    _settled(feed)
    assert pool.seen(LAMPS) == 3
    feed.submit(_items(LAMPS, 1))  # caught up: accepted again
    _settled(feed)
    assert pool.seen(LAMPS) == 4


class GatedPool(InProcessPool):
    """Holds the first ingest until released, as a slow actor round would."""

    def __init__(self, keys: Iterable[ActorKey]) -> None:
        super().__init__(keys)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.ingest_calls = 0

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        if any(call.method == "ingest" for call in calls):
            self.ingest_calls += 1
            self.entered.set()
            assert self.release.wait(5.0)
        return super().call_many(calls, timeout_s)


def test_batches_arriving_during_a_round_join_one_event() -> None:
    pool = GatedPool([LAMPS])
    delivered: list[tuple[str, Any]] = []
    feed = _feed(pool, delivered)
    feed.submit(_items(LAMPS, 1))
    assert pool.entered.wait(5.0)
    for i in range(10):  # the edge goes on while the actor works
        feed.submit(_items(LAMPS, 2, start=10 + 2 * i))
    pool.release.set()
    _settled(feed)
    assert pool.seen(LAMPS) == 21
    assert pool.ingest_calls == 2  # one round for the first batch, one for the ten
    assert len(delivered) == 2
    feed.stop()


def test_a_failed_delivery_is_counted_and_the_feed_goes_on() -> None:
    pool = InProcessPool([LAMPS])
    calls: list[str] = []

    def deliver(name: str, decisions: Any) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("the dispatcher refused")

    feed = ActorFeed(
        pool, now_ms=lambda: 1_800_000_000_000, deliver=deliver, max_event_delay_s=0.01
    )
    feed.start()
    feed.submit(_items(LAMPS, 1))
    _settled(feed)
    feed.submit(_items(LAMPS, 1, start=1))
    _settled(feed)
    assert len(calls) == 2
    assert feed.stats().delivery_failures == 1
    assert pool.seen(LAMPS) == 2
    feed.stop()


def test_the_lag_from_decoding_to_application_is_counted_once_per_reading() -> None:
    pool = InProcessPool([LAMPS])
    wall = 2_000_000_000_000
    feed = _feed(pool, [], wall_ms=lambda: wall)
    try:
        late = _items(LAMPS, 4)
        for n, item in enumerate(late):
            item.received_at_ms = wall - 100 * (n + 1)  # 100..400 ms before application
        feed.submit(late)
        _settled(feed)
        pool.crash(LAMPS)  # a replay after the restart must not count them again
        feed.check_health()
        _settled(feed)
        lag = feed.stats().apply_lag
        assert lag.count == 4
        assert lag.max_ms == 400 and 200 <= lag.p50_ms <= 210
    finally:
        feed.stop()


class RoundsPool(InProcessPool):
    """Records which actors each round called."""

    def __init__(self, keys: Iterable[ActorKey]) -> None:
        super().__init__(keys)
        self.rounds: list[set[ActorKey]] = []

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        ingests = {c.key for c in calls if c.method == "ingest"}
        if ingests:
            self.rounds.append(ingests)
        return super().call_many(calls, timeout_s)


def test_once_one_actor_is_due_every_actor_with_readings_waiting_goes_in_the_same_round() -> None:
    # A call costs the same whatever it carries: the signals' readings, 0.3 s younger
    # than the lamps', ride in the lamps' round instead of a round of their own.
    pool = RoundsPool([LAMPS, SIGNALS])
    delivered: list[tuple[str, Any]] = []
    feed = _feed(pool, delivered, max_event_delay_s=1.0, min_event_readings=1_000)
    pool.rounds.clear()  # start-up's own calls
    feed.submit(_items(LAMPS, 3))
    threading.Event().wait(0.3)
    feed.submit(_items(SIGNALS, 2))
    _settled(feed)
    assert pool.rounds == [{LAMPS, SIGNALS}]
    assert (pool.seen(LAMPS), pool.seen(SIGNALS)) == (3, 2)
    feed.stop()
