"""The whole simulated city with its two posts, as one unit: the demo runs it,
and so do the failover tests, the failover benchmark and the drills.

`CitySystem` starts, in order: the infrastructure (a local etcd and
mosquitto, or external ones), the downlink gate (before any post: the broker
queues the posts' downlinks for the gate only once its session exists), the
posts `primary` and `backup` (each `citypost post` in its own process and
session, with its own Ray cluster), and the simulated network server, whose
execution log is the independent record of what devices did. `stop()` stops
what was started, in reverse, also after a failed start.

Faults act on a post's whole session (the post, its Ray head, raylet and
workers): `crash_post` is SIGKILL of all of it, `freeze_post`/`thaw_post`
SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aetcd

from cluster.config import Config
from cluster.etcd_local import LocalEtcd, etcd_client
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import LocalMosquitto
from cluster.ports import free_ports
from cluster.post_process import PostProcess
from cluster.sim_clock import SimClock
from failover.election import leader_key
from failover.leadership import LeaderValue
from fleet.network_server import NetworkServer
from fleet.population import City, build_city

POST_NAMES = ("primary", "backup")


@dataclass(frozen=True)
class LeaderNow:
    """The leader key as read from etcd: who leads, where, under which epoch."""

    name: str
    address: str
    epoch: int


def post_configs(config: Config) -> list[Config]:
    """primary and backup: the same city and infrastructure, their own names and ports
    (chosen now when unset, so a restarted post keeps its address)."""
    port = config.post.grpc_port
    chosen = [port + i for i in range(len(POST_NAMES))] if port else free_ports(len(POST_NAMES))
    out = []
    for name, grpc_port in zip(POST_NAMES, chosen, strict=True):
        post = config.post.model_copy(update={"name": name, "grpc_port": grpc_port})
        out.append(config.model_copy(update={"post": post}))
    return out


# Given a post's name and the etcd endpoints, the endpoints that post must use: the
# drills put a link they control between each post and etcd this way.
EtcdRoute = Callable[[str, Sequence[str]], Sequence[str]]


class CitySystem:
    def __init__(
        self,
        config: Config,
        run_dir: Path,
        *,
        uplinks: bool = True,
        etcd_route: EtcdRoute | None = None,
    ) -> None:
        # One simulated clock for the city and the posts: the same start and speed.
        sim = config.sim.model_copy(update={"start": config.sim.start_or_now()})
        self.config = config.model_copy(update={"run_dir": run_dir, "sim": sim})
        self.run_dir = run_dir
        self._uplinks = uplinks
        self._etcd_route = etcd_route
        self._stack = ExitStack()
        self.etcd: LocalEtcd | None = None
        self.broker: LocalMosquitto | None = None
        self.gate: GateRunner | None = None
        self.posts: dict[str, PostProcess] = {}
        self._post_configs: dict[str, Config] = {}
        self.network_server: NetworkServer | None = None
        self.city: City | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> CitySystem:
        try:
            self._start_infrastructure()
            self.city = build_city(self.config.city)
            self.gate = GateRunner(self.config).start()
            self._stack.callback(self.gate.stop)
            # One after the other: two Ray heads starting at once on a small machine
            # can starve each other past Ray's own start-up deadlines.
            for config in post_configs(self.config):
                config = self._routed(config)
                self._post_configs[config.post.name] = config
                self.posts[config.post.name] = PostProcess(config, self.run_dir).launch()
                self._stack.callback(self._stop_post, config.post.name)
                self.posts[config.post.name].wait_ready()
            clock = SimClock(self.config.sim.start_or_now(), self.config.sim.speed)
            self.network_server = NetworkServer(
                self.city, self.config.mqtt, clock, self.config.sim, self.config.city.name
            )
            self.network_server.start(uplinks=self._uplinks)
            self._stack.callback(self.network_server.stop)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_infrastructure(self) -> None:
        config = self.config
        endpoints = list(config.etcd.endpoints)
        if config.etcd.mode == "local":
            self.etcd = LocalEtcd(
                self.run_dir / "etcd",
                members=config.etcd.members,
                heartbeat_interval_ms=config.etcd.heartbeat_interval_ms,
                election_timeout_ms=config.etcd.election_timeout_ms,
            )
            self.etcd.start()
            self._stack.callback(self.etcd.stop)
            endpoints = list(self.etcd.endpoints)
        mqtt = config.mqtt
        if mqtt.mode == "local":
            self.broker = LocalMosquitto(
                self.run_dir / "mosquitto", port=mqtt.port, persistence=mqtt.persistence
            )
            self.broker.start()
            self._stack.callback(self.broker.stop)
            mqtt = mqtt.model_copy(update={"host": self.broker.host, "port": self.broker.port})
        self.config = config.model_copy(
            update={
                "mqtt": mqtt,
                "etcd": config.etcd.model_copy(update={"endpoints": tuple(endpoints)}),
            }
        )

    def _routed(self, config: Config) -> Config:
        if self._etcd_route is None:
            return config
        endpoints = tuple(self._etcd_route(config.post.name, self.endpoints))
        return config.model_copy(
            update={"etcd": config.etcd.model_copy(update={"endpoints": endpoints})}
        )

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> CitySystem:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the posts -----------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return list(self.config.etcd.endpoints)

    def addresses(self) -> list[str]:
        return [post.address for post in self.posts.values()]

    def etcd_client(self) -> aetcd.Client:
        return etcd_client(self.endpoints)

    async def leader(self, client: aetcd.Client) -> LeaderNow | None:
        got = await client.get(leader_key(self.config.city.name))
        if got is None:
            return None
        value = LeaderValue.from_json(got.value)
        return LeaderNow(value.name, value.address, int(got.create_revision))

    def crash_post(self, name: str) -> int:
        """SIGKILL of the post's whole session; returns how many processes it hit."""
        return self.posts[name].process.signal_session(signal.SIGKILL)

    def freeze_post(self, name: str) -> int:
        return self.posts[name].process.signal_session(signal.SIGSTOP)

    def thaw_post(self, name: str) -> int:
        return self.posts[name].process.signal_session(signal.SIGCONT)

    def restart_post(self, name: str) -> PostProcess:
        """Stop what is left of the post (its session swept), start it again, wait ready."""
        self._stop_post(name)
        post = PostProcess(self._post_configs[name], self.run_dir).launch()
        self.posts[name] = post
        return post.wait_ready()

    def _stop_post(self, name: str) -> None:
        post = self.posts.get(name)
        if post is None:
            return
        process = post.process
        if process.pid is None:
            return
        process.signal_session(signal.SIGCONT)  # a frozen post must be able to stop
        post.stop()
        # A crashed post's Ray workers may outlive it in their own groups.
        deadline = time.monotonic() + 10.0
        while process.signal_session(signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.1)
        post.remove_ray_temp_dir()
