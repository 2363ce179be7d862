"""Failover: SIGKILL of the leading post → the first command the new leader accepts, and
planned switchover, over repeated trials.

One `CitySystem` (a 3-member local etcd, mosquitto, the downlink gate, the
posts `primary` and `backup` each with its own Ray cluster, and the simulated
network server), with a short lease (`--lease-ttl`, 1 s by default: the etcd
default of 50 ms heartbeats and 500 ms elections grants it). During a trial a
sender issues lamp group commands (SendCommand, a fresh idempotency key each)
one after the other, as fast as they are acknowledged, through the
leader-following console client, retrying with nearly no backoff so the
figure is the takeover's, not the client's patience.

- Planned switchover (first, `--trials` times, alternating direction): from
  the Resign call on the leader (with `--hold-off`) to the first command
  acknowledged under the new epoch, and to the first GetFailoverStatus of
  the standby saying it leads under a newer epoch.
- Crash failover (`--trials` times): from the SIGKILL of the leader's whole
  session (post, Ray head, raylet, workers) to the first command acknowledged
  under the new epoch; also when etcd's leader key names the new leader. The
  killed post is restarted (it comes back as standby) and the next trial
  starts once both posts are ready again.

The network server's execution log is then checked: no device executed a
command twice. Everything is stopped at the end, also after a failure.
Prints one JSON object.

    python -m bench.failover [--trials 10] [--scale 0.005] [--lease-ttl 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc

from bench.failover_support import (
    FAST_RETRY,
    Sender,
    executed_after_newer_epoch,
    executed_twice,
    figures,
    within,
)
from citypost.config import Config, load_config
from citypost.errors import CitypostError
from cluster.system import CitySystem
from console.failover_cli import AdminCalls, Handover, PostView, plan_switchover, took_over
from protos.citypost.v1 import assets_pb2

TARGET_CRASH_P50_MS = 1500.0
TARGET_SWITCHOVER_P50_MS = 100.0
READY_TIMEOUT_S = 120.0  # both posts up, one leading, the other a ready standby
TAKEOVER_TIMEOUT_S = 30.0  # a trial without a new leader's ack by then is a timeout
WARMUP_S = 0.5  # the sender runs this long under the old leader before the fault
SETTLE_S = 5.0  # pending commands complete before the execution log is read
POLL_S = 0.002
MAX_GROUP_LAMPS = 10  # small lamp groups: a command is one multicast to a few devices
RESTART_ATTEMPTS = 3


class BenchError(RuntimeError):
    """The system did not reach the state a trial needs."""


@dataclass(frozen=True)
class Pair:
    """The two posts ready for a trial: who leads (and its epoch), who stands by."""

    leader: PostView
    standby: PostView

    @property
    def epoch(self) -> int:
        assert self.leader.status is not None
        return self.leader.status.epoch


def ready_pair(system: CitySystem, timeout_s: float = READY_TIMEOUT_S) -> Pair:
    """Wait until one post leads and the other is a standby that could take over now."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with AdminCalls(channel_factory=system.channel_factory()) as calls:
        while time.monotonic() < deadline:
            views = calls.statuses(system.addresses())
            leaders = [v for v in views if v.leads]
            others = [v for v in views if v.status is not None and not v.leads]
            if len(leaders) == 1 and len(others) == 1:
                plan = plan_switchover(views, others[0].name)
                if isinstance(plan, Handover):
                    return Pair(plan.leader, plan.target)
                last = repr(plan)
            else:
                last = "; ".join(f"{v.address}: {v.status or v.error}".strip() for v in views)
            time.sleep(0.1)
    raise BenchError(f"the posts were not ready for a trial within {timeout_s:g} s: {last}")


def lamp_groups(system: CitySystem) -> list[str]:
    """The two largest lamp groups of at most MAX_GROUP_LAMPS lamps."""
    assert system.city is not None
    sizes = [
        (len(devices), group)
        for (cls, group), devices in system.city.registry.groups().items()
        if cls == assets_pb2.STREET_LAMP and len(devices) <= MAX_GROUP_LAMPS
    ]
    groups = [group for _, group in sorted(sizes, reverse=True)[:2]]
    if not groups:
        raise BenchError("the city at this scale has no small lamp group")
    return groups


