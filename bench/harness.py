"""Shared set-up for the benchmarks that run a real post in-process.

A post here is what `citypost post` runs, minus its gRPC services: its own
Ray head on loopback, one actor per (asset class, group), and `post.post.Post`
(edge, actor feed, dispatcher and their loops) on the caller's asyncio loop,
as `tests/integration/test_post.py` assembles it. Everything started here is
stopped by `PostRig.close()`, by PID, also after a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from actors import ray_api
from actors.catalog import ALSO_FEEDS, actor_name
from actors.ray_pool import RayActorPool
from bridges import chirpstack
from bridges.downlink_gate import DownlinkGate
from bridges.edge import Edge
from bridges.registry import DeviceRegistry
from citypost.clock import SimClock
from citypost.config import Config, load_config
from citypost.observability import Observability, setup_observability
from cluster.ray_local import LocalRay
from post.post import Post
from protos.citypost.v1 import telemetry_pb2

READY_TIMEOUT_S = 300.0  # 59 actor workers starting on 2 cores take a while


def bench_config(
    *, broker_port: int, scale: float, post_name: str, run_dir: Path, **overrides: Any
) -> Config:
    """The post's config: the city at `scale`, the bench's broker, a name of its own."""
    return load_config(
        overrides={
            "city.scale": scale,
            "mqtt.host": "127.0.0.1",
            "mqtt.port": broker_port,
            "post.name": post_name,
            "run_dir": str(run_dir),
            # The bench's own plain broker (bench.ingest_actors measures TLS apart).
            "security.tls": False,
            **overrides,
        }
    )


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` flags as config overrides; a VALUE that parses as JSON is taken as such."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def expected_applied(registry: DeviceRegistry, topics: Sequence[str]) -> dict[str, int]:
    """Readings each actor applies once every uplink on `topics` went through.

    As `_expected_applied` in tests/integration/test_post.py, but per uplink:
    a reading goes to its own (class, group) actor and, per ALSO_FEEDS, to every
    actor of the classes it also feeds (buses to traffic signals).
    """
    groups = registry.groups()
    by_class: dict[int, list[str]] = {}
    for cls, group in groups:
        by_class.setdefault(cls, []).append(actor_name(cls, group))
    expected = {actor_name(*key): 0 for key in groups}
    per_device = Counter(chirpstack.parse_topic(topic).dev_eui for topic in topics)
    for dev_eui, n in per_device.items():
        device = registry.get(dev_eui)
        if device is None:
            continue  # not in the registry: a dead letter, applied by no actor
        expected[actor_name(device.asset_class, device.group)] += n
        for cls in ALSO_FEEDS.get(device.asset_class, ()):
            for name in by_class.get(cls, ()):
                expected[name] += n
    return expected


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of latencies given in seconds, in ms (nearest rank)."""
    ordered = sorted(samples_s)
    if not ordered:
        return {}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {
        "n": len(ordered),
        "p50_ms": round(rank(50) * 1000, 2),
        "p90_ms": round(rank(90) * 1000, 2),
        "p99_ms": round(rank(99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2),
    }


class _Discard:
    """Sink of the throwaway edge that only opens the post's MQTT session."""

    def __init__(self) -> None:
        self.received = 0

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        self.received += len(batch)

    def submit_acks(self, acks: Sequence[chirpstack.Ack | chirpstack.LogEvent]) -> None:
        pass


def open_post_session(config: Config, registry: DeviceRegistry) -> None:
    """Create the post edge's persistent session and subscriptions, then leave.

    The broker then queues uplinks for the post until its edge connects, so a
    backlog can be published before the post starts draining it.
    """
    sink = _Discard()
    obs = setup_observability(config.observability)
    # The same config, hence the same client id and subscriptions as the post's edge.
    edge = Edge(config=config, registry=registry, sink=sink, observability=obs, acks=sink)
    try:
        edge.start()
        edge.stop()
    finally:
        obs.shutdown()
    if sink.received:
        raise RuntimeError(f"the post's session already had {sink.received} uplinks queued")


class PostRig:
    """A Ray head with the city's actors, and posts built on them, torn down as one."""

    def __init__(self, run_dir: Path, *, name: str) -> None:
        self.head = LocalRay(run_dir / "ray", name=name)
        self.run_dir = run_dir
        self._gate: DownlinkGate | None = None
        self.name = name
        self.pool: RayActorPool | None = None
        self.spawn_s = 0.0
        self._posts: list[tuple[Post, Observability]] = []
        self._started: set[int] = set()
        self._executor: ThreadPoolExecutor | None = None

    async def start_ray(self) -> None:
        """Start the head and connect this process as its driver (on the main thread)."""
        self._use_new_executor()
        await asyncio.to_thread(self.head.start)
        ray_api.connect(self.head.address, namespace=self.name, env=self.head.env_for_driver())

    def _use_new_executor(self) -> ThreadPoolExecutor | None:
        old, self._executor = self._executor, ThreadPoolExecutor(thread_name_prefix="bench")
        asyncio.get_running_loop().set_default_executor(self._executor)
        return old

    async def _join_post_threads(self) -> None:
        """Wait for the steps a stopped post left running in worker threads.

        Post.stop cancels its loops, but a step already in `asyncio.to_thread`
        (a health round, a tick) runs on and calls Ray; after `ray.shutdown` such
        a call would start a local Ray instance of its own (Ray's auto-init).
        """
        old = self._use_new_executor()
        if old is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, old.shutdown, True)

    def spawn_actors(self, registry: DeviceRegistry) -> RayActorPool:
        """Fresh actors for every group (killing those of an earlier trial), all ready."""
        self.kill_actors()
        start = time.perf_counter()
        pool = RayActorPool.spawn(registry.groups())
        self.pool = pool
        # Wait for every constructor, so a post's start measures none of it.
        hosts = pool.hosts()
        ready = ray_api.call_many([(h, "__ray_ready__", ()) for h in hosts], READY_TIMEOUT_S)
        failed = [h.name for h, r in zip(hosts, ready, strict=True) if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"actors not ready within {READY_TIMEOUT_S:.0f} s: {failed[:5]}")
        self.spawn_s = time.perf_counter() - start
        return pool

    def kill_actors(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None or not ray_api.is_connected():
            return
        for host in pool.hosts():
            ray_api.kill(host)

    def make_post(self, config: Config, registry: DeviceRegistry, clock: SimClock) -> Post:
        """A post on the current actors, not started yet (`start_post`)."""
        if self.pool is None:
            raise RuntimeError("spawn_actors first")
        obs = setup_observability(config.observability, post=config.post.name)
        post = Post(
            config,
            name=config.post.name,
            registry=registry,
            pool=self.pool,
            clock=clock,
            observability=obs,
        )
        self._posts.append((post, obs))
        return post

    async def start_post(self, post: Post) -> None:
        """Start the post, and the downlink gate its downlinks go through (once)."""
        if self._gate is None:
            self._gate = DownlinkGate(config=post.config, state_path=self.run_dir / "gate.json")
            await asyncio.to_thread(self._gate.start)
        self._started.add(id(post))
        await post.start()

    async def stop_posts(self) -> None:
        posts, self._posts = self._posts, []
        for post, obs in posts:
            if id(post) in self._started:  # its loops and its edge run
                self._started.discard(id(post))
                await post.stop()
            # The broker must not keep queueing for a post that will not come back.
            await asyncio.to_thread(post.edge.session.stop, end_session=True)
            obs.shutdown()
        await self._join_post_threads()

    async def close(self) -> None:
        """Stop every post, the actors, the driver and the head; safe after any failure."""
        try:
            await self.stop_posts()
        finally:
            try:
                await asyncio.to_thread(self.kill_actors)
                await self._join_post_threads()
            finally:
                ray_api.disconnect()
                await asyncio.to_thread(self.head.stop)
                if self._gate is not None:
                    await asyncio.to_thread(self._gate.stop, end_session=True)
                    self._gate = None
