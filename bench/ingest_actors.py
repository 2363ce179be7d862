"""Ingest through the actors: a real post's drain rate against raw paho QoS 1, same run.

In one run, on one broker started here, with the same N uplinks of the
simulated city: (1) a raw paho subscriber draining them from a queued
backlog (`bench.ingest.raw_drain_rate`); (2) a real post (its own Ray head,
one actor per (class, group), the edge feeding them in batches, decisions
carried out by the dispatcher) draining the same backlog, timed from its edge's
MQTT connection (as the raw subscriber is from its own; the post's start-up
before it is reported apart) until the actors have applied every reading (bus readings also
go to the traffic-signal actors, so more readings are applied than uplinks
arrive; the rate counts uplinks). Actors are spawned fresh and ready before
each trial, so their start-up is out of the measure. Prints one JSON object.

With `--tls` each trial also runs (3) the same post against a second broker
that takes only the city's certificates, with its ACL (a PKI made in the
run's temp dir): the cost of TLS on ingest, as the ratio of (3) to (2) in the
same run (target: within 10 %).

    python -m bench.ingest_actors [--uplinks N] [--scale S] [--trials T] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    PostRig,
    bench_config,
    expected_applied,
    open_post_session,
    parse_overrides,
)
from bench.ingest import Uplink, city_uplinks, publish_all, raw_drain_rate
from citypost.clock import SimClock
from citypost.config import Config
from cluster.mosquitto_local import BrokerSecurity, LocalMosquitto
from fleet.population import City, build_city
from security import identities
from security.identities import tls_identity
from security.pki import Kind, Principal
from security.pki_store import PkiStore

TARGET_RATIO = 0.5
TLS_MAX_COST = 0.10  # the post's ingest over TLS within 10 % of it in plaintext
# city_uplinks stamps its uplinks from here: the post's clock starts there too.
UPLINKS_AT = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
POLL_S = 0.01


async def post_drain(
    rig: PostRig,
    config: Config,
    city: City,
    uplinks: Sequence[Uplink],
    expected: dict[str, int],
    timeout_s: float,
) -> dict[str, Any]:
    """One trial: fresh actors, a backlog for the post's session, then the post drains it."""
    await asyncio.to_thread(rig.spawn_actors, city.registry)
    post = rig.make_post(config, city.registry, SimClock(UPLINKS_AT, 1.0))
    await asyncio.to_thread(open_post_session, config, city.registry)
    publisher = tls_identity(config, Kind.NETWORK_SERVER, identities.NETWORK_SERVER)
    await asyncio.to_thread(publish_all, config.mqtt.port or 0, uplinks, tls=publisher)
    # Restore the fresh actors before the clock starts (post.start does it again,
    # then only a health round): the drain is what is measured.
    await asyncio.to_thread(post.feed.start)
    total = sum(expected.values())
    # Timed from the edge's MQTT connection, as the raw subscriber is timed from its
    # own: the post's start-up before it (election, state load, actor restore) is not
    # ingest, and is reported apart.
    began = time.perf_counter()
    starting = asyncio.create_task(rig.start_post(post))
    while not post.edge.session.connects and not starting.done():
        await asyncio.sleep(0.001)
    start = time.perf_counter()
    await starting
    deadline = start + timeout_s
    while True:
        applied = post.feed.stats().applied_by_actor
        if applied == expected:
            break
        if time.perf_counter() > deadline or sum(applied.values()) > total:
            wrong = {k: (v, expected[k]) for k, v in applied.items() if v != expected[k]}
            raise RuntimeError(
                f"after {time.perf_counter() - start:.0f} s the actors applied "
                f"{sum(applied.values())} of {total} readings; (applied, expected) of "
                f"some: {dict(list(wrong.items())[:5])}"
            )
        await asyncio.sleep(POLL_S)
    elapsed = time.perf_counter() - start
    dead = post.edge.stats().dead_letters_by_reason
    feed = post.feed.stats()
    dispatcher = post.dispatcher.stats
    await rig.stop_posts()
    if dead:
        raise RuntimeError(f"benchmark uplinks went to dead letters: {dead}")
    return {
        "per_s": len(uplinks) / elapsed,
        "seconds": elapsed,
        "start_to_connect_s": start - began,
        "actor_restarts": sum(feed.restarts.values()),
        "commands_issued": dispatcher.commands_issued,
        "actors_spawn_s": rig.spawn_s,
    }


