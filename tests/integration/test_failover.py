"""Crash failover: SIGKILL of the leading post's whole process group, writes in flight.

The whole system as the demo assembles it: a 3-member etcd, mosquitto, the
downlink gate, two `citypost post` processes (`primary`, `backup`, each with its
own Ray cluster) and the simulated network server, whose execution log is the
independent evidence of what the devices did. The test checks that log and the
control state against what the operator API acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aetcd
import grpc
import psutil
import pytest

from cluster.config import CityConfig, Config, FailoverConfig, PostConfig, SimConfig
from cluster.demo import _post_configs, start_infrastructure
from cluster.etcd_local import etcd_client
from cluster.gate_runner import GateRunner
from cluster.ports import free_ports
from cluster.post_process import PostProcess
from cluster.sim_clock import SimClock
from console.client import CallFailedError, PostClient, PostUnreachableError, RetryPolicy
from failover.election import leader_key
from failover.leadership import LeaderValue
from fleet.network_server import Execution, NetworkServer
from fleet.population import build_city
from protos.citypost.v1 import assets_pb2, command_pb2, operator_pb2, operator_pb2_grpc

pytestmark = pytest.mark.integration

CITY = "dijon"
# Lamp groups of the city at scale 0.005 (9 and 6 lamps): every command is one multicast.
GROUPS = ("chenove", "fontaine-les-dijon")
TAKEOVER_BOUND_S = 10.0  # generous: the lease is 2 s
EXECUTION_BOUND_S = 45.0  # a command sent is executed by every device of its group within this


@dataclass(frozen=True)
class Acked:
    """A SendCommand the API acknowledged."""

    key: str
    command_id: str
    epoch: int
    group: str
    acked_at: float  # monotonic


@dataclass(frozen=True)
class Leader:
    name: str
    address: str
    epoch: int


def _command(group: str, pct: float) -> command_pb2.Command:
    return command_pb2.Command(
        asset_class=assets_pb2.STREET_LAMP,
        target=command_pb2.Target(group=group),
        set_brightness=command_pb2.SetBrightness(brightness_pct=pct),
    )


def _send(client: PostClient, key: str, group: str, pct: float) -> Acked:
    request = operator_pb2.SendCommandRequest(
        idempotency_key=key, command=_command(group, pct), reason="failover test"
    )
    record = client.write("SendCommand", request)
    return Acked(key, record.command.command_id, record.command.epoch, group, time.monotonic())


async def _leader(client: aetcd.Client) -> Leader | None:
    got = await client.get(leader_key(CITY))
    if got is None:
        return None
    value = LeaderValue.from_json(got.value)
    return Leader(value.name, value.address, int(got.create_revision))


async def _wait_leader(
    client: aetcd.Client, timeout_s: float, *, newer_than: int = 0
) -> tuple[Leader, float]:
    """The leader once one holds the key with an epoch above `newer_than`, and when seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(aetcd.ClientError):
            leader = await _leader(client)
            if leader is not None and leader.epoch > newer_than:
                return leader, time.monotonic()
        if time.monotonic() >= deadline:
            raise AssertionError(f"no post leads with an epoch above {newer_than} in {timeout_s} s")
        await asyncio.sleep(0.05)


def _executed_by(executions: list[Execution], command_id: str) -> set[str]:
    return {e.dev_eui for e in executions if e.command_id == command_id}


async def _wait_executed(
    network_server: NetworkServer, commands: list[Acked], group_size: dict[str, int]
) -> list[Acked]:
    """Wait until every command was executed by every lamp of its group; return the rest."""
    deadline = time.monotonic() + EXECUTION_BOUND_S
    while True:
        log = network_server.executions()
        missing = [
            c for c in commands if len(_executed_by(log, c.command_id)) < group_size[c.group]
        ]
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(0.2)


