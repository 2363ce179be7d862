"""A post tells, over gRPC, which Ray worker process runs each of its actors.

What the chaos drills rely on: the post runs as a process of its own
(`citypost post`, as in the demo), GetStatus names each actor's worker (the
groups of one asset class share one), that worker belongs to the post's
process session, and once it is SIGKILLed every group it hosted comes back in
another worker with its restart counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import psutil
import pytest

from citypost.config import load_config
from cluster.mosquitto_local import LocalMosquitto
from cluster.post_process import PostProcess
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}

RPC_TIMEOUT_S = 10.0


@pytest.fixture
async def post(mqtt_broker: LocalMosquitto, tmp_path: Path) -> AsyncIterator[PostProcess]:
    config = load_config(
        overrides={
            "city.scale": 0.0005,  # the smallest city: one actor per class, few workers
            "mqtt.port": mqtt_broker.port,
            **PLAIN,
            "post.name": f"pid-{os.getpid()}",
            "post.grpc_port": None,
            "run_dir": str(tmp_path),
        }
    )
    the_post = PostProcess(config, tmp_path)
    try:
        await asyncio.to_thread(the_post.start)
        yield the_post
    finally:
        await asyncio.to_thread(the_post.stop)
        the_post.remove_ray_temp_dir()


async def _status(address: str) -> admin_pb2.PostStatus:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: admin_pb2.PostStatus = await admin_pb2_grpc.PostAdminStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S
        )
        return reply


async def _until(
    address: str, done: Callable[[admin_pb2.PostStatus], bool], timeout_s: float, what: str
) -> admin_pb2.PostStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    status = await _status(address)
    while not done(status):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: {status}")
        await asyncio.sleep(0.2)
        status = await _status(address)
    return status


def _live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.timeout(240)
async def test_each_actor_names_its_worker_and_a_killed_worker_is_replaced(
    post: PostProcess,
) -> None:
    post_pid = post.process.pid
    assert post_pid is not None
    session = os.getsid(post_pid)
    assert session != os.getsid(0)  # the post's session is its own, not the test's

    status = await _until(
        post.address,
        lambda s: bool(s.actors) and all(a.healthy and a.worker_pid > 0 for a in s.actors),
        60,
        "every actor up with a known worker",
    )
    pids = {a.name: a.worker_pid for a in status.actors}
    workers = set(pids.values())
    # The units share the configured number of hosts (processes), each unit on one.
    assert len(workers) == min(len(pids), load_config().post.actor_hosts)
    for name, pid in pids.items():
        assert _live(pid), f"{name}: worker {pid} is not running"
        assert os.getsid(pid) == session, f"{name}: worker {pid} is outside the post's session"

    victim = sorted(pids)[0]
    before = {a.name: a for a in status.actors}
    killed = before[victim].worker_pid
    hosted = {name for name, pid in pids.items() if pid == killed}
    os.kill(killed, signal.SIGKILL)

    def replaced(s: admin_pb2.PostStatus) -> bool:
        return all(
            a.healthy and a.worker_pid not in (0, killed) and a.restarts > before[a.name].restarts
            for a in s.actors
            if a.name in hosted
        )

    after = await _until(post.address, replaced, 60, f"the groups of {victim} in a new worker")
    for actor in after.actors:
        if actor.name in hosted:
            assert actor.restarts == before[actor.name].restarts + 1
            assert _live(actor.worker_pid)
            assert os.getsid(actor.worker_pid) == session
    # The others were not touched.
    assert {a.name: a.worker_pid for a in after.actors if a.name not in hosted} == {
        n: p for n, p in pids.items() if n not in hosted
    }
    assert after.healthy  # one process crashed: one restart against the intensity
    # The post's footprint counts its whole tree: itself, its Ray cluster, the workers.
    assert after.processes > len(workers) + 1
    assert after.memory_pss_bytes > 100 * 2**20
