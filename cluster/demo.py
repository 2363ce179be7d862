"""`citypost demo`: the local stack, the simulated city and the edge, live.

Starts what the config asks for (a local etcd and mosquitto, or points at
external ones), the simulated network server of the city, and the edge with an
in-memory sink; shows rates per asset class and dead letters until Ctrl-C or
the given duration, then stops everything it started, in reverse order.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from types import FrameType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bridges.edge import Edge, EdgeStats
from bridges.sinks import MemorySink
from cluster.config import Config
from cluster.etcd_local import LocalEtcd
from cluster.mosquitto_local import LocalMosquitto
from cluster.observability import setup_observability
from cluster.sim_clock import SimClock
from fleet.network_server import NetworkServer
from fleet.population import build_city


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
    stats: EdgeStats,
    previous: EdgeStats | None,
    elapsed: float,
    devices: dict[str, int],
    header: str,
) -> Group:
    table = Table(title="citypost edge: uplinks decoded by asset class")
    table.add_column("asset class")
    table.add_column("devices", justify="right")
    table.add_column("decoded", justify="right")
    table.add_column("per second", justify="right")
    for name in sorted(devices):
        now = stats.decoded_by_class.get(name, 0)
        before = previous.decoded_by_class.get(name, 0) if previous else 0
        rate = (now - before) / elapsed if previous and elapsed > 0 else 0.0
        table.add_row(name, f"{devices[name]:,}", f"{now:,}", f"{rate:,.0f}")
    dead = Table(title="dead letters by reason")
    dead.add_column("reason")
    dead.add_column("count", justify="right")
    for reason, n in sorted(stats.dead_letters_by_reason.items()):
        dead.add_row(reason, f"{n:,}")
    if not stats.dead_letters_by_reason:
        dead.add_row("(none)", "0")
    status = "connected" if stats.connected else "RECONNECTING"
    footer = Text(
        f"broker {status}; pending {stats.pending}; batches {stats.batches:,}\n"
        "Ctrl-C stops everything this demo started"
    )
    return Group(Text(header), table, dead, footer)


def run_demo(config: Config, *, duration_s: float | None = None) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    config = config.model_copy(update={"run_dir": config.run_dir.resolve() / f"demo-{stamp}"})
    config.run_dir.mkdir(parents=True, exist_ok=True)
    console = Console()
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as stack:
            console.print(f"citypost demo: run dir {config.run_dir}")
            config, endpoints = start_infrastructure(config, stack)
            console.print(
                f"etcd: {', '.join(endpoints)}; mqtt: {config.mqtt.host}:{config.mqtt.port}"
            )
            city = build_city(config.city)
            console.print(f"city: {config.city.name}, {len(city.registry):,} devices")
            observability = setup_observability(config.observability, post="demo")
            stack.callback(observability.shutdown)
            sink = MemorySink()
            edge = Edge(
                config=config, registry=city.registry, sink=sink, observability=observability
            )
            edge.start()
            stack.callback(edge.stop)
            clock = SimClock(config.sim.start_or_now(), config.sim.speed)
            network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
            network_server.start()
            stack.callback(network_server.stop)
            devices = city.registry.count_by_class()
            started = time.monotonic()
            previous: EdgeStats | None = None
            last = started
            with Live(console=console, refresh_per_second=1, transient=False) as live:
                while duration_s is None or time.monotonic() - started < duration_s:
                    time.sleep(1.0)
                    now = time.monotonic()
                    stats = edge.stats()
                    header = f"simulated time {clock.now():%Y-%m-%d %H:%M} (x{config.sim.speed:g})"
                    live.update(_render(stats, previous, now - last, devices, header))
                    previous, last = stats, now
        console.line()
    except KeyboardInterrupt:
        console.print("\ncitypost demo: stopping")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    console.print("citypost demo: everything stopped")
    return 0
