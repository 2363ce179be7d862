"""`citypost demo`: the local stack, the simulated city and two control posts, live.

Starts what the config asks for (a local etcd and mosquitto, or points at
external ones), the downlink gate, two posts (`primary` and `backup`, each
`citypost post` in its own process with its own Ray cluster; one leads, the
other stands by hot), and the simulated network server of the city; shows
what the leading post reports over its PostAdmin API — uplinks per asset
class and their rate, actors, pending commands, dead letters — and each
post's role, until Ctrl-C or the given duration, then stops everything it
started, in reverse order.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from types import FrameType

import grpc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cluster.config import Config
from cluster.etcd_local import LocalEtcd
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import LocalMosquitto
from cluster.post_process import PostProcess
from cluster.sim_clock import SimClock
from fleet.network_server import NetworkServer
from fleet.population import build_city
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc

POST_NAMES = ("primary", "backup")


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start_infrastructure(config: Config, stack: ExitStack) -> tuple[Config, list[str]]:
    """Start local etcd and mosquitto as configured; return the config with their addresses."""
    run_dir = config.run_dir
    endpoints = list(config.etcd.endpoints)
    if config.etcd.mode == "local":
        etcd = LocalEtcd(
            run_dir / "etcd",
            members=config.etcd.members,
            heartbeat_interval_ms=config.etcd.heartbeat_interval_ms,
            election_timeout_ms=config.etcd.election_timeout_ms,
        )
        etcd.start()
        stack.callback(etcd.stop)
        endpoints = list(etcd.endpoints)
    mqtt = config.mqtt
    if mqtt.mode == "local":
        broker = LocalMosquitto(run_dir / "mosquitto", port=mqtt.port, persistence=mqtt.persistence)
        broker.start()
        stack.callback(broker.stop)
        mqtt = mqtt.model_copy(update={"host": broker.host, "port": broker.port})
    resolved = config.model_copy(
        update={
            "mqtt": mqtt,
            "etcd": config.etcd.model_copy(update={"endpoints": tuple(endpoints)}),
        }
    )
    return resolved, endpoints


def _render(
    status: admin_pb2.PostStatus,
    previous: admin_pb2.PostStatus | None,
    elapsed: float,
    devices: dict[str, int],
    header: str,
) -> Group:
    table = Table(title=f"post {status.post} ({status.role}, epoch {status.epoch})")
    table.add_column("asset class")
    table.add_column("devices", justify="right")
    table.add_column("uplinks", justify="right")
    table.add_column("per second", justify="right")
    for name in sorted(devices):
        now = status.uplinks_by_class.get(name, 0)
        before = previous.uplinks_by_class.get(name, 0) if previous else 0
        rate = (now - before) / elapsed if previous and elapsed > 0 else 0.0
        table.add_row(name, f"{devices[name]:,}", f"{now:,}", f"{rate:,.0f}")
    dead = Table(title="dead letters")
    dead.add_column("reason")
    dead.add_column("count", justify="right")
    for reason, n in sorted(status.dead_letters_by_reason.items()):
        dead.add_row(reason, f"{n:,}")
    if not status.dead_letters_by_reason:
        dead.add_row("(none)", "0")
    down = [a.name for a in status.actors if not a.healthy]
    restarts = sum(a.restarts for a in status.actors)
    health = "healthy" if status.healthy else f"UNHEALTHY: {status.unhealthy_reason}"
    footer = Text(
        f"{len(status.actors)} actors, {len(down)} down, {restarts} restarts; "
        f"{status.commands_pending} commands pending; {health}\n"
        "Ctrl-C stops everything this demo started"
    )
    return Group(Text(header), table, dead, footer)


def _post_configs(config: Config) -> list[Config]:
    """primary and backup: the same city and infrastructure, their own names and ports."""
    port = config.post.grpc_port
    out = []
    for i, name in enumerate(POST_NAMES):
        post = config.post.model_copy(
            update={"name": name, "grpc_port": None if port is None else port + i}
        )
        out.append(config.model_copy(update={"post": post}))
    return out


def _statuses(
    admins: dict[str, admin_pb2_grpc.PostAdminStub],
) -> tuple[list[admin_pb2.PostStatus], str]:
    statuses, roles = [], []
    for name, admin in admins.items():
        try:
            status = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError as error:
            roles.append(f"{name}: no answer ({error.code().name})")
            continue
        statuses.append(status)
        roles.append(f"{name}: {status.role} (epoch {status.epoch})")
    return statuses, ", ".join(roles)


def run_demo(config: Config, *, duration_s: float | None = None) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = config.run_dir.resolve() / f"demo-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # One simulated clock for the city and the post: the same start and speed.
    sim = config.sim.model_copy(update={"start": config.sim.start_or_now()})
    config = config.model_copy(update={"run_dir": run_dir, "sim": sim})
    console = Console()
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as stack:
            console.print(f"citypost demo: run dir {run_dir}")
            config, endpoints = start_infrastructure(config, stack)
            console.print(
                f"etcd: {', '.join(endpoints)}; mqtt: {config.mqtt.host}:{config.mqtt.port}"
            )
            city = build_city(config.city)
            # Before any post: the broker queues the posts' downlinks for the gate only
            # once its session exists.
            gate = GateRunner(config).start()
            stack.callback(gate.stop)
            console.print(
                f"city: {config.city.name}, {len(city.registry):,} devices; starting two posts"
            )
            posts = [PostProcess(c, run_dir).launch() for c in _post_configs(config)]
            for post in posts:
                stack.callback(post.stop)
            for post in posts:
                post.wait_ready()
                console.print(
                    f"post {post.name}: gRPC on {post.address} "
                    f"(log: {run_dir}/post-{post.name}.log)"
                )
            clock = SimClock(sim.start_or_now(), sim.speed)
            network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
            network_server.start()
            stack.callback(network_server.stop)
            admins = {}
            for post in posts:
                channel = grpc.insecure_channel(post.address)
                stack.callback(channel.close)
                admins[post.name] = admin_pb2_grpc.PostAdminStub(channel)
            devices = city.registry.count_by_class()
            started = last = time.monotonic()
            previous: admin_pb2.PostStatus | None = None
            with Live(console=console, refresh_per_second=1, transient=False) as live:
                while duration_s is None or time.monotonic() - started < duration_s:
                    time.sleep(1.0)
                    now = time.monotonic()
                    statuses, roles = _statuses(admins)
                    status = next((s for s in statuses if s.role == "leader"), None)
                    if status is None:
                        live.update(Text(f"no post leads right now: {roles}"))
                        continue
                    header = (
                        f"simulated time {clock.now():%Y-%m-%d %H:%M} (x{sim.speed:g}); "
                        f"{roles}; gate forwarded {gate.stats().forwarded:,}, "
                        f"dropped {gate.stats().dropped:,}"
                    )
                    live.update(_render(status, previous, now - last, devices, header))
                    previous, last = status, now
        console.line()
    except KeyboardInterrupt:
        console.print("\ncitypost demo: stopping")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    console.print("citypost demo: everything stopped")
    return 0
