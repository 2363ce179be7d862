"""Ingest benchmark: how much of a raw paho QoS 1 subscriber's rate the edge keeps.

In one run, on one broker started here, with the same uplinks of the simulated
city: (1) pure decoding through the router, no I/O, on one core; (2) a raw paho
subscriber draining N queued QoS 1 uplinks; (3) the edge draining the same N
into an in-memory sink, acknowledging each after the sink took it. Both
drains start from a broker that already holds the whole backlog for the
subscriber's persistent session, so the publisher's speed is out of the
measure. Prints one JSON object; ratios are what to compare across machines.

    python -m bench.ingest [--uplinks N] [--scale S]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridges.edge import UPLINK_FILTER, Edge
from bridges.mqtt_session import use_tls
from bridges.router import UplinkRouter
from citypost.config import Config, load_config
from citypost.observability import setup_observability
from cluster.mosquitto_local import LocalMosquitto
from fleet.population import City, build_city
from fleet.uplinks import UplinkFactory
from protos.citypost.v1 import telemetry_pb2
from security.pki_store import Identity

Uplink = tuple[str, bytes]


def city_uplinks(city: City, n: int, seed: int = 1) -> list[Uplink]:
    """n uplinks from the city's devices, built as its network server builds them."""
    factory = UplinkFactory(city, city.name, random.Random(seed))
    ts = datetime(2026, 11, 25, 18, 0, tzinfo=UTC).timestamp()
    out: list[Uplink] = []
    for i in range(n):
        topic, payload, _ = factory.uplink(i % len(city.devices), ts + i * 0.01)
        out.append((topic, payload))
    return out


def decode_rate(config: Config, city: City, uplinks: Sequence[Uplink], repeats: int = 3) -> float:
    router = UplinkRouter(city.registry, config.edge, lambda: 0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for topic, payload in uplinks:
            router.route(topic, payload)
        rates.append(len(uplinks) / (time.perf_counter() - start))
    return max(rates)


def _session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return props


def _end_session() -> Properties:
    # Sessions must not outlive their trial: the broker would queue later trials for them.
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    return props


def publish_all(port: int, uplinks: Sequence[Uplink], *, tls: Identity | None = None) -> None:
    """Publish every uplink (QoS 1) and wait for the broker to take them all; `tls`: as
    a network server of the city (the only kind its ACL lets publish device events)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if tls is not None:
        use_tls(client, tls)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in uplinks]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def raw_drain_rate(port: int, uplinks: Sequence[Uplink]) -> float:
    """A plain paho subscriber (auto-acknowledging) draining the backlog."""
    n = len(uplinks)
    received = 0
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received == n:
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=True, properties=_session_props())
    client.subscribe(UPLINK_FILTER, qos=1)
    client.loop(1)
    client.loop(1)
    client.disconnect()
    publish_all(port, uplinks)
    start = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=_session_props())
    client.loop_start()
    if not done.wait(120):
        raise RuntimeError(f"raw subscriber got {received} of {n}")
    elapsed = time.perf_counter() - start
    client.disconnect(properties=_end_session())
    client.loop_stop()
    return n / elapsed


class _CountingSink:
    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = threading.Event()

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        self.count += len(batch)
        if self.count >= self.n:
            self.done.set()


def edge_drain_rate(config: Config, city: City, uplinks: Sequence[Uplink]) -> float:
    observability = setup_observability(config.observability)
    sink = _CountingSink(len(uplinks))
    # First run: create the persistent session and its subscription, then leave.
    edge = Edge(config=config, registry=city.registry, sink=sink, observability=observability)
    edge.start()
    edge.stop()
    publish_all(config.mqtt.port or 0, uplinks)
    edge = Edge(config=config, registry=city.registry, sink=sink, observability=observability)
    start = time.perf_counter()
    edge.start()
    if not sink.done.wait(120):
        raise RuntimeError(f"edge delivered {sink.count} of {len(uplinks)}")
    elapsed = time.perf_counter() - start
    dead = edge.stats().dead_letters_by_reason
    edge.stop(end_session=True)
    observability.shutdown()
    if dead:
        raise RuntimeError(f"benchmark uplinks went to dead letters: {dead}")
    return len(uplinks) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uplinks", type=int, default=40_000)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="citypost-bench-") as tmp:
        broker = LocalMosquitto(
            Path(tmp) / "mosquitto", max_queued_messages=args.uplinks * 2, persistence=False
        )
        broker.start()
        try:
            config = load_config(
                overrides={
                    "city.scale": args.scale,
                    "mqtt.port": broker.port,
                    "mqtt.host": "127.0.0.1",
                    "security.tls": False,  # the bench's own plain broker
                }
            )
            city = build_city(config.city)
            uplinks = city_uplinks(city, args.uplinks)
            decode = decode_rate(config, city, uplinks)
            raw, edge = [], []
            for trial in range(args.trials):
                # Alternate so drift on a noisy machine hits both alike.
                raw.append(raw_drain_rate(broker.port, uplinks))
                trial_config = config.model_copy(
                    update={"post": config.post.model_copy(update={"name": f"bench{trial}"})}
                )
                edge.append(edge_drain_rate(trial_config, city, uplinks))
        finally:
            broker.stop()
    raw_rate, edge_rate = statistics.median(raw), statistics.median(edge)
    result = {
        "benchmark": "ingest",
        "uplinks": args.uplinks,
        "devices": len(city.registry),
        "trials": args.trials,
        "raw_paho_qos1_per_s": round(raw_rate),
        "edge_per_s": round(edge_rate),
        "edge_to_raw_ratio": round(edge_rate / raw_rate, 3),
        "decode_only_per_s": round(decode),
        "raw_trials_per_s": [round(r) for r in raw],
        "edge_trials_per_s": [round(r) for r in edge],
        "targets": {"edge_to_raw_ratio": 0.7, "decode_only_per_s": 50_000},
    }
    result["meets_targets"] = (
        result["edge_to_raw_ratio"] >= 0.7 and result["decode_only_per_s"] >= 50_000
    )
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