class Sender:
    """Sends group commands in a loop on a thread, recording what was acknowledged."""

    def __init__(self, addresses: list[str], group_prefix: str) -> None:
        # A write window longer than a takeover: an unacknowledged write is retried.
        policy = RetryPolicy(write_window_s=TAKEOVER_BOUND_S + 5)
        self._client = PostClient(addresses, operator="op-failover", timeout_s=5.0, retry=policy)
        self._prefix = group_prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-sender", daemon=True)
        self.acked: list[Acked] = []
        self.failed: list[tuple[str, str]] = []  # (key, error): not acknowledged

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TAKEOVER_BOUND_S + 30)
        self._client.close()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"{self._prefix}-{n}"
            group = GROUPS[n % len(GROUPS)]
            try:
                self.acked.append(_send(self._client, key, group, float(10 + n % 80)))
            except (CallFailedError, PostUnreachableError, grpc.RpcError) as exc:
                self.failed.append((key, repr(exc)))
            n += 1
            self._stop.wait(0.1)


def _ray_processes(post: PostProcess) -> list[psutil.Process]:
    """The post's descendants: its Ray head runs in a session of its own, so SIGKILL of the
    post's group does not reach it; `ray start` and what it spawned are all below the post."""
    pid = post.process.pid
    assert pid is not None
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _ray_temp_dirs(procs: list[psutil.Process]) -> set[Path]:
    dirs: set[Path] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for arg in proc.cmdline():
                if arg.startswith("--temp-dir="):
                    dirs.add(Path(arg.removeprefix("--temp-dir=")))
    return dirs


def _is_live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cluster_members(temp_dirs: set[Path]) -> list[psutil.Process]:
    """Live processes naming one of the Ray temp dirs (every Ray process does, workers too)."""
    needles = [str(d) for d in temp_dirs]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.pid != os.getpid() and any(n in cmdline for n in needles) and _is_live(proc):
            found.append(proc)
    return found


def _kill_cluster(snapshot: list[psutil.Process], temp_dirs: set[Path]) -> None:
    """SIGKILL the Ray cluster: the processes seen before, and any found by its temp dir.

    A worker forked by the raylet just before it died is in no snapshot and outlives it
    (reparented to init), so the search repeats until two scans in a row find nothing.
    """
    deadline = time.monotonic() + 10
    quiet = 0
    while quiet < 2:
        left = [p for p in snapshot if _is_live(p)] + _cluster_members(temp_dirs)
        if not left:
            quiet += 1
        else:
            quiet = 0
            if time.monotonic() >= deadline:
                raise AssertionError(f"Ray processes survived SIGKILL: {[p.pid for p in left]}")
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        time.sleep(0.1)


def _sweep_leftovers(snapshot: list[psutil.Process], temp_dirs: set[Path]) -> None:
    try:
        _kill_cluster(snapshot, temp_dirs)
    finally:
        for temp in temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


def _with_port(config: Config, port: int) -> Config:
    return config.model_copy(update={"post": config.post.model_copy(update={"grpc_port": port})})


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Config, list[PostProcess], NetworkServer, ExitStack]]:
    """The demo's assembly on tmp_path; everything is stopped in reverse order afterwards."""
    sim = SimConfig(speed=60.0)
    sim = sim.model_copy(update={"start": sim.start_or_now()})
    config = Config(
        city=CityConfig(name=CITY, scale=0.005),
        sim=sim,
        failover=FailoverConfig(),
        post=PostConfig(grpc_port=None),
        run_dir=tmp_path,
    )
    with ExitStack() as stack:
        config, _ = start_infrastructure(config, stack)
        city = build_city(config.city)
        gate = GateRunner(config).start()
        stack.callback(gate.stop)
        # Each post on a free port of its own: with post.grpc_port None the child falls
        # back to its default 50051 (post_overrides leaves None out), and gRPC's
        # SO_REUSEPORT lets both posts bind it silently.
        posts = [
            PostProcess(_with_port(c, port), tmp_path).launch()
            for c, port in zip(_post_configs(config), free_ports(2), strict=True)
        ]
        for post in posts:
            stack.callback(post.stop)
        for post in posts:
            post.wait_ready()
        clock = SimClock(sim.start_or_now(), sim.speed)
        network_server = NetworkServer(city, config.mqtt, clock, config.sim, CITY)
        network_server.start()
        stack.callback(network_server.stop)
        yield config, posts, network_server, stack


