"""Command round trip: an operator's command to the device's ack, at idle and under load.

A real post (its own Ray head, the city's actors, edge, dispatcher) and the
simulated network server (in a child process, as it would be a separate
machine) on one broker started here. K unicast commands go one at a time
through `post.dispatcher.issue_command` (a street lamp each, rotating), timed
from the call until the ledger record turns ACKED, observed by wrapping the
dispatcher's `on_acks` in this benchmark. Baseline in the same run,
interleaved sample by sample: a raw round trip on the same broker and
network server: publish the same `command/down` a command makes (QoS 1) and
wait for the network server's `event/ack`, with a plain paho client.

Two phases: idle (the network server answers downlinks, publishes no
uplinks), then under telemetry load: its scheduler runs with the city's
uplink intervals shortened (`--interval-factor`) so that the rate cap
(`--uplinks-per-s`) binds, while the simulated clock keeps the demo's speed:
a fast clock would race through dusk and dawn and the lamps' group commands
of those moments would swamp the measure. Prints one JSON object.

    python -m bench.command [--commands K] [--load-commands K] [--uplinks-per-s R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.harness import PostRig, bench_config, parse_overrides, percentiles_ms
from bridges import chirpstack
from bridges.downlinks import downlinks
from bridges.edge import ACK_FILTER
from bridges.mqtt_session import tcp_no_delay
from bridges.registry import Device, DeviceRegistry
from citypost.clock import SimClock
from citypost.config import load_config
from cluster.mosquitto_local import LocalMosquitto
from failover.control_state import ledger_key
from fleet.network_server import NetworkServer
from fleet.population import build_city
from post.post import Post
from protos.citypost.v1 import assets_pb2, command_pb2, control_state_pb2

TARGET_IDLE_P99_MS = 50.0
# Daylight in Dijon for the whole run at the demo's speed: the lighting policy
# holds its lamps off and issues nothing of its own.
SIM_START = datetime(2026, 6, 21, 7, 0, tzinfo=UTC)
ACK_TIMEOUT_S = 30.0
WARMUP = 10
RAMP_S = 5.0

# --- the network server, in a child process -------------------------------------------------


def _network_server_child(
    conn: multiprocessing.connection.Connection,
    overrides: dict[str, Any],
    wall_origin: float,
    uplinks: bool,
) -> None:
    """Run the simulated network server until told to stop; answer stats requests."""
    config = load_config(overrides=overrides)
    city = build_city(config.city)
    # The post's clock, rebuilt here from wall time (the same in both processes).
    elapsed = (time.time() - wall_origin) * config.sim.speed
    start = config.sim.start_or_now() + timedelta(seconds=elapsed)
    clock = SimClock(start, config.sim.speed)
    server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
    try:
        server.start(uplinks=uplinks)
        conn.send("ready")
        while conn.recv() != "stop":
            conn.send(asdict(server.stats()))
    finally:
        server.stop()
    conn.send(asdict(server.stats()))


class NetworkServerProcess:
    """The child process above, started and stopped by PID."""

    def __init__(self, overrides: dict[str, Any], wall_origin: float, *, uplinks: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=_network_server_child,
            args=(child, overrides, wall_origin, uplinks),
            name="bench-network-server",
            daemon=True,
        )

    def start(self, timeout_s: float = 60.0) -> None:
        self._proc.start()
        if not self._conn.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"the network server did not start within {timeout_s:.0f} s")
        self._conn.recv()

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        reply: dict[str, Any] = self._conn.recv()
        return reply

    def stop(self) -> dict[str, Any]:
        self._conn.send("stop")
        final: dict[str, Any] = self._conn.recv() if self._conn.poll(30) else {}
        self._proc.join(15)
        self.kill()
        return final

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


# --- the two round trips ---------------------------------------------------------------------


class RawRoundTrip:
    """A plain paho client: publish a command's `command/down`, wait for its `event/ack`."""

    def __init__(self, port: int, registry: DeviceRegistry) -> None:
        self._registry = registry
        self._waiting: dict[str, threading.Event] = {}
        self._arrived: dict[str, float] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bench-rtt-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_message = self._on_message
        # Without TCP_NODELAY a publish that follows a PUBACK waits for the broker's
        # delayed ACK (~40 ms): the baseline is the round trip without that stall.
        self._client.on_socket_open = tcp_no_delay
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe(ACK_FILTER, qos=1)
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("the raw round-trip client could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            ack = chirpstack.parse_ack(bytes(message.payload))
        except Exception:
            return  # not an ack this client is waiting for
        with self._lock:
            event = self._waiting.pop(ack.queue_item_id, None)
            if event is not None:
                self._arrived[ack.queue_item_id] = now
        if event is not None:
            event.set()

    def sample(self, command: command_pb2.Command) -> float | None:
        """Seconds from publish to the device's ack; None past the timeout."""
        [downlink] = downlinks(command, self._registry)
        event = threading.Event()
        with self._lock:
            self._waiting[command.command_id] = event
        start = time.perf_counter()
        self._client.publish(downlink.topic, downlink.payload, qos=1)
        if not event.wait(ACK_TIMEOUT_S):
            with self._lock:
                self._waiting.pop(command.command_id, None)
            return None
        with self._lock:
            return self._arrived.pop(command.command_id) - start

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class AckWatch:
    """Wraps the dispatcher's `on_acks`: the moment a watched command's record is ACKED."""

    def __init__(self, post: Post) -> None:
        self._post = post
        self._inner = post.dispatcher.on_acks
        self.waiting: dict[str, asyncio.Future[float]] = {}
        post.dispatcher.on_acks = self.on_acks  # type: ignore[method-assign]

    async def on_acks(self, acks: Sequence[chirpstack.Ack | chirpstack.LogEvent]) -> None:
        await self._inner(acks)
        now = time.perf_counter()
        for ack in acks:
            if not isinstance(ack, chirpstack.Ack):
                continue  # a log about a frame: not the device's ack
            future = self.waiting.get(ack.queue_item_id)
            if future is None or future.done():
                continue
            record = await self._post.state.get(
                ledger_key(ack.queue_item_id), control_state_pb2.CommandRecord
            )
            if record is not None and record.status == command_pb2.ACKED:
                future.set_result(now)

    async def sample(self, command: command_pb2.Command) -> float | None:
        """Seconds from `issue_command` to the ledger's ACKED; None past the timeout."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[command.command_id] = future
        start = time.perf_counter()
        try:
            await self._post.dispatcher.issue_command(command, issued_by="operator:bench")
            return await asyncio.wait_for(future, ACK_TIMEOUT_S) - start
        except TimeoutError:
            return None
        finally:
            self.waiting.pop(command.command_id, None)


def lamp_command(lamp: Device, i: int, epoch: int) -> command_pb2.Command:
    return command_pb2.Command(
        command_id=str(uuid.uuid4()),
        epoch=epoch,
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(dev_eui=lamp.dev_eui),
        set_brightness=command_pb2.SetBrightness(brightness_pct=30 + i % 60),
    )


async def measure(
    watch: AckWatch,
    raw: RawRoundTrip,
    lamps: Sequence[Device],
    count: int,
    budget_s: float,
    offset: int,
    gap_s: float,
) -> dict[str, Any]:
    """`count` post samples and as many raw ones, interleaved, within `budget_s`.

    A random pause before each post command: an operator's command comes at any
    moment, while one sent right after the previous ack would always land at the
    same phase of the edge's flush timer and measure only its worst case.
    """
    rng = random.Random(offset)
    post_s: list[float] = []
    raw_s: list[float] = []
    lost = {"post": 0, "raw": 0}
    deadline = time.monotonic() + budget_s
    for i in range(offset, offset + count):
        if time.monotonic() > deadline:
            break
        # Raw commands carry epoch 1, the post's: a device fences lower epochs.
        sample = await asyncio.to_thread(raw.sample, lamp_command(lamps[i % len(lamps)], i, 1))
        if sample is None:
            lost["raw"] += 1
        else:
            raw_s.append(sample)
        # A different lamp than the raw one, so neither waits on the other's device.
        lamp = lamps[(i + len(lamps) // 2) % len(lamps)]
        await asyncio.sleep(rng.uniform(0, gap_s))
        sample = await watch.sample(lamp_command(lamp, i, 0))
        if sample is None:
            lost["post"] += 1
        else:
            post_s.append(sample)
    post, base = percentiles_ms(post_s), percentiles_ms(raw_s)
    return {
        "post": post,
        "raw_mqtt": base,
        "timeouts": lost,
        "p50_ratio": round(post["p50_ms"] / base["p50_ms"], 2) if post and base else None,
        "p99_ratio": round(post["p99_ms"] / base["p99_ms"], 2) if post and base else None,
    }


def _load_figures(
    before: dict[str, Any], after: dict[str, Any], post: Post, edge_before: int, seconds: float
) -> dict[str, Any]:
    published = after["uplinks_by_class"]
    earlier = before["uplinks_by_class"]
    sent = sum(published.values()) - sum(earlier.values())
    decoded = post.edge.stats().decoded - edge_before
    return {
        "window_s": round(seconds, 1),
        "fleet_uplinks_per_s": round(sent / seconds),
        "post_decoded_per_s": round(decoded / seconds),
        "fleet_behind_s": round(after["behind_s"], 1),
        "fleet_outstanding": after["outstanding"],
        "post_buffered_events": post.feed.stats().buffered_events,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="citypost-bench-") as tmp:
        broker = LocalMosquitto(Path(tmp) / "mosquitto", persistence=False)
        broker.start()
        rig = PostRig(Path(tmp), name="bench-command")
        servers: list[NetworkServerProcess] = []
        raw: RawRoundTrip | None = None
        try:
            port = broker.port
            sim = {
                "sim.speed": args.speed,
                "sim.start": SIM_START.isoformat(),
                "sim.max_uplinks_per_s": args.uplinks_per_s,
                "sim.interval_factor": args.interval_factor,
                **parse_overrides(args.set),
            }
            config = bench_config(
                broker_port=port,
                scale=args.scale,
                post_name="bench-command",
                run_dir=Path(tmp),
                **sim,
            )
            shared = {
                "city.scale": args.scale,
                "mqtt.host": "127.0.0.1",
                "mqtt.port": port,
                **sim,
            }
            city = build_city(config.city)
            lamps = [d for d in city.devices if d.device.asset_class == assets_pb2.STREET_LAMP]
            lamp_devices = [d.device for d in lamps]
            if len(lamp_devices) < 2:
                raise RuntimeError("the city at this scale has fewer than 2 street lamps")

            await rig.start_ray()
            await asyncio.to_thread(rig.spawn_actors, city.registry)
            wall_origin = time.time()
            clock = SimClock.of(config.sim)
            post = rig.make_post(config, city.registry, clock)
            await rig.start_post(post)
            watch = AckWatch(post)
            raw = RawRoundTrip(port, city.registry)

            idle_server = NetworkServerProcess(shared, wall_origin, uplinks=False)
            servers.append(idle_server)
            await asyncio.to_thread(idle_server.start)
            gap_s = args.max_gap_ms / 1000
            await measure(watch, raw, lamp_devices, WARMUP, args.phase_budget, 0, gap_s)
            idle = await measure(
                watch, raw, lamp_devices, args.commands, args.phase_budget, WARMUP, gap_s
            )
            await asyncio.to_thread(idle_server.stop)

            load_server = NetworkServerProcess(shared, wall_origin, uplinks=True)
            servers.append(load_server)
            await asyncio.to_thread(load_server.start)
            await asyncio.sleep(RAMP_S)
            before = await asyncio.to_thread(load_server.stats)
            edge_before = post.edge.stats().decoded
            started = time.perf_counter()
            load = await measure(
                watch,
                raw,
                lamp_devices,
                args.load_commands,
                args.phase_budget,
                WARMUP + args.commands,
                gap_s,
            )
            after = await asyncio.to_thread(load_server.stats)
            load["telemetry"] = _load_figures(
                before, after, post, edge_before, time.perf_counter() - started
            )
            await asyncio.to_thread(load_server.stop)
            dispatcher = post.dispatcher.stats
            feed = post.feed.stats()
        finally:
            try:
                if raw is not None:
                    raw.close()
                for server in servers:
                    await asyncio.to_thread(server.kill)
                await rig.close()
            finally:
                broker.stop()
    idle_p99 = idle["post"].get("p99_ms")
    return {
        "benchmark": "command",
        "devices": len(city.registry),
        "actors": len(city.registry.groups()),
        "lamps": len(lamp_devices),
        "edge_batch_interval_ms": config.edge.batch_interval_ms,
        "max_gap_ms": args.max_gap_ms,
        "sim": {
            "speed": config.sim.speed,
            "interval_factor": config.sim.interval_factor,
            "max_uplinks_per_s": config.sim.max_uplinks_per_s,
            "demanded_uplinks_per_s": round(
                sum(1 / d.behaviour.interval_s for d in city.devices)
                * config.sim.speed
                / config.sim.interval_factor
            ),
        },
        "idle": idle,
        "under_load": load,
        "post_totals": {
            "commands_issued": dispatcher.commands_issued,
            "downlinks_sent": dispatcher.downlinks_sent,
            "acks": dispatcher.acks,
            "actor_restarts": sum(feed.restarts.values()),
        },
        "targets": {"idle_post_p99_ms": TARGET_IDLE_P99_MS},
        "meets_targets": idle_p99 is not None and idle_p99 < TARGET_IDLE_P99_MS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=200, help="samples at idle")
    parser.add_argument("--load-commands", type=int, default=200, help="samples under load")
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--uplinks-per-s", type=float, default=2_000.0, help="the rate cap")
    parser.add_argument("--speed", type=float, default=60.0, help="simulated clock speed")
    parser.add_argument(
        "--interval-factor",
        type=float,
        default=0.05,
        help="multiplies uplink intervals: small enough that the rate cap binds",
    )
    parser.add_argument(
        "--max-gap-ms",
        type=float,
        default=100.0,
        help="a uniform random pause of up to this before each post command",
    )
    parser.add_argument(
        "--phase-budget", type=float, default=90.0, help="seconds of sampling per phase, at most"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the post, e.g. edge.batch_interval_ms=20",
    )
    args = parser.parse_args(argv)
    if args.commands < 1 or args.load_commands < 1:
        parser.error("--commands and --load-commands must be >= 1")
    # Ray prints its raylet's warnings on stdout: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
