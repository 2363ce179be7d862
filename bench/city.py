"""The whole city on this machine: both posts, etcd, the broker and the simulated city,
with the default config, over a stretch of simulated time with a lighting transition.

One `CitySystem` as `make demo` runs it (default scale: the article's 38,702 devices).
The simulated clock is anchored so that the lamps' 23:00 profile change (the group
commands of the night; the lighting policy keeps them away from dusk on purpose) falls
`--transition-after-s` real seconds after the city goes live, whatever the start-up
took. Every second the bench reads both posts' status (gRPC) and the network server's
counters; at the end it stops the city's uplinks, lets the posts drain, and reads the
command ledger and etcd's size.

Prints one JSON object:
- uplinks published by the city vs readings applied by the leader's policies (ratio),
  the lag from the edge's decoding to the policy (p50/p99/max, the post's histogram);
- the longest stretch without a decoded uplink per class (from 1 s samples);
- commands by class and final status, and how long group commands took to converge;
- memory (PSS of each post's process tree) and CPU per post, the machine's load;
- etcd's database size after start-up and at the end, and its growth per simulated hour.
Targets: >= 99.9 % applied, p99 lag < 2 s, no stall > 5 s (or five mean intervals
of a sparse class), every group command converged (ACKED) by its TTL, <= 2 GiB per
post.

    python -m bench.city [--scale 1.0] [--seconds 300] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc

from bench.harness import parse_overrides
from citypost.config import Config, load_config
from cluster.system import CitySystem, fit_speed
from failover.control_state import LEDGER, list_all
from failover.etcd_control_state import EtcdControlState
from failover.etcd_defrag import MemberSize, member_size
from fleet.population import build_city
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, assets_pb2, command_pb2, control_state_pb2
from security import identities
from security.pki import Kind
from security.pki_store import Identity

TARGET_APPLIED = 0.999
TARGET_P99_LAG_MS = 2000
TARGET_STALL_S = 5.0
TARGET_POST_PSS_BYTES = 2 * 2**30
TRANSITION = day_time(23, 0)  # the lighting policy's deep-night profile
TIMEZONE = ZoneInfo("Europe/Paris")
DRAIN_S = 20.0  # after the city stops publishing, for the posts to apply what is queued


@dataclass
class Samples:
    at: list[float] = field(default_factory=list)  # monotonic
    decoded: list[dict[str, int]] = field(default_factory=list)  # the leader's, per class
    pss: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    leaders: set[str] = field(default_factory=set)
    load: list[float] = field(default_factory=list)


def anchored(config: Config, *, startup_allowance_s: float, transition_after_s: float) -> Config:
    """The config at the speed the city will run (see `cluster.system.fit_speed`), its
    clock anchored: 23:00 local falls `startup_allowance_s` + `transition_after_s` real
    seconds from now."""
    config, _ = fit_speed(config, build_city(config.city))
    speed = config.sim.speed
    origin = datetime.now(UTC) + timedelta(seconds=startup_allowance_s)
    local = origin.astimezone(TIMEZONE)
    night = datetime.combine(local.date(), TRANSITION, TIMEZONE)
    start = night - timedelta(seconds=transition_after_s * speed)
    sim = config.sim.model_copy(update={"start": start.astimezone(UTC), "origin": origin})
    return config.model_copy(update={"sim": sim})


def longest_stalls(samples: Samples) -> dict[str, float]:
    """Per class: the longest time between two samples showing new decoded uplinks."""
    stalls: dict[str, float] = {}
    last_new: dict[str, float] = {}
    previous: dict[str, int] = {}
    for at, counts in zip(samples.at, samples.decoded, strict=True):
        for cls, n in counts.items():
            if cls not in previous or n > previous[cls]:
                if cls in last_new:
                    stalls[cls] = max(stalls.get(cls, 0.0), at - last_new[cls])
                last_new[cls] = at
            previous[cls] = n
    end = samples.at[-1] if samples.at else 0.0
    for cls, at in last_new.items():  # silent to the end counts too
        stalls[cls] = max(stalls.get(cls, 0.0), end - at)
    return {cls: round(s, 1) for cls, s in sorted(stalls.items())}


def status_of(stub: Any) -> admin_pb2.PostStatus | None:
    try:
        status: admin_pb2.PostStatus = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    except grpc.RpcError:
        return None
    return status


async def etcd_sizes(endpoints: list[str], tls: Identity | None) -> list[MemberSize]:
    return [await member_size(endpoint, tls=tls) for endpoint in endpoints]


def etcd_db_bytes(endpoints: list[str], tls: Identity | None) -> int:
    """The largest database of the members (they hold the same data)."""
    return max(m.db_size for m in asyncio.run(etcd_sizes(endpoints, tls)))


def etcd_in_use_bytes(endpoints: list[str], tls: Identity | None) -> int:
    """What the live pages of the largest member hold: what retention bounds (the file
    itself keeps its freed pages until a defragmentation)."""
    return max(m.in_use for m in asyncio.run(etcd_sizes(endpoints, tls)))


ETCD_SAMPLE_EVERY = 30  # seconds between samples of etcd's live size


async def ledger(
    endpoints: list[str], city: str, tls: Identity | None
) -> list[control_state_pb2.CommandRecord]:
    state = EtcdControlState.from_endpoints(endpoints, city, tls=tls)
    try:
        return [e.value for e in await list_all(state, LEDGER, control_state_pb2.CommandRecord)]
    finally:
        await state.close()


def commands_summary(
    records: list[control_state_pb2.CommandRecord], since_ms: int
) -> dict[str, Any]:
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    group_s: list[float] = []
    groups = Counter[str]()
    for r in records:
        if r.created_at_ms < since_ms:
            continue
        cls = assets_pb2.AssetClass.Name(r.command.asset_class).lower()
        status = command_pb2.CommandStatus.Name(r.status)
        by_class[cls][status] += 1
        if r.multicast:
            groups[status] += 1
            if r.status == command_pb2.ACKED:
                group_s.append((r.finished_at_ms - r.created_at_ms) / 1000)
    group_s.sort()
    return {
        "by_class": {cls: dict(sorted(c.items())) for cls, c in sorted(by_class.items())},
        "group_commands": dict(sorted(groups.items())),
        "group_converged_s": {
            "n": len(group_s),
            "p50": group_s[len(group_s) // 2] if group_s else None,
            "max": group_s[-1] if group_s else None,
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {"city.scale": args.scale, **parse_overrides(args.set)}
    with tempfile.TemporaryDirectory(prefix="bench-city-") as tmp:
        overrides["run_dir"] = tmp
        overrides.setdefault("post.grpc_port", None)
        config = anchored(
            load_config(overrides=overrides),
            startup_allowance_s=args.startup_allowance_s,
            transition_after_s=args.transition_after_s,
        )
        system = CitySystem(config, Path(tmp) / "run")
        began = time.monotonic()
        try:
            system.start(lambda step: print(f"bench.city: {step}", file=sys.stderr))
            return observe(system, args, startup_s=time.monotonic() - began)
        finally:
            system.stop()


def observe(system: CitySystem, args: argparse.Namespace, *, startup_s: float) -> dict[str, Any]:
    assert system.network_server is not None and system.city is not None
    config = system.config
    endpoints = list(system.endpoints)
    tls = identities.tls_identity(config, Kind.CHAOS, identities.CHAOS)
    channels = {name: system.channel(p.address) for name, p in system.posts.items()}
    stubs = {name: admin_pb2_grpc.PostAdminStub(ch) for name, ch in channels.items()}
    try:
        live_ms = int(time.time() * 1000)
        db_start = etcd_db_bytes(endpoints, tls)
        sim_start = system.network_server.clock.now_ts()
        samples = Samples()
        leader = ""
        began = time.monotonic()
        end = began + args.seconds
        in_use: list[tuple[float, int]] = []
        while time.monotonic() < end:
            time.sleep(1.0)
            if len(samples.load) % ETCD_SAMPLE_EVERY == 0:
                sim_h = (system.network_server.clock.now_ts() - sim_start) / 3600
                in_use.append((round(sim_h, 2), etcd_in_use_bytes(endpoints, tls)))
            statuses = {name: status_of(stub) for name, stub in stubs.items()}
            for name, status in statuses.items():
                if status is None:
                    continue
                samples.pss[name].append(status.memory_pss_bytes)
                samples.cpu[name].append(status.cpu_cores)
                if status.role == "leader":
                    leader = name
                    samples.leaders.add(name)
                    samples.at.append(time.monotonic())
                    samples.decoded.append(dict(status.uplinks_by_class))
            samples.load.append(os.getloadavg()[0])
        sim_end = system.network_server.clock.now_ts()
        at_end = status_of(stubs[leader]) if leader else None  # before the drain's silence
        system.network_server.stop_uplinks()  # no more uplinks: let the posts drain
        city_stats = system.network_server.stats()
        published = city_stats.uplinks
        applied = 0
        drain_end = time.monotonic() + DRAIN_S
        final: admin_pb2.PostStatus | None = None
        while time.monotonic() < drain_end:
            final = status_of(stubs[leader]) if leader else None
            if final is not None and final.readings_applied >= published:
                break
            time.sleep(1.0)
        if final is not None:
            applied = final.readings_applied
        records = asyncio.run(ledger(endpoints, config.city.name, tls))
        db_end = etcd_db_bytes(endpoints, tls)
    finally:
        for channel in channels.values():
            channel.close()
    sim_hours = max(1e-9, (sim_end - sim_start) / 3600)
    # The leader's own measure (its edge, per flush); the 1 s samples of this process
    # are kept beside it: they also count this process's own pauses.
    stalls = (
        {c: round(g, 1) for c, g in sorted(at_end.longest_gap_s_by_class.items())}
        if at_end is not None
        else {}
    )
    sampled_stalls = longest_stalls(samples)
    # A sparse class (a few dozen devices at a small scale) is silent between uplinks by
    # nature: a stall is judged against five of its mean intervals, at least 5 s.
    allowed = {
        cls: max(TARGET_STALL_S, 5 * args.seconds / n) if n else TARGET_STALL_S
        for cls, n in city_stats.uplinks_by_class.items()
    }
    commands = commands_summary(records, live_ms)
    pss_max = {name: max(samples.pss[name], default=0) for name in stubs}
    posts = {
        name: {
            "pss_gib_max": round(pss_max[name] / 2**30, 3),
            "cpu_cores_mean": round(sum(c) / len(c), 3) if (c := samples.cpu[name]) else None,
        }
        for name in stubs
    }
    lag = (
        {
            "p50": final.apply_lag_p50_ms,
            "p99": final.apply_lag_p99_ms,
            "max": final.apply_lag_max_ms,
        }
        if final is not None
        else {}
    )
    ratio = applied / published if published else 0.0
    checks = {
        "applied": ratio >= TARGET_APPLIED,
        "p99_lag": bool(lag) and lag["p99"] < TARGET_P99_LAG_MS,
        "stall": all(s <= allowed.get(cls, TARGET_STALL_S) for cls, s in stalls.items()),
        "group_commands_converged": set(commands["group_commands"]) <= {"ACKED"},
        "post_memory": all(0 < pss <= TARGET_POST_PSS_BYTES for pss in pss_max.values()),
    }
    return {
        "scale": config.city.scale,
        "devices": len(system.city.registry),
        "speed": config.sim.speed,
        "startup_s": round(startup_s, 1),
        "observed_s": args.seconds,
        "simulated_hours": round(sim_hours, 2),
        "uplinks": {
            "published": published,
            "applied_by_leader": applied,
            "ratio": round(ratio, 5),
            "per_s": round(published / args.seconds, 1),
            "lag_ms": lag,
        },
        "longest_stall_s": stalls,
        "longest_stall_s_sampled": sampled_stalls,
        "stall_allowed_s": {cls: round(a, 1) for cls, a in sorted(allowed.items())},
        "commands": commands,
        "posts": posts,
        "leaders_seen": sorted(samples.leaders),
        "load_avg_1m": {
            "mean": round(sum(samples.load) / len(samples.load), 2) if samples.load else None,
            "max": max(samples.load, default=None),
        },
        "etcd": {
            "db_bytes_after_start": db_start,
            "db_bytes_end": db_end,
            "growth_bytes_per_sim_hour": round((db_end - db_start) / sim_hours),
            # (simulated hours since live, bytes in use): flat once retention takes
            # out as much as the city adds.
            "in_use_samples": in_use,
        },
        "targets": {
            "applied_ratio": TARGET_APPLIED,
            "p99_lag_ms": TARGET_P99_LAG_MS,
            "stall_s": TARGET_STALL_S,
            "post_pss_gib": TARGET_POST_PSS_BYTES / 2**30,
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=300.0, help="real seconds observed")
    parser.add_argument(
        "--startup-allowance-s", type=float, default=120.0, help="real seconds the start may take"
    )
    parser.add_argument(
        "--transition-after-s",
        type=float,
        default=60.0,
        help="real seconds from the clock's origin to 23:00 local",
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
