"""The actor feed remembers which worker process runs each actor (what a drill kills)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace

import pytest

from actors.asset_actor import AssetActor, Health
from actors.catalog import actor_name
from actors.pool import ActorKey
from post.actor_feed import ActorFeed
from tests.unit.test_actor_feed import LAMPS, SIGNALS, InProcessPool, _items
from tests.unit.test_asset_actor import CountingPolicy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

LAMPS_NAME = actor_name(*LAMPS)
SIGNALS_NAME = actor_name(*SIGNALS)


class WorkerActor(AssetActor):
    """An actor that reports the pid of a (pretend) worker process of its own."""

    def __init__(self, group: str, pid: int) -> None:
        super().__init__(group, [], CountingPolicy)
        self.pid = pid

    def health(self) -> Health:
        return replace(super().health(), pid=self.pid)


class WorkerPool(InProcessPool):
    """Every actor in a worker of its own; a crash brings it back in a new worker."""

    def __init__(self, keys: Iterable[ActorKey]) -> None:
        super().__init__(keys)
        self._pids = itertools.count(1000)
        self.actors = {key: WorkerActor(key[1], next(self._pids)) for key in self.actors}

    def crash(self, key: ActorKey) -> None:
        self.actors[key] = WorkerActor(key[1], next(self._pids))

    def pid(self, key: ActorKey) -> int:
        actor = self.actors[key]
        assert isinstance(actor, WorkerActor)
        return actor.pid


def _feed(pool: InProcessPool) -> ActorFeed:
    feed = ActorFeed(
        pool, now_ms=lambda: 1_800_000_000_000, deliver=lambda *_: None, max_event_delay_s=0.01
    )
    feed.start()
    return feed


def test_started_actors_report_their_worker() -> None:
    pool = WorkerPool([LAMPS, SIGNALS])
    feed = _feed(pool)
    try:
        assert feed.stats().worker_pids == {
            LAMPS_NAME: pool.pid(LAMPS),
            SIGNALS_NAME: pool.pid(SIGNALS),
        }
        assert pool.pid(LAMPS) != pool.pid(SIGNALS)
    finally:
        feed.stop()


def test_an_actor_restarted_in_a_new_worker_reports_the_new_one() -> None:
    pool = WorkerPool([LAMPS, SIGNALS])
    feed = _feed(pool)
    try:
        old = feed.stats().worker_pids[LAMPS_NAME]
        pool.crash(LAMPS)  # Ray restarts the actor empty, in another process
        assert feed.check_health() == [LAMPS]
        stats = feed.stats()
        assert stats.worker_pids[LAMPS_NAME] == pool.pid(LAMPS) != old
        assert stats.restarts[LAMPS_NAME] == 1
        assert stats.worker_pids[SIGNALS_NAME] == pool.pid(SIGNALS)  # untouched
    finally:
        feed.stop()


def test_a_crash_noticed_by_an_ingest_is_restored_with_the_new_worker() -> None:
    pool = WorkerPool([LAMPS])
    feed = _feed(pool)
    try:
        old = feed.stats().worker_pids[LAMPS_NAME]
        pool.crash(LAMPS)
        feed.submit(_items(LAMPS, 3))  # answered "needs restore": the actor is down
        assert feed.wait_idle(5.0)
        assert feed.stats().down == [LAMPS_NAME]
        assert feed.recover_down() == []
        assert feed.wait_idle(5.0)
        assert feed.stats().worker_pids[LAMPS_NAME] == pool.pid(LAMPS) != old
        assert pool.seen(LAMPS) == 3  # replayed into the new worker
    finally:
        feed.stop()


def test_an_unreachable_actor_keeps_its_last_known_worker() -> None:
    # The pid the post last saw is still the best guess (the drill checks the process).
    pool = WorkerPool([LAMPS])
    feed = _feed(pool)
    try:
        known = feed.stats().worker_pids[LAMPS_NAME]
        pool.unreachable.add(LAMPS)
        assert feed.check_health() == [LAMPS]
        stats = feed.stats()
        assert stats.down == [LAMPS_NAME]
        assert stats.worker_pids[LAMPS_NAME] == known
    finally:
        feed.stop()


def test_no_worker_is_known_before_the_actor_answers() -> None:
    pool = WorkerPool([LAMPS])
    pool.unreachable.add(LAMPS)
    feed = _feed(pool)
    try:
        assert feed.stats().worker_pids == {LAMPS_NAME: 0}
        pool.unreachable.clear()
        assert feed.recover_down() == []
        assert feed.stats().worker_pids == {LAMPS_NAME: pool.pid(LAMPS)}
    finally:
        feed.stop()


def test_one_process_hosting_two_units_crashing_is_one_crash_and_two_restores() -> None:
    pool = WorkerPool([LAMPS, SIGNALS])
    pool.actors[SIGNALS] = WorkerActor(SIGNALS[1], pool.pid(LAMPS))  # one host for both
    feed = _feed(pool)
    try:
        new_pid = 4242
        pool.actors = {key: WorkerActor(key[1], new_pid) for key in pool.actors}
        assert sorted(feed.check_health()) == sorted([LAMPS, SIGNALS])
        stats = feed.stats()
        assert stats.crashes == 1
        assert stats.restarts == {LAMPS_NAME: 1, SIGNALS_NAME: 1}
        assert set(stats.worker_pids.values()) == {new_pid}
    finally:
        feed.stop()
