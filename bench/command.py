"""Command round trip on the whole city: an operator's command to the device's ack,
on the secured city and, in the same run, on the same city without security.

Each city is a `CitySystem` as `make demo` runs it: a 3-member etcd, the
broker, the downlink gate, the posts `primary` and `backup` (each its own
process and Ray cluster) and the simulated network server (in this process),
its clock in daylight so that the lighting policy issues nothing of its own.
The secured city is the default one (`security.tls`): mutual TLS to the posts,
etcd and the broker, commands signed for the gate, and an operator logged in
(`urban-supervision`, the demo's password) whose bearer token every call
carries. The plain one (`security.tls=false`, skipped with `--no-plain`) is
the baseline: the ratio of the two is what TLS and tokens cost.

The operator sends unicast lamp commands one at a time through the console's
client (`SendCommand` to the leader), each after a random pause: a command
comes at any moment, and one sent right after the previous ack would always
land at the same phase of the edge's flush timer. A sample runs from the call
until the command's record shows ACKED on a `WatchEvents` stream from the
leader, opened with the same credentials: what an operator's screen sees.

Two phases per city: under load (the city publishing `--uplinks-per-s`, its
uplink intervals shortened to that rate at the demo's clock speed; skipped
with `--load-commands 0`), then its uplinks stop, the posts drain, and idle.
Prints one JSON object.

    python -m bench.command [--commands K] [--load-commands K] [--scale S] [--no-plain]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.city import status_of
from bench.harness import parse_overrides, percentiles_ms
from citypost.config import Config, load_config
from cluster.system import CitySystem
from console.client import CallFailedError, PostClient, PostUnreachableError
from fleet.pacing import SPEED_HEADROOM
from fleet.population import build_city
from protos.citypost.v1 import admin_pb2_grpc, assets_pb2, command_pb2, operator_pb2

TARGET_IDLE_P99_MS = 50.0
# Daylight in Dijon for the whole run at the demo's speed: the lighting policy
# holds its lamps off and issues nothing of its own.
SIM_START = datetime(2026, 6, 21, 7, 0, tzinfo=UTC)
USER = "urban-supervision"  # a demo operator who may command the lamps
ACK_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0
WARMUP = 10
RAMP_S = 5.0
DRAIN_S = 30.0  # after the city stops publishing, for the leader to apply what is queued


def city_config(args: argparse.Namespace, run_dir: Path, *, tls: bool) -> Config:
    """The city's config: `--scale`, daylight, security on or off, and with a load phase
    its uplink intervals shortened so that the city publishes `--uplinks-per-s` at
    `--speed` (under a cap just above it: the clock's speed is kept)."""
    overrides: dict[str, Any] = {
        "city.scale": args.scale,
        "sim.speed": args.speed,
        "sim.start": SIM_START.isoformat(),
        "run_dir": str(run_dir),
        "post.grpc_port": None,
        **parse_overrides(args.set),
        "security.tls": tls,
    }
    if args.load_commands:
        config = load_config(overrides=overrides)
        demand = build_city(config.city).uplinks_per_sim_s()
        overrides["sim.interval_factor"] = demand * config.sim.speed / args.uplinks_per_s
        overrides["sim.max_uplinks_per_s"] = args.uplinks_per_s / SPEED_HEADROOM * 1.01
    return load_config(overrides=overrides)


def lamp_command(dev_eui: str, i: int) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(dev_eui=dev_eui),
        set_brightness=command_pb2.SetBrightness(brightness_pct=30 + i % 60),
    )


