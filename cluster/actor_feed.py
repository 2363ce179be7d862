"""Feeding the actors: telemetry and clock ticks, in order, with nothing lost.

Every actor has its own sequence of events (a telemetry batch, or an empty
batch for a tick). An event is kept until the actor's snapshot covers it,
so an actor that crashed is restored from its last snapshot and replayed up
to where it was. Decisions are delivered once per event: replays of events
whose decisions were already delivered are applied silently.

One actor that is down does not stop the others: its events wait in its
buffer (the telemetry is held by the post) until the actor is back. Only a
buffer past its bound pushes back on the edge (submit raises, so the edge
stops acknowledging and the broker holds the rest).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.asset_actor import Health, IngestResult
from actors.catalog import ALSO_FEEDS, actor_name
from actors.decisions import Decision
from actors.policy import Snapshot
from actors.pool import ActorKey, ActorPool, Call
from cluster.errors import ResourceExhaustedError
from protos.citypost.v1 import telemetry_pb2

log = logging.getLogger(__name__)

Deliver = Callable[[str, list[Decision]], None]


@dataclass
class _Track:
    seq: int = 0  # the last sequence number given out
    acked: int = 0  # the last event the actor confirmed applied
    delivered: int = 0  # the last event whose decisions were delivered
    incarnation: str | None = None
    snapshot: Snapshot | None = None
    events: deque[tuple[int, bytes, int]] = field(default_factory=deque)  # since the snapshot
    down: bool = True  # until first restored
    restarts: int = 0
    applied: int = 0


@dataclass(frozen=True)
class FeedStats:
    actors: int
    down: list[str]
    restarts: dict[str, int]
    buffered_events: int
    applied_by_actor: dict[str, int]


class ActorFeed:
    def __init__(
        self,
        pool: ActorPool,
        *,
        now_ms: Callable[[], int],
        deliver: Deliver,
        call_timeout_s: float = 10.0,
        snapshot_every: int = 20,
        max_buffered_events: int = 2_000,
    ) -> None:
        self._pool = pool
        self._now_ms = now_ms
        self._deliver = deliver
        self._timeout = call_timeout_s
        self._snapshot_every = snapshot_every
        self._max_buffered = max_buffered_events
        self._tracks: dict[ActorKey, _Track] = {key: _Track() for key in pool.actor_keys()}
        self._by_class: dict[int, list[ActorKey]] = {}
        for key in self._tracks:
            self._by_class.setdefault(key[0], []).append(key)
        # One caller at a time: the edge's flush and the post's tick loop share the
        # sequences. Held while decisions are delivered, so never taken on the post's
        # event loop (deliver waits on that loop): call these through a thread there.
        self._lock = threading.RLock()

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
        with self._lock:
            self._refuse_if_full(routed)
            for key, items in routed.items():
                payload = telemetry_pb2.TelemetryBatch(items=items).SerializeToString()
                self._enqueue(key, payload, now)
            self._pump(list(routed))

    def tick(self) -> None:
        """A clock tick to every actor (time-driven decisions: dusk, timeouts)."""
        now = self._now_ms()
        with self._lock:
            for key in self._tracks:
                self._enqueue(key, b"", now)
            self._pump(list(self._tracks))

    # --- restoring -----------------------------------------------------------------------

    def start(self) -> None:
        """Bring every actor up (fresh state) and apply anything already waiting."""
        with self._lock:
            self._recover(list(self._tracks))

    def check_health(self) -> list[ActorKey]:
        """Ping every actor that is up; restore those that died or restarted. Returns
        the actors found in trouble (the supervisor counts them against its intensity)."""
        with self._lock:
            up = [key for key, track in self._tracks.items() if not track.down]
            healths = self._pool.call_many([Call(key, "health") for key in up], self._timeout)
            troubled = []
            for key, health in zip(up, healths, strict=True):
                track = self._tracks[key]
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

    def quiesce(self) -> None:
        """Return once no call to the actors is in progress (before disconnecting)."""
        with self._lock:
            pass

    def recover_down(self) -> list[ActorKey]:
        """Try again to restore the actors that are down; returns those still down."""
        with self._lock:
            down = [key for key, track in self._tracks.items() if track.down]
            if down:
                self._recover(down)
            return [key for key in down if self._tracks[key].down]

    def _recover(self, keys: list[ActorKey]) -> None:
        healths = self._pool.call_many([Call(key, "health") for key in keys], self._timeout)
        to_restore = []
        for key, health in zip(keys, healths, strict=True):
            track = self._tracks[key]
            if isinstance(health, BaseException):
                track.down = True
                continue
            assert isinstance(health, Health)
            if not health.restored:
                if track.incarnation is not None:
                    track.restarts += 1
                    log.warning("actor %s restarted: restoring it", actor_name(*key))
                to_restore.append(key)
            else:
                track.down = False  # alive and the same: only unconfirmed events to resend
            track.incarnation = health.incarnation
        if to_restore:
            calls = [Call(key, "restore", (self._tracks[key].snapshot,)) for key in to_restore]
            for key, result in zip(
                to_restore, self._pool.call_many(calls, self._timeout), strict=True
            ):
                track = self._tracks[key]
                track.down = isinstance(result, BaseException)
                if not track.down:
                    snapshot_seq = int(track.snapshot["seq"]) if track.snapshot else 0
                    track.acked = snapshot_seq
                    track.applied = int(track.snapshot["applied"]) if track.snapshot else 0
        self._pump(keys)

    # --- the sequence --------------------------------------------------------------------

    def _refuse_if_full(self, routed: dict[ActorKey, list[telemetry_pb2.Telemetry]]) -> None:
        for key in routed:
            if len(self._tracks[key].events) >= self._max_buffered:
                raise ResourceExhaustedError(
                    f"actor {actor_name(*key)} is {len(self._tracks[key].events)} events "
                    "behind: holding telemetry until it is back"
                )

    def _enqueue(self, key: ActorKey, payload: bytes, now: int) -> None:
        track = self._tracks[key]
        track.seq += 1
        track.events.append((track.seq, payload, now))

    def _pump(self, keys: list[ActorKey]) -> None:
        """Send every actor its unconfirmed events, in order, until all are confirmed or down."""
        live = [key for key in keys if not self._tracks[key].down]
        while live:
            calls: list[Call] = []
            for key in live:
                track = self._tracks[key]
                event = next((e for e in track.events if e[0] > track.acked), None)
                if event is not None:
                    calls.append(Call(key, "ingest", event))
            if not calls:
                break
            results = self._pool.call_many(calls, self._timeout)
            next_live: list[ActorKey] = []
            for call, result in zip(calls, results, strict=True):
                if self._settle(call.key, call.args[0], result):
                    next_live.append(call.key)
            live = next_live
        self._snapshot_due(keys)

    def _settle(self, key: ActorKey, seq: int, result: Any) -> bool:
        """Record one ingest answer; True if the actor can take its next event."""
        track = self._tracks[key]
        if isinstance(result, BaseException):
            log.warning("actor %s did not take event %d: %s", actor_name(*key), seq, result)
            track.down = True
            return False
        assert isinstance(result, IngestResult)
        if result.needs_restore or result.incarnation != track.incarnation:
            track.down = True  # restarted under us: restore before anything else
            return False
        track.acked = max(track.acked, result.seq)
        track.applied = result.applied
        if seq > track.delivered:
            track.delivered = seq
            if result.decisions:
                self._deliver(actor_name(*key), result.decisions)
        return True

    def _snapshot_due(self, keys: list[ActorKey]) -> None:
        due = [
            key
            for key in keys
            if not self._tracks[key].down and len(self._tracks[key].events) >= self._snapshot_every
        ]
        if not due:
            return
        results = self._pool.call_many([Call(key, "snapshot") for key in due], self._timeout)
        for key, snapshot in zip(due, results, strict=True):
            if isinstance(snapshot, BaseException):
                continue  # keep the events; the next snapshot will cover them
            track = self._tracks[key]
            track.snapshot = snapshot
            covered = int(snapshot["seq"])
            while track.events and track.events[0][0] <= covered:
                track.events.popleft()

    # --- reading -------------------------------------------------------------------------

    def stats(self) -> FeedStats:
        # Without the lock, on purpose: the lock is held while decisions are delivered
        # to the post's event loop, and the loop reads these figures. The set of tracks
        # never changes; each figure is read whole.
        tracks = list(self._tracks.items())
        return FeedStats(
            actors=len(self._tracks),
            down=[actor_name(*k) for k, t in tracks if t.down],
            restarts={actor_name(*k): t.restarts for k, t in tracks},
            buffered_events=sum(len(t.events) for _, t in tracks),
            applied_by_actor={actor_name(*k): t.applied for k, t in tracks},
        )
