"""Feeding the actors: telemetry and clock ticks, in order, with nothing lost.

Every actor has its own sequence of events (a telemetry batch, or an empty
batch for a tick). An event is kept until the actor's snapshot covers it,
so an actor that crashed is restored from its last snapshot and replayed up
to where it was. Decisions are delivered once per event: replays of events
whose decisions were already delivered are applied silently.

`submit` only queues: the batch is accepted once it is in an actor's
sequence, held by the post. The edge's batches join the actor's event that
is not sent yet; that event goes once it holds `min_event_readings` or has
waited `max_event_delay_s`. One pump thread, once any actor's event is due,
sends every actor that has one waiting its next event, all at once (a host's
call costs the same whatever it carries), and waits for their answers while
the edge goes on reading. So an actor is called per few hundred readings, not per
edge batch: a call costs a few ms of CPU on a small machine whatever its
size (measured with 59 actors on 2 cores: calling every actor on every edge
batch left the post at 0.3 of the raw MQTT rate).

One actor that is down does not stop the others: its events wait in its
buffer until the actor is back. Only an actor too far behind pushes back on
the edge (submit raises, so the edge stops acknowledging and the broker holds
the rest).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.asset_actor import Health, IngestResult
from actors.catalog import ALSO_FEEDS, actor_name
from actors.decisions import Decision
from actors.policy import Snapshot
from actors.pool import ActorKey, ActorPool, Call
from citypost.errors import ResourceExhaustedError
from post.lag import LagHistogram, LagSummary
from protos.citypost.v1 import telemetry_pb2

log = logging.getLogger(__name__)

Deliver = Callable[[str, list[Decision]], None]

# A pump round that failed is retried after this long, not in a tight loop.
_ROUND_RETRY_S = 0.1


@dataclass
class _Event:
    seq: int
    now_ms: int
    items: list[telemetry_pb2.Telemetry] | None  # while open: readings may still join
    readings: int = 0
    opened_at: float = 0.0  # monotonic
    payload: bytes = b""  # the serialized batch once sealed; b"" for a tick
    received_ms: list[int] = field(default_factory=list)  # when the edge decoded each item

    def seal(self) -> bytes:
        if self.items is not None:
            self.payload = telemetry_pb2.TelemetryBatch(items=self.items).SerializeToString()
            self.items = None
        return self.payload


@dataclass
class _Track:
    seq: int = 0  # the last sequence number given out
    acked: int = 0  # the last event the actor confirmed applied
    delivered: int = 0  # the last event whose decisions were delivered
    incarnation: str | None = None
    snapshot: Snapshot | None = None
    events: deque[_Event] = field(default_factory=deque)  # since the snapshot
    down: bool = True  # until first restored
    restarts: int = 0
    applied: int = 0
    # The Ray worker process the actor last answered a health ping or a restore from
    # (0: none yet): what a drill SIGKILLs to crash the actor.
    worker_pid: int = 0
    answered_at: float = float("-inf")  # monotonic: the actor's last good answer

    def _first_unacked(self) -> int:
        # Events carry consecutive sequence numbers (only the oldest leave, at a
        # snapshot): the first one after `acked` is found by its number, not by a scan
        # of everything since the snapshot, on every wake-up of the pump.
        return max(0, self.acked + 1 - self.events[0].seq) if self.events else 0

    def next_event(self) -> _Event | None:
        index = self._first_unacked()
        return self.events[index] if index < len(self.events) else None

    def behind(self) -> int:
        """Readings queued for the actor and not yet confirmed applied."""
        unacked = itertools.islice(self.events, self._first_unacked(), None)
        return sum(e.readings for e in unacked)


@dataclass(frozen=True)
class FeedStats:
    actors: int
    down: list[str]
    restarts: dict[str, int]
    buffered_events: int
    applied_by_actor: dict[str, int]
    delivery_failures: int
    worker_pids: dict[str, int] = field(default_factory=dict)  # 0: not known yet
    # Actor processes that came back empty: one per crash, however many units it hosted.
    crashes: int = 0
    # From the edge's decoding to the policy's first application, every reading so far.
    apply_lag: LagSummary = field(default_factory=lambda: LagSummary(0, 0, 0, 0))


class ActorFeed:
    def __init__(
        self,
        pool: ActorPool,
        *,
        now_ms: Callable[[], int],
        deliver: Deliver,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        call_timeout_s: float = 10.0,
        snapshot_every: int = 20,
        max_behind_readings: int = 50_000,
        min_event_readings: int = 250,
        max_event_delay_s: float = 0.5,
        max_event_readings: int = 5_000,
    ) -> None:
        self._pool = pool
        self._now_ms = now_ms
        self._wall_ms = wall_ms
        self._lag = LagHistogram()
        self._lag_summary = self._lag.summary()  # stats() reads this, without the lock
        self._deliver = deliver
        self._timeout = call_timeout_s
        self._snapshot_every = snapshot_every
        self._max_behind = max_behind_readings
        self._min_event = min_event_readings
        self._delay = max_event_delay_s
        self._max_event = max_event_readings
        self._tracks: dict[ActorKey, _Track] = {key: _Track() for key in pool.actor_keys()}
        self._by_class: dict[int, list[ActorKey]] = {}
        for key in self._tracks:
            self._by_class.setdefault(key[0], []).append(key)
        # The tracks' state: held briefly, never across a call to the actors or a delivery.
        self._cond = threading.Condition()
        # Whoever talks to the actors: the pump, and the supervisor's health checks.
        self._calls = threading.RLock()
        self._busy = False  # a pump round is in progress
        self._stopping = False
        self._delivery_failures = 0
        self._crashes = 0
        self._pump_thread: threading.Thread | None = None

    # --- the edge's sink -----------------------------------------------------------------

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        routed: dict[ActorKey, list[telemetry_pb2.Telemetry]] = {}
        for item in batch:
            key = (item.asset_class, item.group)
            if key in self._tracks:
                routed.setdefault(key, []).append(item)
            for cls in ALSO_FEEDS.get(item.asset_class, ()):
                for other in self._by_class.get(cls, ()):
                    routed.setdefault(other, []).append(item)
        now = self._now_ms()
        with self._cond:
            self._refuse_if_behind(routed)
            for key, items in routed.items():
                self._enqueue_items(key, items, now)
            self._cond.notify_all()

    def tick(self) -> None:
        """A clock tick to every actor (time-driven decisions: dusk, timeouts)."""
        now = self._now_ms()
        with self._cond:
            for track in self._tracks.values():
                track.seq += 1
                track.events.append(_Event(track.seq, now, None))
            self._cond.notify_all()

    # --- lifecycle and restoring ---------------------------------------------------------

    def start(self) -> None:
        """Bring every actor up (fresh state), then start the pump."""
        with self._calls:
            self._recover(list(self._tracks))
        with self._cond:
            self._stopping = False
            if self._pump_thread is None or not self._pump_thread.is_alive():
                self._pump_thread = threading.Thread(
                    target=self._pump_loop, name="actor-feed", daemon=True
                )
                self._pump_thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Apply what is queued (for at most `timeout_s`), then stop the pump. True if
        everything queued for a live actor was applied."""
        idle = self.wait_idle(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._pump_thread
        if thread is not None:
            thread.join(timeout_s)
        return idle

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every live actor confirmed every event queued for it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._busy or self._work_waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def check_health(self, fresh_s: float = 0.0) -> list[ActorKey]:
        """Ping every actor that is up and has not answered in the last `fresh_s`
        (an answer to an ingest shows it alive, as the same incarnation; under load
        the pings would cost as many actor calls as the telemetry). Restore those
        that died or restarted; returns them (the supervisor counts them against
        its intensity)."""
        with self._calls:
            since = time.monotonic() - fresh_s
            with self._cond:
                up = [
                    key
                    for key, track in self._tracks.items()
                    if not track.down and track.answered_at < since
                ]
            healths = self._pool.call_many([Call(key, "health") for key in up], self._timeout)
            troubled = []
            with self._cond:
                for key, health in zip(up, healths, strict=True):
                    track = self._tracks[key]
                    if isinstance(health, Health):
                        track.worker_pid = health.pid
                    if (
                        isinstance(health, BaseException)
                        or not health.restored
                        or health.incarnation != track.incarnation
                    ):
                        track.down = True
                        troubled.append(key)
            if troubled:
                self._recover(troubled)
            return troubled

    def recover_down(self) -> list[ActorKey]:
        """Try again to restore the actors that are down; returns those still down."""
        with self._calls:
            with self._cond:
                down = [key for key, track in self._tracks.items() if track.down]
            if down:
                self._recover(down)
            with self._cond:
                return [key for key in down if self._tracks[key].down]

    def _recover(self, keys: list[ActorKey]) -> None:
        healths = self._pool.call_many([Call(key, "health") for key in keys], self._timeout)
        to_restore: list[tuple[ActorKey, Snapshot | None]] = []
        crashed: set[int] = set()  # the processes the restarted units last answered from
        with self._cond:
            for key, health in zip(keys, healths, strict=True):
                track = self._tracks[key]
                if isinstance(health, BaseException):
                    track.down = True
                    continue
                assert isinstance(health, Health)
                if not health.restored:
                    if track.incarnation is not None:
                        track.restarts += 1
                        crashed.add(track.worker_pid)
                        log.warning("actor %s restarted: restoring it", actor_name(*key))
                    to_restore.append((key, track.snapshot))
                else:
                    track.down = False  # alive and the same: only unconfirmed events to resend
                track.incarnation = health.incarnation
                track.worker_pid = health.pid
            self._crashes += len(crashed)
        if to_restore:
            calls = [Call(key, "restore", (snapshot,)) for key, snapshot in to_restore]
            results = self._pool.call_many(calls, self._timeout)
            with self._cond:
                for (key, snapshot), result in zip(to_restore, results, strict=True):
                    track = self._tracks[key]
                    track.down = isinstance(result, BaseException)
                    if isinstance(result, Health):
                        track.worker_pid = result.pid
                    if not track.down:
                        track.acked = int(snapshot["seq"]) if snapshot else 0
                        track.applied = int(snapshot["applied"]) if snapshot else 0
        with self._cond:
            self._cond.notify_all()

    # --- the sequence --------------------------------------------------------------------

    def _refuse_if_behind(self, routed: dict[ActorKey, list[telemetry_pb2.Telemetry]]) -> None:
        for key, items in routed.items():
            behind = self._tracks[key].behind()
            if behind + len(items) > self._max_behind:
                raise ResourceExhaustedError(
                    f"actor {actor_name(*key)} is {behind} readings behind: holding "
                    "telemetry until it catches up"
                )

    def _enqueue_items(self, key: ActorKey, items: list[telemetry_pb2.Telemetry], now: int) -> None:
        track = self._tracks[key]
        last = track.events[-1] if track.events else None
        # Lags of the group's own readings only: a bus's reading also fed to the signals'
        # policies is one reading applied, not one per policy.
        received = [
            i.received_at_ms for i in items if i.asset_class == key[0] and i.group == key[1]
        ]
        if last is not None and last.items is not None and last.readings < self._max_event:
            last.items.extend(items)  # not sent yet: it grows
            last.received_ms.extend(received)
            last.readings += len(items)
            last.now_ms = max(last.now_ms, now)
            return
        track.seq += 1
        track.events.append(
            _Event(track.seq, now, list(items), len(items), time.monotonic(), received_ms=received)
        )

    def _work_waiting(self) -> bool:
        return any(
            not track.down and track.events and track.events[-1].seq > track.acked
            for track in self._tracks.values()
        )

    def _due_at(self, track: _Track) -> float | None:
        """When the actor's next event should go (monotonic); None if nothing to send."""
        event = None if track.down else track.next_event()
        if event is None:
            return None
        if event.items is None or event is not track.events[-1]:
            return 0.0  # sealed (a replay), a tick, or a tick waits behind it: now
        if event.readings >= self._min_event:
            return 0.0
        return event.opened_at + self._delay

    def _next_due(self) -> float | None:
        due = [at for at in map(self._due_at, self._tracks.values()) if at is not None]
        return min(due, default=None)

    def _pump_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    due = self._next_due()
                    wait = None if due is None else due - time.monotonic()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                self._busy = True
            try:
                with self._calls:
                    self._round()
            except Exception:  # the pump must outlive a bug: log it, come back
                log.exception("actor feed: a pump round failed")
                time.sleep(_ROUND_RETRY_S)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _round(self) -> None:
        """Each due actor's next unconfirmed event, all at once; then their decisions."""
        now = time.monotonic()
        with self._cond:
            waiting = [
                (key, track, due)
                for key, track in self._tracks.items()
                if (due := self._due_at(track)) is not None
            ]
            if not any(due <= now for _, _, due in waiting):
                return
            # A call to a host costs the same whatever it carries: once one actor is due,
            # every actor with something waiting goes in this round, instead of each in a
            # round of its own a moment later (at a quiet hour, a call per actor instead
            # of one per host).
            calls: list[Call] = []
            events: list[_Event] = []
            for key, track, _ in waiting:
                event = track.next_event()
                assert event is not None  # it has a due time
                calls.append(Call(key, "ingest", (event.seq, event.seal(), event.now_ms)))
                events.append(event)
        results = self._pool.call_many(calls, self._timeout)
        deliveries: list[tuple[str, list[Decision]]] = []
        applied_at = self._wall_ms()
        with self._cond:
            for call, event, result in zip(calls, events, results, strict=True):
                first_time = event.seq > self._tracks[call.key].delivered
                decisions = self._settle(call.key, call.args[0], result)
                if first_time and self._tracks[call.key].delivered == event.seq:
                    self._lag.add_all(applied_at - r for r in event.received_ms)
                if decisions:
                    deliveries.append((actor_name(*call.key), decisions))
            self._lag_summary = self._lag.summary()
        for name, decisions in deliveries:
            try:
                self._deliver(name, decisions)
            except Exception:
                # Not retried here: a delivery may have been partly carried out, and
                # the command ledger is what guarantees commands end (ACKED/EXPIRED).
                log.exception("actor feed: decisions of %s were not delivered", name)
                with self._cond:
                    self._delivery_failures += 1
        self._snapshot_due([call.key for call in calls])

    def _settle(self, key: ActorKey, seq: int, result: Any) -> list[Decision]:
        """Record one ingest answer; the decisions to deliver, if any."""
        track = self._tracks[key]
        if isinstance(result, BaseException):
            log.warning("actor %s did not take event %d: %s", actor_name(*key), seq, result)
            track.down = True
            return []
        assert isinstance(result, IngestResult)
        if result.needs_restore or result.incarnation != track.incarnation:
            track.down = True  # restarted under us: restore before anything else
            return []
        track.acked = max(track.acked, result.seq)
        track.applied = result.applied
        track.answered_at = time.monotonic()
        if seq > track.delivered:
            track.delivered = seq
            return list(result.decisions)
        return []

    def _snapshot_due(self, keys: list[ActorKey]) -> None:
        with self._cond:
            due = [
                key
                for key in keys
                if not self._tracks[key].down
                and len(self._tracks[key].events) >= self._snapshot_every
            ]
        if not due:
            return
        results = self._pool.call_many([Call(key, "snapshot") for key in due], self._timeout)
        with self._cond:
            for key, snapshot in zip(due, results, strict=True):
                if isinstance(snapshot, BaseException):
                    continue  # keep the events; the next snapshot will cover them
                track = self._tracks[key]
                track.snapshot = snapshot
                covered = int(snapshot["seq"])
                while track.events and track.events[0].seq <= covered:
                    track.events.popleft()

    # --- reading -------------------------------------------------------------------------

    def stats(self) -> FeedStats:
        # Without the lock, on purpose: the post's event loop reads these figures while
        # the pump waits on that loop to deliver decisions. The set of tracks never
        # changes; each figure is read whole.
        tracks = list(self._tracks.items())
        return FeedStats(
            actors=len(self._tracks),
            down=[actor_name(*k) for k, t in tracks if t.down],
            restarts={actor_name(*k): t.restarts for k, t in tracks},
            buffered_events=sum(len(t.events) for _, t in tracks),
            applied_by_actor={actor_name(*k): t.applied for k, t in tracks},
            delivery_failures=self._delivery_failures,
            worker_pids={actor_name(*k): t.worker_pid for k, t in tracks},
            crashes=self._crashes,
            apply_lag=self._lag_summary,
        )
