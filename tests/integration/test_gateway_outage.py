"""A gateway goes dark in a small city: one alarm for the cause, its devices under it.

Real mosquitto, a real Ray cluster, the simulated network server publishing at x600
and one post. The network server loses the uplinks that only the dark gateway hears;
the post's silence watch must raise exactly one `gateway_silent` alarm and file the
silence of the devices behind it under that alarm (suppressed, counted), with no
`device_silent` alarm annunciated on its own; when the gateway is back, the cause
clears and so do the devices.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors import ray_api
from actors.ray_pool import RayActorPool
from citypost.clock import SimClock
from citypost.config import Config, load_config
from citypost.observability import setup_observability
from cluster.mosquitto_local import LocalMosquitto
from cluster.ray_local import LocalRay
from failover.control_state import ALARMS, list_all
from fleet.network_server import NetworkServer, heard_by
from fleet.population import City, build_city
from post.alarm_book import ACTIVE
from post.post import Post
from post.silence_watch import DEVICE_SILENT, GATEWAY_SILENT, gateway_cause
from protos.citypost.v1 import operations_pb2

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SPEED = 600.0
GATEWAY = "0016c001f1000001"  # Dijon centre: the most devices at any scale


def _in_a_valley(city: City, gateway: str) -> City:
    """The city with the devices whose best gateway is `gateway` heard by it alone (at a
    small scale nearly every device is heard by two or more gateways, as in the city)."""
    devices = tuple(
        replace(d, radio=replace(d.radio, gateways=(gateway,)))
        if d.radio is not None and d.radio.gateway_id == gateway
        else d
        for d in city.devices
    )
    return replace(city, devices=devices)


@pytest.fixture
async def city(
    ray_cluster: LocalRay, mqtt_broker: LocalMosquitto, tmp_path: Path
) -> AsyncIterator[tuple[Post, City, NetworkServer]]:
    config: Config = load_config(
        overrides={
            "city.scale": 0.003,
            "mqtt.port": mqtt_broker.port,
            "security.tls": False,
            "post.name": f"gw-{os.getpid()}",
            "edge.batch_interval_ms": 20,
            "run_dir": str(tmp_path),
        }
    )
    city = _in_a_valley(build_city(config.city), GATEWAY)
    clock = SimClock(START, SPEED)
    network_server = NetworkServer(city, config.mqtt, clock, config.sim, config.city.name)
    pool = await asyncio.to_thread(RayActorPool.spawn, city.registry.groups())
    observability = setup_observability(config.observability)
    post = Post(
        config,
        name=config.post.name,
        registry=city.registry,
        pool=pool,
        clock=clock,
        observability=observability,
    )
    await post.start()
    await asyncio.to_thread(network_server.start)
    try:
        yield post, city, network_server
    finally:
        await post.stop()
        await asyncio.to_thread(network_server.stop)
        post.edge.session.stop(end_session=True)
        for host in pool.hosts():
            ray_api.kill(host)
        observability.shutdown()


async def _alarms(post: Post) -> list[operations_pb2.Alarm]:
    return [e.value for e in await list_all(post.state, ALARMS, operations_pb2.Alarm)]


async def _wait_for(post: Post, predicate: object, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate(await _alarms(post)):  # type: ignore[operator]
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _behind(city: City, gateway: str) -> set[str]:
    """The devices only `gateway` hears (the others' uplinks reach the network server
    through another gateway while it is down)."""
    return {d.device.dev_eui for d in city.devices if heard_by(d) == (gateway,)}


@pytest.mark.timeout(300)
async def test_a_dark_gateway_is_one_alarm_with_its_devices_under_it(
    city: tuple[Post, City, NetworkServer],
) -> None:
    post, sim_city, network_server = city
    gateway = GATEWAY
    behind = _behind(sim_city, gateway)
    assert len(behind) >= 2, "the slice must put several devices behind one gateway"
    # Every device heard once, in stream time, before the outage (the longest period is an
    # hour: 6 real s at x600).
    await asyncio.sleep(12)
    assert [a for a in await _alarms(post) if a.type in (DEVICE_SILENT, GATEWAY_SILENT)] == []

    network_server.set_gateway_down(gateway, True)
    cause_originator = gateway_cause(gateway)[0]

    def settled(alarms: list[operations_pb2.Alarm]) -> bool:
        causes = [a for a in alarms if a.type == GATEWAY_SILENT and a.state in ACTIVE]
        silent = {a.originator for a in alarms if a.type == DEVICE_SILENT and a.state in ACTIVE}
        return len(causes) == 1 and behind <= silent

    # Past the longest device threshold (3 hours + 2 min: 18.2 real s at x600).
    await _wait_for(post, settled, 90, "the cause and every device behind it")
    alarms = await _alarms(post)
    causes = [a for a in alarms if a.type == GATEWAY_SILENT]
    assert [(a.originator, a.state in ACTIVE) for a in causes] == [(cause_originator, True)]
    cause = causes[0]
    silent = [a for a in alarms if a.type == DEVICE_SILENT and a.state in ACTIVE]
    # No device is annunciated on its own: every silent one is filed under the cause.
    assert Counter(a.suppressed_by for a in silent) == Counter({cause.alarm_id: len(silent)})
    assert {a.originator for a in silent} == behind
    await _wait_for(
        post,
        lambda al: any(
            a.alarm_id == cause.alarm_id and a.suppressed_count == len(behind) for a in al
        ),
        30,
        "the cause to count what it suppresses",
    )
    # The devices' own alarms carry their class (handled by their class's operators).
    assert all(a.asset_class for a in silent)

    network_server.set_gateway_down(gateway, False)

    def recovered(alarms: list[operations_pb2.Alarm]) -> bool:
        return not any(
            a.state in ACTIVE and a.type in (DEVICE_SILENT, GATEWAY_SILENT) for a in alarms
        )

    await _wait_for(post, recovered, 90, "the cause and its devices to clear")