class AckedWatch:
    """The lamps' events from one post (`WatchEvents`) on a thread: when each command's
    record first showed ACKED, and the post's own span of it (created to acked, wall
    ms). `close` ends the stream."""

    def __init__(self, client: PostClient) -> None:
        self._client = client
        self._stream = client.watch(
            operator_pb2.WatchEventsRequest(asset_classes=[assets_pb2.STREET_LAMP])
        )
        self._acked: dict[str, tuple[float, int]] = {}
        self._cond = threading.Condition()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                now = time.perf_counter()
                if event.WhichOneof("kind") != "command":
                    continue
                record = event.command
                if record.status != command_pb2.ACKED:
                    continue
                in_post_ms = record.acked_at_ms - record.created_at_ms
                with self._cond:
                    self._acked.setdefault(record.command.command_id, (now, in_post_ms))
                    self._cond.notify_all()
        except (CallFailedError, PostUnreachableError) as error:
            self.error = str(error)

    def acked_at(self, command_id: str, timeout_s: float) -> tuple[float, int] | None:
        """The perf_counter instant the command was seen ACKED and the post's span of it;
        None past the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while command_id not in self._acked:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._acked.pop(command_id)

    def close(self) -> None:
        self._client.close()  # cancels the stream: the generator ends
        self._thread.join(10)


class Operator:
    """Sends one command at a time to the leader and times it to its ACKED event."""

    def __init__(self, system: CitySystem, token: Callable[[], str] | None) -> None:
        def client(posts: Sequence[str]) -> PostClient:
            return PostClient(
                posts,
                operator=f"op-{USER}",
                timeout_s=CALL_TIMEOUT_S,
                channel_factory=system.channel_factory(),
                token=token,
            )

        self._client = client(system.addresses())
        self.send(lamp_command(lamps_of(system)[0], 0))  # finds the leader
        leader = self._client.leader
        assert leader is not None
        self.leader = leader
        self._watch = AckedWatch(client([leader]))

    def send(self, command: command_pb2.Command) -> str:
        request = operator_pb2.SendCommandRequest(
            idempotency_key=uuid.uuid4().hex, command=command, reason="command benchmark"
        )
        record = self._client.write("SendCommand", request)
        return str(record.command.command_id)

    def sample(self, command: command_pb2.Command) -> tuple[float, float | None, float | None]:
        """Seconds to the SendCommand reply, to the ACKED event (None: none came), and
        from the record's creation to its ack in the post's own clock."""
        start = time.perf_counter()
        command_id = self.send(command)
        replied = time.perf_counter() - start
        acked = self._watch.acked_at(command_id, ACK_TIMEOUT_S)
        if acked is None:
            return replied, None, None
        return replied, acked[0] - start, acked[1] / 1000

    @property
    def watch_error(self) -> str | None:
        return self._watch.error

    def close(self) -> None:
        self._watch.close()
        self._client.close()


def lamps_of(system: CitySystem) -> list[str]:
    assert system.city is not None
    return [
        d.device.dev_eui
        for d in system.city.devices
        if d.device.asset_class == assets_pb2.STREET_LAMP
    ]


def measure(
    operator: Operator, lamps: Sequence[str], count: int, budget_s: float, offset: int, gap_s: float
) -> dict[str, Any]:
    """`count` samples within `budget_s`, each after a uniform random pause of up to `gap_s`."""
    rng = random.Random(offset)
    acked_s: list[float] = []
    replied_s: list[float] = []
    in_post_s: list[float] = []
    timeouts = failed = 0
    deadline = time.monotonic() + budget_s
    for i in range(offset, offset + count):
        if time.monotonic() > deadline:
            break
        time.sleep(rng.uniform(0, gap_s))
        try:
            replied, acked, in_post = operator.sample(lamp_command(lamps[i % len(lamps)], i))
        except (CallFailedError, PostUnreachableError):
            failed += 1
            continue
        replied_s.append(replied)
        if acked is None or in_post is None:
            timeouts += 1
        else:
            acked_s.append(acked)
            in_post_s.append(in_post)
    return {
        "command_to_ack": percentiles_ms(acked_s),
        "send_command_reply": percentiles_ms(replied_s),
        # The record's created_at to acked_at, whole ms of the post's wall clock: the
        # rest of command_to_ack is the call in and the watch stream out.
        "in_post_created_to_acked": percentiles_ms(in_post_s),
        "timeouts": timeouts,
        "failed": failed,
    }


def drain(system: CitySystem, leader: str) -> dict[str, Any]:
    """Stop the city's uplinks; wait (at most DRAIN_S) until the leader applied them."""
    assert system.network_server is not None
    system.network_server.stop_uplinks()
    published = system.network_server.stats().uplinks
    channel = system.channel(leader)
    try:
        stub = admin_pb2_grpc.PostAdminStub(channel)
        began = time.monotonic()
        applied = 0
        while time.monotonic() - began < DRAIN_S:
            status = status_of(stub)
            applied = status.readings_applied if status is not None else applied
            if applied >= published:
                break
            time.sleep(0.5)
        return {"published": published, "applied": applied, "s": round(time.monotonic() - began, 1)}
    finally:
        channel.close()


