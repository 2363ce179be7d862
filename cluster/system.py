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

With `supervise=True` (the demo) the system restarts what dies on its own, as
a service manager would: a post, an etcd member, the broker. Tests and the
drill's own system leave it off, since their faults heal themselves.
`run_dir/system.json` (the manifest) says what runs where, with its PIDs, so
a drill can be pointed at a running system (`citypost drill run --against`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aetcd
import grpc

from citypost.clock import SimClock
from citypost.config import Config
from cluster.etcd_local import EtcdSecurity, LocalEtcd
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import BrokerSecurity, LocalMosquitto
from cluster.ports import free_ports
from cluster.post_process import PostProcess
from cluster.web_process import WebProcess
from console.session import TokenSource
from failover.election import leader_key
from failover.etcd_client import etcd_client
from failover.leadership import LeaderValue
from fleet.network_server import NetworkServer
from fleet.pacing import fitting_speed
from fleet.population import City, build_city
from security import identities
from security.apps import AppCredential, apps_path, ensure_demo_app
from security.demo_accounts import ensure_demo_accounts
from security.grpc_tls import secure_channel_factory
from security.pki import Kind
from security.pki_store import PkiStore
from security.policy import DEFAULT_ROLES

POST_NAMES = ("primary", "backup")
MANIFEST_NAME = "system.json"
SUPERVISE_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderNow:
    """The leader key as read from etcd: who leads, where, under which epoch."""

    name: str
    address: str
    epoch: int


def post_configs(config: Config) -> list[Config]:
    """primary and backup: the same city and infrastructure, their own names and ports
    (chosen now when unset, so a restarted post keeps its addresses)."""
    n = len(POST_NAMES)
    port = config.post.grpc_port
    chosen = [port + i for i in range(n)] if port else free_ports(n)
    # The citizens' listeners too: the app keeps its address across a post's restart.
    citizens = config.post.citizen_port
    chosen_citizens = [citizens + i for i in range(n)] if citizens else free_ports(n)
    out = []
    for name, grpc_port, citizen_port in zip(POST_NAMES, chosen, chosen_citizens, strict=True):
        post = config.post.model_copy(
            update={"name": name, "grpc_port": grpc_port, "citizen_port": citizen_port}
        )
        out.append(config.model_copy(update={"post": post}))
    return out


# Given a post's name and the etcd endpoints, the endpoints that post must use: the
# drills put a link they control between each post and etcd this way.
EtcdRoute = Callable[[str, Sequence[str]], Sequence[str]]


def fit_speed(config: Config, city: City) -> tuple[Config, str]:
    """The config at a speed whose uplinks the simulated city can publish, and what was
    changed (empty if nothing); ConfigError for an asked speed that cannot be kept."""
    sim = config.sim
    demand = city.uplinks_per_sim_s(sim.interval_factor)
    speed = fitting_speed(
        sim.speed, demand, sim.max_uplinks_per_s, explicit="speed" in sim.model_fields_set
    )
    if speed == sim.speed:
        return config, ""
    note = (
        f"x{sim.speed:g} would ask {sim.speed * demand:,.0f} uplinks/s of the simulated city, "
        f"more than it may publish ({sim.max_uplinks_per_s:,.0f}/s): running at x{speed:g}"
    )
    return config.model_copy(update={"sim": sim.model_copy(update={"speed": speed})}), note


class CitySystem:
    def __init__(
        self,
        config: Config,
        run_dir: Path,
        *,
        uplinks: bool = True,
        etcd_route: EtcdRoute | None = None,
        supervise: bool = False,
    ) -> None:
        # One simulated clock for the city and the posts: the same start, speed and origin.
        sim = config.sim.model_copy(
            update={
                "start": config.sim.start_or_now(),
                "origin": config.sim.origin or datetime.now(UTC),
            }
        )
        self.config = config.model_copy(update={"run_dir": run_dir, "sim": sim})
        self.run_dir = run_dir
        self._uplinks = uplinks
        self._etcd_route = etcd_route
        self._supervise = supervise
        self._stopping = threading.Event()
        self._lock = threading.RLock()  # one restart at a time (supervisor, faults, stop)
        self._supervisor: threading.Thread | None = None
        self.restarts: dict[str, int] = {}  # what the supervisor restarted, by name
        self._stack = ExitStack()
        self.etcd: LocalEtcd | None = None
        self.broker: LocalMosquitto | None = None
        self.gate: GateRunner | None = None
        self.posts: dict[str, PostProcess] = {}
        self._post_configs: dict[str, Config] = {}
        self.network_server: NetworkServer | None = None
        self.city: City | None = None
        self.pki: PkiStore | None = None
        self.passwords: dict[str, str] = {}  # the demo accounts': user -> password
        self.citizen_app: AppCredential | None = None  # the demo's citizen app, with TLS
        self.web: WebProcess | None = None  # the web console's gateway, if config.web.enabled

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] | None = None) -> CitySystem:
        """Start everything; `progress` hears each step as it begins (the demo shows them)."""
        say = progress or (lambda _: None)
        try:
            self._start_infrastructure(say)
            say("building the city")
            self.city = build_city(self.config.city)
            self._fit_speed(say)
            clock = SimClock.of(self.config.sim)
            self.network_server = NetworkServer(
                self.city,
                self.config.mqtt,
                clock,
                self.config.sim,
                self.config.city.name,
                radio=self.config.radio,
                tls=identities.tls_identity(
                    self.config, Kind.NETWORK_SERVER, identities.NETWORK_SERVER
                ),
            )
            self._stack.callback(self.network_server.stop)
            if self.config.radio.network_server_api is None:
                # The simulated network server's API: the gate's multicast path.
                port = self.network_server.serve_api()
                radio = self.config.radio.model_copy(
                    update={"network_server_api": f"127.0.0.1:{port}"}
                )
                self.config = self.config.model_copy(update={"radio": radio})
            say(f"starting the downlink gate ({len(self.city.registry):,} devices)")
            self.gate = GateRunner(self.config).start()
            self._stack.callback(self.gate.stop)
            # One after the other: two Ray heads starting at once on a small machine
            # can starve each other past Ray's own start-up deadlines.
            for config in post_configs(self.config):
                config = self._routed(config)
                self._post_configs[config.post.name] = config
                self.posts[config.post.name] = PostProcess(config, self.run_dir).launch()
                self._stack.callback(self._stop_post, config.post.name)
                self.posts[config.post.name].wait_ready(say)
            if self.config.web.enabled:
                say("starting the web console")
                self.web = WebProcess(self.config, self.run_dir, self.addresses()).start()
                self._stack.callback(self.web.stop)
            say("starting the city's devices")
            self.network_server.start(uplinks=self._uplinks)
            self.write_manifest()
            if self._supervise:
                self._supervisor = threading.Thread(
                    target=self._supervise_loop, name="system-supervisor", daemon=True
                )
                self._supervisor.start()
                self._stack.callback(self._stop_supervisor)
        except BaseException:
            self.stop()
            raise
        return self

    def _fit_speed(self, say: Callable[[str], None]) -> None:
        assert self.city is not None
        self.config, note = fit_speed(self.config, self.city)
        if note:
            say(note)

    def _start_infrastructure(self, say: Callable[[str], None]) -> None:
        config = self.config
        if config.security.tls:
            say(f"preparing the city's certificates ({config.pki_dir}) and accounts")
            self.pki = identities.prepare(config, POST_NAMES)
            roles = config.security.roles or DEFAULT_ROLES
            self.passwords = ensure_demo_accounts(config.accounts_file, roles)
            self.citizen_app = ensure_demo_app(apps_path(config))
        endpoints = list(config.etcd.endpoints)
        if config.etcd.mode == "local":
            say(f"starting etcd ({config.etcd.members} members)")
            self.etcd = LocalEtcd(
                self.run_dir / "etcd",
                members=config.etcd.members,
                heartbeat_interval_ms=config.etcd.heartbeat_interval_ms,
                election_timeout_ms=config.etcd.election_timeout_ms,
                security=None if self.pki is None else EtcdSecurity(self.pki),
            )
            self.etcd.start()
            self._stack.callback(self.etcd.stop)
            endpoints = list(self.etcd.endpoints)
        mqtt = config.mqtt
        if mqtt.mode == "local":
            say("starting the MQTT broker")
            self.broker = LocalMosquitto(
                self.run_dir / "mosquitto",
                port=mqtt.port,
                persistence=mqtt.persistence,
                security=None if self.pki is None else BrokerSecurity(self.pki, config.city.name),
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

    def channel_factory(self) -> Callable[[str], grpc.Channel]:
        """gRPC channels to the posts for observers (tests, benchmarks, the demo's
        screen): the chaos tools' certificate, whose machine role reads and hands over."""
        tls = identities.tls_identity(self.config, Kind.CHAOS, identities.CHAOS)
        return grpc.insecure_channel if tls is None else secure_channel_factory(tls)

    def operator(self, user: str = "supervisor") -> TokenSource | None:
        """A logged-in demo operator's tokens (None in a city without TLS)."""
        if not self.config.security.tls:
            return None
        return TokenSource.logged_in(
            self.channel_factory(), self.addresses(), user, self.passwords[user]
        )

    def channel(self, address: str) -> grpc.Channel:
        return self.channel_factory()(address)

    def etcd_client(self) -> aetcd.Client:
        """A client for observers (tests, benchmarks): the chaos tools' read-only identity."""
        tls = identities.tls_identity(self.config, Kind.CHAOS, identities.CHAOS)
        return etcd_client(self.endpoints, tls=tls)

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
        with self._lock:
            self._stop_post(name)
            post = PostProcess(self._post_configs[name], self.run_dir).launch()
            self.posts[name] = post
            post.wait_ready()
            self.write_manifest()
            return post

    # --- the manifest and the supervisor -------------------------------------------------

    def manifest(self) -> dict[str, object]:
        """What runs where: enough for a drill to find and act on this running system."""
        etcd = self.etcd
        broker = self.broker
        return {
            "owner_pid": os.getpid(),
            "written_at_ms": time.time_ns() // 1_000_000,
            "supervised": self._supervise,
            "config": self.config.model_dump(mode="json"),
            "etcd_members": []
            if etcd is None
            else [
                {"index": m.index, "pid": pid, "endpoint": m.endpoint}
                for m, pid in zip(etcd.members, etcd.pids, strict=True)
            ],
            "broker_pid": None if broker is None else broker.pid,
            "posts": {
                name: {"address": post.address, "pid": post.process.pid}
                for name, post in self.posts.items()
            },
        }

    def write_manifest(self) -> None:
        path = self.run_dir / MANIFEST_NAME
        temp = path.with_suffix(".json.tmp")
        temp.write_text(json.dumps(self.manifest(), indent=2) + "\n", encoding="utf-8")
        temp.replace(path)  # readers never see half a manifest

    def _stop_supervisor(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=120.0)

    def _supervise_loop(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            try:
                self._restart_the_dead()
            except Exception:  # a failed restart is tried again on the next round
                log.exception("supervisor: a restart failed; trying again")

    def _restart_the_dead(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            changed = False
            if self.etcd is not None:
                for member in self.etcd.members:
                    if not self.etcd.member_alive(member.index):
                        log.warning("supervisor: etcd member %d died; restarting it", member.index)
                        self.etcd.restart_member(member.index, wait_healthy=False)
                        self._count(f"etcd-{member.index}")
                        changed = True
            if self.broker is not None and not self.broker.alive:
                log.warning("supervisor: mosquitto died; restarting it")
                self.broker.restart()
                self._count("mosquitto")
                changed = True
            elif self.broker is not None and self.pki is not None and self.pki.refresh_crl():
                self.broker.reload()  # mosquitto reads its CRL at start and on reload only
                log.info("supervisor: the CRL was signed again; the broker reloaded")
            elif self.broker is not None and self.broker.reload_if_pki_changed():
                log.info("supervisor: certificates were issued or revoked; the broker reloaded")
            for name, post in list(self.posts.items()):
                if not post.process.alive and not self._stopping.is_set():
                    log.warning("supervisor: post %s died; restarting it", name)
                    self.restart_post(name)
                    self._count(f"post-{name}")
                    changed = True
            if changed:
                self.write_manifest()

    def _count(self, what: str) -> None:
        self.restarts[what] = self.restarts.get(what, 0) + 1

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