def start_sender(system: CitySystem, groups: Sequence[str], prefix: str, epoch: int) -> Sender:
    """A running sender, once it has had a command acknowledged under `epoch`."""
    sender = Sender(
        system.addresses(),
        groups,
        prefix,
        system.channel_factory(),
        system.operator("urban-supervision"),
    ).start()
    ack = sender.log.wait_first(above_epoch=epoch - 1, timeout_s=TAKEOVER_TIMEOUT_S)
    if ack is None or ack.epoch != epoch:
        sender.stop()
        raise BenchError(f"no command acknowledged under epoch {epoch}: {sender.failed[-3:]}")
    time.sleep(WARMUP_S)
    return sender


class StatusWatch:
    """Polls a post's GetFailoverStatus on a thread: when it first leads above an epoch."""

    def __init__(
        self,
        address: str,
        name: str,
        from_epoch: int,
        channel_factory: Callable[[str], grpc.Channel],
    ) -> None:
        self._calls = AdminCalls(channel_factory=channel_factory)
        self._address, self._name, self._from = address, name, from_epoch
        self._stop = threading.Event()
        self.led_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                view = self._calls.status(self._address)
                if view.status is not None and took_over(view.status, self._name, self._from):
                    self.led_at = time.monotonic()
                    return
                self._stop.wait(POLL_S)
        finally:
            self._calls.close()

    def wait(self, timeout_s: float) -> float | None:
        self._thread.join(timeout_s)
        self.stop()
        return self.led_at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def switchover_trial(
    system: CitySystem, groups: Sequence[str], i: int, hold_off_ms: int
) -> dict[str, Any]:
    pair = ready_pair(system)
    old = pair.epoch
    sender = start_sender(system, groups, f"switch-{i}", old)
    watch = StatusWatch(pair.standby.address, pair.standby.name, old, system.channel_factory())
    try:
        with AdminCalls(channel_factory=system.channel_factory()) as calls:
            started = time.monotonic()
            reply = calls.resign(pair.leader.address, hold_off_ms=hold_off_ms)
            resigned = time.monotonic()
        ack = sender.log.wait_first(above_epoch=old, timeout_s=TAKEOVER_TIMEOUT_S)
        led_at = watch.wait(TAKEOVER_TIMEOUT_S)
    finally:
        watch.stop()
        sender.stop()
    return {
        "from": pair.leader.name,
        "to": pair.standby.name,
        "old_epoch": old,
        "new_epoch": ack.epoch if ack else None,
        "resigned_epoch": reply.resigned_epoch,
        "resign_rpc_s": resigned - started,
        "first_ack_s": None if ack is None else ack.acked_at - started,
        "first_ack_sent_s": None if ack is None else ack.sent_at - started,
        "status_leads_s": None if led_at is None else led_at - started,
        "acked": len(sender.log.acks()),
        "failed": len(sender.failed),
    }


async def _leader_seen(system: CitySystem, client: aetcd.Client, above: int) -> float:
    """When etcd's leader key first shows an epoch above `above` (polled)."""
    while True:
        with contextlib.suppress(aetcd.ClientError):
            now = await system.leader(client)
            if now is not None and now.epoch > above:
                return time.monotonic()
        await asyncio.sleep(POLL_S)


