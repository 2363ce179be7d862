"""One control post end to end on real mosquitto and a real Ray cluster.

The simulated city publishes; the post's edge feeds the actors; a group
command goes through the ledger and the downlink gate to the network server's
multicast group, the lamps execute it and confirm it by the state they report;
an actor's worker is SIGKILLed mid-stream and comes back with every reading
accounted for.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from actors import ray_api
from actors.catalog import ALSO_FEEDS, actor_name
from actors.ray_pool import RayActorPool
from api.admin import admin_service
from api.server import start_server
from bridges.registry import DeviceRegistry
from citypost.clock import SimClock
from citypost.config import Config, load_config
from citypost.observability import setup_observability
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import LocalMosquitto
from cluster.ports import free_port
from cluster.ray_local import LocalRay
from failover.control_state import ledger_key
from fleet.network_server import NetworkServer
from fleet.population import City, build_city
from post.post import Post
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, assets_pb2, command_pb2, control_state_pb2

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}

START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
async def post(
    ray_cluster: LocalRay, mqtt_broker: LocalMosquitto, tmp_path: Path
) -> AsyncIterator[tuple[Post, City, Config, NetworkServer]]:
    config = load_config(
        overrides={
            "city.scale": 0.002,
            "mqtt.port": mqtt_broker.port,
            **PLAIN,
            "post.name": f"e2e-{os.getpid()}",
            "edge.batch_interval_ms": 20,
            "run_dir": str(tmp_path),
        }
    )
    city = build_city(config.city)
    network_server = NetworkServer(
        city, config.mqtt, SimClock(START, 1.0), config.sim, config.city.name
    )
    api_port = await asyncio.to_thread(network_server.serve_api)
    radio = config.radio.model_copy(update={"network_server_api": f"127.0.0.1:{api_port}"})
    config = config.model_copy(update={"radio": radio})
    pool = await asyncio.to_thread(RayActorPool.spawn, city.registry.groups())
    observability = setup_observability(config.observability)
    the_post = Post(
        config,
        name=config.post.name,
        registry=city.registry,
        pool=pool,
        clock=SimClock(START, 1.0),
        observability=observability,
    )
    # The post's only way to the network server (its multicast groups made at start).
    gate = await asyncio.to_thread(GateRunner(config).start)
    await the_post.start()
    await asyncio.to_thread(network_server.start, uplinks=False)
    try:
        yield the_post, city, config, network_server
    finally:
        await the_post.stop()
        await asyncio.to_thread(gate.stop)
        await asyncio.to_thread(network_server.stop)
        the_post.edge.session.stop(end_session=True)
        for host in pool.hosts():
            ray_api.kill(host)
        observability.shutdown()


def _expected_applied(registry: DeviceRegistry, rounds: int) -> dict[str, int]:
    groups = registry.groups()
    expected = {actor_name(*key): rounds * len(devices) for key, devices in groups.items()}
    for source, targets in ALSO_FEEDS.items():
        extra = rounds * sum(len(d) for (cls, _), d in groups.items() if cls == source)
        for key in groups:
            if key[0] in targets:
                expected[actor_name(*key)] += extra
    return expected


async def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.timeout(180)
async def test_city_to_actors_command_to_devices_and_an_actor_crash_loses_nothing(
    post: tuple[Post, City, Config, NetworkServer],
) -> None:
    the_post, city, _config, network_server = post
    rounds = 0
    for _ in range(2):
        await asyncio.to_thread(network_server.publish_round)
        rounds += 1
    expected = _expected_applied(city.registry, rounds)
    await _wait(
        lambda: the_post.feed.stats().applied_by_actor == expected, 60, "every reading applied"
    )

    # An operator's group command: one ledger entry, one multicast, every lamp executes
    # it once and confirms it in its next uplink.
    lamps = [k for k in city.registry.groups() if k[0] == assets_pb2.STREET_LAMP]
    group = lamps[0][1]
    members = city.registry.group(assets_pb2.STREET_LAMP, group)
    record = await the_post.dispatcher.issue_command(
        command_pb2.Command(
            asset_class=assets_pb2.STREET_LAMP,
            target=command_pb2.Target(group=group),
            set_brightness=command_pb2.SetBrightness(brightness_pct=42),
        ),
        issued_by="op-test",
    )
    command_id = record.command.command_id

    async def status() -> int:
        stored = await the_post.state.get(ledger_key(command_id), control_state_pb2.CommandRecord)
        assert stored is not None
        return stored.status

    assert record.multicast and record.expected_acks == len(members)
    for _ in range(60):  # generous: a loaded machine delays the gate and the reports
        await asyncio.sleep(0.5)
        if await status() == command_pb2.ACKED:
            break
        await asyncio.to_thread(network_server.publish_round)  # the lamps report
        rounds += 1
    assert await status() == command_pb2.ACKED
    assert network_server.stats().multicast_sent >= 1
    executed = Counter(e.dev_eui for e in network_server.executions() if e.command_id == command_id)
    assert executed == Counter({d.dev_eui: 1 for d in members})

    # SIGKILL a lamp actor's worker mid-stream: restored, replayed, nothing lost.
    key = lamps[0]
    pid = await asyncio.to_thread(ray_api.actor_pid, the_post.pool.actor(key))  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    for _ in range(3):
        await asyncio.to_thread(network_server.publish_round)
        rounds += 1
    expected = _expected_applied(city.registry, rounds)
    await _wait(
        lambda: the_post.feed.stats().applied_by_actor == expected,
        90,
        "every reading applied after the actor's restart",
    )
    assert the_post.feed.stats().restarts[actor_name(*key)] >= 1
    assert the_post.feed.stats().down == []

    # The admin API tells the same story.
    port = free_port()
    # The gate counted the multicast's airtime and reports it (every few seconds).
    radios = [city.get(d.dev_eui) for d in members]
    serving = {sim.radio.gateway_id for sim in radios if sim is not None and sim.radio is not None}

    def reported() -> set[str]:
        report = the_post.radio.latest()
        return {u.gateway_id for u in report.usage} if report is not None else set()

    await _wait(lambda: serving <= reported(), 45, "the gate's airtime report")
    server, _ = await start_server([admin_service(the_post)], port=port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.PostAdminStub(channel)
            status_reply = await stub.GetStatus(admin_pb2.GetStatusRequest())
            airtime = await stub.GetAirtime(admin_pb2.GetAirtimeRequest())
    finally:
        await server.stop(None)
    assert airtime.known and airtime.window_s == 3600
    used = {g.gateway_id: g.used_s for g in airtime.gateways}
    # The policies' own profiles went to every lamp group too: at least this group's gateways.
    assert serving <= set(used) and all(0 < u <= 360 for u in used.values())
    assert status_reply.healthy, status_reply.unhealthy_reason
    assert len(status_reply.actors) == len(city.registry.groups())
    by_name = {a.name: a for a in status_reply.actors}
    assert by_name[actor_name(*key)].restarts >= 1
    assert sum(status_reply.uplinks_by_class.values()) == rounds * len(city.registry)