def run_city(args: argparse.Namespace, *, tls: bool) -> dict[str, Any]:
    """One city, started, measured (under load, then idle) and stopped."""
    with tempfile.TemporaryDirectory(prefix="citypost-bench-command-") as tmp:
        config = city_config(args, Path(tmp), tls=tls)
        system = CitySystem(config, Path(tmp) / "run", uplinks=args.load_commands > 0)
        began = time.monotonic()
        operator: Operator | None = None
        try:
            system.start(lambda step: print(f"bench.command: {step}", file=sys.stderr))
            startup_s = time.monotonic() - began
            token = system.operator(USER)  # None without TLS: no authorization either
            operator = Operator(system, token)
            lamps = lamps_of(system)
            gap_s = args.max_gap_ms / 1000
            result: dict[str, Any] = {
                "tls": system.config.security.tls,
                "bearer_token": token is not None,
                "startup_s": round(startup_s, 1),
                "devices": len(system.city.registry) if system.city is not None else 0,
                "lamps": len(lamps),
                "leader": operator.leader,
                "speed": system.config.sim.speed,
            }
            if args.load_commands:
                result["under_load"] = load_phase(system, operator, lamps, args, gap_s)
                result["drain"] = drain(system, operator.leader)
            measure(operator, lamps, WARMUP, args.phase_budget, 0, gap_s)
            result["idle"] = measure(
                operator, lamps, args.commands, args.phase_budget, WARMUP, gap_s
            )
            result["watch_error"] = operator.watch_error
            return result
        finally:
            if operator is not None:
                operator.close()
            system.stop()


def load_phase(
    system: CitySystem,
    operator: Operator,
    lamps: Sequence[str],
    args: argparse.Namespace,
    gap_s: float,
) -> dict[str, Any]:
    assert system.network_server is not None
    time.sleep(RAMP_S)
    before = system.network_server.stats()
    started = time.perf_counter()
    offset = WARMUP + args.commands
    phase = measure(operator, lamps, args.load_commands, args.phase_budget, offset, gap_s)
    seconds = time.perf_counter() - started
    after = system.network_server.stats()
    phase["telemetry"] = {
        "window_s": round(seconds, 1),
        "fleet_uplinks_per_s": round((after.uplinks - before.uplinks) / seconds),
        "fleet_behind_s": round(after.behind_s, 1),
        "fleet_outstanding": after.outstanding,
        "interval_factor": round(system.config.sim.interval_factor, 4),
    }
    return phase


def ratios(secured: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Secured ÷ plain, per phase, of the command-to-ack p50 and p99 (None where a side
    has no samples)."""
    out: dict[str, Any] = {}
    for phase in ("idle", "under_load"):
        if phase not in secured or phase not in plain:
            continue
        a, b = secured[phase]["command_to_ack"], plain[phase]["command_to_ack"]
        out[phase] = {
            key: round(a[f"{key}_ms"] / b[f"{key}_ms"], 2) if a and b else None
            for key in ("p50", "p99")
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=200, help="samples at idle")
    parser.add_argument(
        "--load-commands", type=int, default=200, help="samples under load (0: no load phase)"
    )
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument(
        "--uplinks-per-s", type=float, default=2_000.0, help="the city's rate under load"
    )
    parser.add_argument("--speed", type=float, default=60.0, help="simulated clock speed")
    parser.add_argument(
        "--max-gap-ms",
        type=float,
        default=100.0,
        help="a uniform random pause of up to this before each command",
    )
    parser.add_argument(
        "--phase-budget", type=float, default=90.0, help="seconds of sampling per phase, at most"
    )
    parser.add_argument(
        "--plain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the same city without TLS and tokens, for the ratio",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for both cities, e.g. edge.batch_interval_ms=20",
    )
    args = parser.parse_args(argv)
    if args.commands < 1 or args.load_commands < 0:
        parser.error("--commands must be >= 1 and --load-commands >= 0")
    # Ray prints its raylet's warnings on stdout: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        secured = run_city(args, tls=True)
        plain = run_city(args, tls=False) if args.plain else None
    idle_p99 = secured["idle"]["command_to_ack"].get("p99_ms")
    result = {
        "benchmark": "command",
        "scale": args.scale,
        "max_gap_ms": args.max_gap_ms,
        "operator": USER,
        "secured": secured,
        "plain": plain,
        "secured_over_plain": ratios(secured, plain) if plain is not None else None,
        "targets": {"idle_secured_p99_ms": TARGET_IDLE_P99_MS},
        "meets_targets": idle_p99 is not None and idle_p99 < TARGET_IDLE_P99_MS,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