async def crash_trial(
    system: CitySystem, client: aetcd.Client, groups: Sequence[str], i: int, *, restart: bool
) -> dict[str, Any]:
    pair = await asyncio.to_thread(ready_pair, system)
    old = pair.epoch
    victim = pair.leader.name
    sender = await asyncio.to_thread(start_sender, system, groups, f"crash-{i}", old)
    seen = asyncio.create_task(_leader_seen(system, client, old))
    try:
        killed_at = time.monotonic()
        hit = await asyncio.to_thread(system.crash_post, victim)
        ack = await asyncio.to_thread(
            sender.log.wait_first, above_epoch=old, timeout_s=TAKEOVER_TIMEOUT_S
        )
        try:
            seen_at: float | None = await asyncio.wait_for(seen, TAKEOVER_TIMEOUT_S)
        except TimeoutError:
            seen_at = None
    finally:
        seen.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await seen
        await asyncio.to_thread(sender.stop)
    result: dict[str, Any] = {
        "killed": victim,
        "processes_killed": hit,
        "old_epoch": old,
        "new_epoch": ack.epoch if ack else None,
        "first_ack_s": None if ack is None else ack.acked_at - killed_at,
        "leader_key_s": None if seen_at is None else seen_at - killed_at,
        "first_ack_sent_s": None if ack is None else ack.sent_at - killed_at,
        "acked": len(sender.log.acks()),
        "failed": len(sender.failed),
    }
    if restart:
        try:
            result["restart_s"] = await asyncio.to_thread(restart_killed, system, victim)
        except CitypostError as error:
            result["restart_error"] = _failed_trial(error)["error"]
    return result


def start_system(config: Config, run_dir: Path) -> CitySystem:
    """The city started (a failed start stops what it started), again if a post's Ray head
    did not come up; each attempt in a directory of its own."""
    for attempt in range(1, RESTART_ATTEMPTS + 1):
        attempt_dir = run_dir / f"start-{attempt}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        system = CitySystem(config, attempt_dir)
        try:
            return system.start()
        except CitypostError as error:
            print(f"start failed ({attempt}): {error}", file=sys.stderr, flush=True)
            if attempt == RESTART_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def restart_killed(system: CitySystem, name: str) -> float:
    """Restart a killed post, again if its Ray head did not come up (it can time out on a
    loaded machine); seconds taken."""
    started = time.monotonic()
    for attempt in range(1, RESTART_ATTEMPTS + 1):
        try:
            system.restart_post(name)
            break
        except CitypostError as error:
            print(f"restart of {name} failed ({attempt}): {error}", file=sys.stderr, flush=True)
            if attempt == RESTART_ATTEMPTS:
                raise
    return round(time.monotonic() - started, 1)


TRIAL_ERRORS = (CitypostError, BenchError, grpc.RpcError)


def _failed_trial(error: BaseException) -> dict[str, Any]:
    return {"error": f"{type(error).__name__}: {error}"[:2000]}


def _progress(what: str, trial: dict[str, Any]) -> None:
    print(f"{what}: {_rounded(trial)}", file=sys.stderr, flush=True)


def _samples(trials: Sequence[dict[str, Any]], key: str) -> tuple[list[float], int]:
    values = [t.get(key) for t in trials]
    return [v for v in values if v is not None], sum(v is None for v in values)