def _secured(base: Config, tmp: Path, trials: int) -> tuple[PkiStore, Config]:
    """The city's PKI in the run's temp dir, with a certificate for each trial's post
    and the publisher, and the post config that uses it."""
    config = base.model_copy(
        update={"security": base.security.model_copy(update={"tls": True, "pki_dir": tmp / "pki"})}
    )
    store = identities.store(config)
    store.init()
    city = config.city.name
    store.ensure(Principal(city, Kind.NETWORK_SERVER, identities.NETWORK_SERVER))
    for trial in range(trials):
        store.ensure(Principal(city, Kind.POST, f"bench-actors-tls{trial}"))
    return store, config


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="citypost-bench-")))
        broker = LocalMosquitto(
            tmp / "mosquitto", max_queued_messages=args.uplinks * 2, persistence=False
        )
        broker.start()
        stack.callback(broker.stop)
        rig = PostRig(tmp, name="bench-ingest")
        try:
            port = broker.port
            base = bench_config(
                broker_port=port,
                scale=args.scale,
                post_name="bench-actors",
                run_dir=Path(tmp),
                **parse_overrides(args.set),
            )
            secure: Config | None = None
            if args.tls:
                store, secure = _secured(base, tmp, args.trials)
                tls_broker = LocalMosquitto(
                    tmp / "mosquitto-tls",
                    max_queued_messages=args.uplinks * 2,
                    persistence=False,
                    security=BrokerSecurity(store, base.city.name),
                )
                tls_broker.start()
                stack.callback(tls_broker.stop)
                secure = secure.model_copy(
                    update={"mqtt": secure.mqtt.model_copy(update={"port": tls_broker.port})}
                )
            city = build_city(base.city)
            uplinks = city_uplinks(city, args.uplinks)
            expected = expected_applied(city.registry, [topic for topic, _ in uplinks])
            await rig.start_ray()
            raw: list[float] = []
            trials: list[dict[str, Any]] = []
            tls_trials: list[dict[str, Any]] = []
            for trial in range(args.trials):
                # Alternate so drift on a noisy machine hits both alike.
                raw.append(await asyncio.to_thread(raw_drain_rate, port, uplinks))
                config = base.model_copy(
                    update={"post": base.post.model_copy(update={"name": f"bench-actors{trial}"})}
                )
                trials.append(await post_drain(rig, config, city, uplinks, expected, args.timeout))
                if secure is not None:
                    post = secure.post.model_copy(update={"name": f"bench-actors-tls{trial}"})
                    tls_config = secure.model_copy(update={"post": post})
                    tls_trials.append(
                        await post_drain(rig, tls_config, city, uplinks, expected, args.timeout)
                    )
        finally:
            await rig.close()
    raw_rate = statistics.median(raw)
    post_rate = statistics.median(t["per_s"] for t in trials)
    ratio = round(post_rate / raw_rate, 3)
    tls: dict[str, Any] = {}
    if tls_trials:
        tls_rate = statistics.median(t["per_s"] for t in tls_trials)
        tls_ratio = tls_rate / post_rate
        tls = {
            "post_over_tls_per_s": round(tls_rate),
            "tls_to_plain_ratio": round(tls_ratio, 3),
            "tls_trials_per_s": [round(t["per_s"]) for t in tls_trials],
            "tls_meets_target": tls_ratio >= 1 - TLS_MAX_COST,
        }
    return {
        "benchmark": "ingest_actors",
        "uplinks": args.uplinks,
        "devices": len(city.registry),
        "actors": len(city.registry.groups()),
        "readings_applied_per_trial": sum(expected.values()),
        "trials": args.trials,
        "raw_paho_qos1_per_s": round(raw_rate),
        "post_through_actors_per_s": round(post_rate),
        "post_to_raw_ratio": ratio,
        "raw_trials_per_s": [round(r) for r in raw],
        "edge_batch_max": base.edge.batch_max,
        "post_trials": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()} for t in trials
        ],
        "targets": {"post_to_raw_ratio": TARGET_RATIO},
        "meets_targets": ratio >= TARGET_RATIO,
        **tls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uplinks", type=int, default=60_000)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--tls", action="store_true", help="also time the post against a TLS broker with ACL"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds a post may take to drain"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the post, e.g. edge.batch_max=2000",
    )
    args = parser.parse_args(argv)
    if args.uplinks < 1 or args.trials < 1:
        parser.error("--uplinks and --trials must be >= 1")
    # Ray prints its raylet's warnings on stdout: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
