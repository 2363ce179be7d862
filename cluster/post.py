"""A control post: the edge, the actors, the dispatcher and their loops, as one unit.

The post owns one asyncio loop. The edge runs on paho's threads and hands
telemetry to the actor feed, whose decisions come back to the loop, where the
dispatcher (the one writer) carries them out. Loops on the post's loop: clock
ticks for the actors (once per simulated minute, at most once a second),
the command ledger (resend, expire), supervision (pings, restores, restart
intensity), and the end of operators' overrides.

One post leads alone for now (epoch 1, control state in memory); the failover
stage puts the control state in etcd behind the same seam and elects the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from actors.catalog import actor_name
from actors.decisions import Decision
from actors.pool import ActorKey, ActorPool, Call
from actors.supervision import RestartIntensity, Verdict
from bridges import chirpstack
from bridges.edge import Edge
from bridges.registry import DeviceRegistry
from bridges.sinks import FanOutSink, MemorySink
from cluster.actor_feed import ActorFeed
from cluster.config import Config
from cluster.dispatcher import Dispatcher
from cluster.observability import Observability
from cluster.sim_clock import SimClock
from failover.control_state import ControlState, InMemoryControlState

log = logging.getLogger(__name__)

LEDGER_INTERVAL_S = 0.5
SUPERVISION_INTERVAL_S = 1.0
DELIVER_TIMEOUT_S = 30.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str


class _Acks:
    def __init__(self, post: Post) -> None:
        self._post = post

    def submit_acks(self, acks: Sequence[chirpstack.Ack]) -> None:
        self._post.from_thread(self._post.dispatcher.on_acks(acks))


class Post:
    def __init__(
        self,
        config: Config,
        *,
        name: str,
        registry: DeviceRegistry,
        pool: ActorPool,
        clock: SimClock,
        observability: Observability,
        state: ControlState | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.registry = registry
        self.pool = pool
        self.clock = clock
        self.epoch = 1
        if state is None:
            state = InMemoryControlState(epoch=self.epoch)
        self.state = state
        self.started_at_ms = wall_ms()
        self.latest = MemorySink()
        self.dispatcher = Dispatcher(
            state=state,
            registry=registry,
            publish=self._publish,
            epoch=lambda: self.epoch,
            wall_ms=wall_ms,
        )
        self.feed = ActorFeed(pool, now_ms=clock.now_ms, deliver=self._deliver)
        self.edge = Edge(
            config=config,
            registry=registry,
            sink=FanOutSink(self.latest, self.feed),
            observability=observability,
            acks=_Acks(self),
        )
        self.intensity = RestartIntensity(max_restarts=10, window_s=60.0)
        self.unhealthy_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- bridging paho's threads and the post's loop -------------------------------------

    def from_thread(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine on the post's loop from another thread and wait for it."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(DELIVER_TIMEOUT_S)

    def _deliver(self, actor: str, decisions: list[Decision]) -> None:
        self.from_thread(self.dispatcher.apply(actor, decisions))

    def _publish(self, topic: str, payload: bytes) -> None:
        self.edge.session.client.publish(topic, payload, qos=1)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.dispatcher.load()
        await asyncio.to_thread(self.feed.start)
        await asyncio.to_thread(self.edge.start)
        self._tasks = [
            asyncio.create_task(self._every(self._tick_interval_s(), self._tick), name="tick"),
            asyncio.create_task(self._every(LEDGER_INTERVAL_S, self._ledger), name="ledger"),
            asyncio.create_task(
                self._every(SUPERVISION_INTERVAL_S, self._supervise), name="supervise"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.edge.stop)
        # What the edge accepted is applied (bounded), then the pump stops.
        await asyncio.to_thread(self.feed.stop)

    def _tick_interval_s(self) -> float:
        return max(1.0, 60.0 / self.clock.speed)

    @staticmethod
    async def _every(interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        # A loop never raises: a failed round is logged and the next one comes.
        while True:
            try:
                await step()
            except Exception:
                log.exception("post loop step failed")
            await asyncio.sleep(interval_s)

    async def _tick(self) -> None:
        await asyncio.to_thread(self.feed.tick)

    async def _ledger(self) -> None:
        await self.dispatcher.run_ledger()
        for override in self.dispatcher.expired_overrides():
            key: ActorKey = (override.asset_class, override.group)
            await self._resume_policy(key)

    async def _resume_policy(self, key: ActorKey) -> None:
        """An override ended: the group's policy puts it back where it wants it."""
        [commands] = await asyncio.to_thread(
            self.pool.call_many, [Call(key, "desired_commands", (self.clock.now_ms(),))], 10.0
        )
        if isinstance(commands, BaseException):
            log.warning("cannot resume %s after its override: %s", actor_name(*key), commands)
            return
        await self.dispatcher.apply(actor_name(*key), list(commands))

    async def _supervise(self) -> None:
        troubled = await asyncio.to_thread(self.feed.check_health, SUPERVISION_INTERVAL_S)
        troubled += await asyncio.to_thread(self.feed.recover_down)
        now = time.monotonic()
        for key in troubled:
            if self.intensity.record(now) is Verdict.ESCALATE and not self.unhealthy_reason:
                self.unhealthy_reason = (
                    f"actors keep failing ({actor_name(*key)} last): more than "
                    f"{self.intensity.max_restarts} restarts in {self.intensity.window_s:g} s"
                )
                log.error("post %s is unhealthy: %s", self.name, self.unhealthy_reason)

    def health(self) -> Health:
        down = self.feed.stats().down
        if self.unhealthy_reason:
            return Health(False, self.unhealthy_reason)
        if down:
            return Health(False, f"actors down: {', '.join(down[:5])}")
        if not self.edge.stats().connected:
            return Health(False, "not connected to the MQTT broker")
        return Health(True, "")