def bench_config(args: argparse.Namespace, run_dir: Path) -> Config:
    return load_config(
        overrides={
            "city.scale": args.scale,
            "failover.lease_ttl_s": args.lease_ttl,
            "failover.keepalive_interval_s": args.keepalive,
            "failover.safety_margin_s": args.margin,
            "post.grpc_port": None,  # each child post picks a free port
            "run_dir": str(run_dir),
        }
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as dirs:
        if args.run_dir is None:
            run_dir = Path(dirs.enter_context(tempfile.TemporaryDirectory(prefix="citypost-")))
        else:
            run_dir = args.run_dir.resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
        config = bench_config(args, run_dir)
        system = await asyncio.to_thread(start_system, config, run_dir)
        try:
            assert system.network_server is not None and system.gate is not None
            groups = lamp_groups(system)
            switchovers: list[dict[str, Any]] = []
            for i in range(args.trials):
                try:
                    trial = await asyncio.to_thread(
                        switchover_trial, system, groups, i, round(args.hold_off * 1000)
                    )
                except TRIAL_ERRORS as error:
                    trial = _failed_trial(error)
                _progress(f"switchover {i}", trial)
                switchovers.append(trial)
            crashes: list[dict[str, Any]] = []
            async with system.etcd_client() as client:
                for i in range(args.trials):
                    try:
                        trial = await crash_trial(
                            system, client, groups, i, restart=i < args.trials - 1
                        )
                    except TRIAL_ERRORS as error:
                        # Most likely the killed post did not come back: no further trial.
                        crashes.append(_failed_trial(error))
                        _progress(f"crash {i}", crashes[-1])
                        break
                    _progress(f"crash {i}", trial)
                    crashes.append(trial)
                    if "restart_error" in trial:
                        break
            await asyncio.sleep(SETTLE_S)
            log = system.network_server.executions()
            fleet = system.network_server.stats()
            gate = system.gate.stats()
        finally:
            await asyncio.to_thread(system.stop)
    crash_s, crash_lost = _samples(crashes, "first_ack_s")
    key_s, key_lost = _samples(crashes, "leader_key_s")
    ack_s, ack_lost = _samples(switchovers, "first_ack_s")
    status_s, status_lost = _samples(switchovers, "status_leads_s")
    crash = figures(crash_s, crash_lost)
    switchover = figures(ack_s, ack_lost)
    twice = executed_twice(log)
    return {
        "benchmark": "failover",
        "settings": {
            "trials": args.trials,
            "scale": config.city.scale,
            "lease_ttl_s": config.failover.lease_ttl_s,
            "keepalive_interval_s": config.failover.keepalive_interval_s,
            "safety_margin_s": config.failover.safety_margin_s,
            "etcd_members": config.etcd.members,
            "etcd_heartbeat_ms": config.etcd.heartbeat_interval_ms,
            "etcd_election_timeout_ms": config.etcd.election_timeout_ms,
            "hold_off_s": args.hold_off,
            "lamp_groups": groups,
            "client_retry_wait_s": [FAST_RETRY.initial_wait_s, FAST_RETRY.max_wait_s],
        },
        "crash_failover": {
            "first_command_from_new_leader": crash,
            "leader_key_taken": figures(key_s, key_lost),
            "trials": [_rounded(t) for t in crashes],
        },
        "planned_switchover": {
            "first_command_from_new_leader": switchover,
            "standby_status_leads": figures(status_s, status_lost),
            "trials": [_rounded(t) for t in switchovers],
        },
        "execution_log": {
            "executions": len(log),
            "commands": len({e.command_id for e in log}),
            "executed_twice": twice,
            "executed_after_newer_epoch": executed_after_newer_epoch(log),
            "device_duplicates_refused": fleet.commands_duplicate,
            "device_stale_refused": fleet.commands_stale,
            "gate_forwarded": gate.forwarded,
            "gate_dropped": gate.dropped,
        },
        "targets": {
            "crash_failover_p50_ms": TARGET_CRASH_P50_MS,
            "planned_switchover_p50_ms": TARGET_SWITCHOVER_P50_MS,
            "executed_twice": 0,
        },
        "meets_targets": (
            within(crash, TARGET_CRASH_P50_MS, args.trials)
            and within(switchover, TARGET_SWITCHOVER_P50_MS, args.trials)
            and twice == 0
        ),
    }


def _rounded(trial: dict[str, Any]) -> dict[str, Any]:
    """Seconds as ms in the per-trial records."""
    out: dict[str, Any] = {}
    for key, value in trial.items():
        if key.endswith("_s") and key != "restart_s":
            out[key.removesuffix("_s") + "_ms"] = None if value is None else round(value * 1000, 1)
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10, help="trials of each measure")
    parser.add_argument("--scale", type=float, default=0.005, help="the city's scale")
    parser.add_argument("--lease-ttl", type=float, default=1.0, help="seconds, whole")
    parser.add_argument("--keepalive", type=float, default=0.2, help="lease keepalive, seconds")
    parser.add_argument("--margin", type=float, default=0.3, help="self-fencing margin, seconds")
    parser.add_argument(
        "--hold-off", type=float, default=3.0, help="seconds the resigned leader does not campaign"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="keep the logs (posts, etcd, broker) here instead of a temporary directory",
    )
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    # Keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run(args))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