@pytest.mark.timeout(300)
async def test_crash_failover_loses_nothing_and_executes_once(
    system: tuple[Config, list[PostProcess], NetworkServer, ExitStack],
) -> None:
    config, posts, network_server, stack = system
    by_name = {post.name: post for post in posts}
    addresses = [post.address for post in posts]
    group_size = {
        g: len(network_server.city.registry.groups()[(assets_pb2.STREET_LAMP, g)]) for g in GROUPS
    }
    async with etcd_client(list(config.etcd.endpoints)) as etcd:
        # 1. Exactly one post leads.
        old, _ = await _wait_leader(etcd, 60.0)
        assert old.name in by_name
        victim = by_name[old.name]
        survivor = next(p for p in posts if p.name != old.name)
        assert old.address == victim.address

        # 2. A few commands to the leader, executed by the devices.
        client = PostClient(addresses, operator="op-failover", timeout_s=5.0)
        try:
            before = [
                await asyncio.to_thread(_send, client, f"before-{i}", GROUPS[i % 2], 20.0 + i)
                for i in range(3)
            ]
        finally:
            client.close()
        assert all(c.epoch == old.epoch for c in before)
        missing = await _wait_executed(network_server, before, group_size)
        assert not missing, f"not executed before the kill: {missing}"

        # 3. Commands in flight; SIGKILL of the leader's process group and its Ray cluster.
        sender = Sender(addresses, "during").start()
        ray = _ray_processes(victim)
        temp_dirs = _ray_temp_dirs(ray)
        stack.callback(_sweep_leftovers, ray, temp_dirs)
        assert temp_dirs, f"no Ray head found below post {victim.name}: {ray}"
        try:
            await asyncio.sleep(1.5)
            killed_at = time.monotonic()
            victim.process.kill(signal.SIGKILL)
            await asyncio.to_thread(_kill_cluster, ray, temp_dirs)
            assert await asyncio.to_thread(victim.process.wait_exit, 10.0)

            # 4a. The other post leads within the bound, with a higher epoch.
            new, seen_at = await _wait_leader(etcd, TAKEOVER_BOUND_S, newer_than=old.epoch)
            assert new.name == survivor.name
            assert seen_at - killed_at <= TAKEOVER_BOUND_S
            await asyncio.sleep(2.0)  # writes keep coming under the new leader
        finally:
            await asyncio.to_thread(sender.stop)
        assert sender.acked, f"nothing acknowledged while the leader was killed: {sender.failed}"

        # 4e. Commands sent after the takeover are acknowledged under the new epoch.
        client = PostClient([survivor.address], operator="op-failover", timeout_s=5.0)
        try:
            after = [
                await asyncio.to_thread(_send, client, f"after-{i}", GROUPS[i % 2], 60.0 + i)
                for i in range(3)
            ]
        finally:
            client.close()
        assert all(c.epoch == new.epoch for c in after), after

        acknowledged = before + sender.acked + after
        # 4b. Every acknowledged command is in the new leader's control state.
        channel = grpc.insecure_channel(survivor.address)
        try:
            operator = operator_pb2_grpc.OperatorServiceStub(channel)
            lost = []
            for command in acknowledged:
                try:
                    operator.GetCommand(
                        operator_pb2.GetCommandRequest(command_id=command.command_id), timeout=5
                    )
                except grpc.RpcError as exc:
                    lost.append((command, exc.code().name))
        finally:
            channel.close()
        assert not lost, f"acknowledged but not in the new leader's control state: {lost}"

        # Every acknowledged command (pending ones replayed by the new leader, and those
        # sent after the takeover) is completed: executed by every lamp of its group.
        missing = await _wait_executed(network_server, acknowledged, group_size)
        assert not missing, f"acknowledged, never executed by every lamp of its group: {missing}"

        log = network_server.executions()
        # 4c. No command executed twice by the same device.
        twice = [k for k, n in Counter((e.dev_eui, e.command_id) for e in log).items() if n > 1]
        assert not twice, f"executed twice: {twice}"
        # 4d. Nothing of the old epoch (or older) after the first execution of the new one.
        first_new = next(i for i, e in enumerate(log) if e.epoch >= new.epoch)
        late = [e for e in log[first_new:] if e.epoch < new.epoch]
        assert not late, f"executed after the takeover under an older epoch: {late}"
        others = [e for e in log if e.epoch not in (old.epoch, new.epoch)]
        assert not others, f"executed under an epoch of neither leader: {others}"
