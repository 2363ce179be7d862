"""The gate's fail-safe on a real etcd and broker: applied once a leader was seen and
then none for longer than the bound, never before; ended by a leader's return."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bridges import chirpstack
from bridges.downlink_frame import decode_command
from citypost.config import load_config
from cluster.etcd_local import LocalEtcd
from cluster.gate_runner import GateRunner
from cluster.mosquitto_local import LocalMosquitto
from failover.election import leader_key
from failover.leadership import LeaderValue
from tests.integration.test_downlink_gate import Watcher

pytestmark = pytest.mark.integration

# A component on its own against the plain test broker: the city's TLS and ACL are
# tested with the whole city (CitySystem) and in test_mqtt_access.
PLAIN = {"security.tls": False}


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_no_leader_past_the_bound_puts_devices_in_fail_safe_once(
    etcd: LocalEtcd, mqtt_broker: LocalMosquitto, tmp_path: Path
) -> None:
    city = f"fs{uuid.uuid4().hex[:8]}"
    config = load_config(
        overrides={
            "city.name": city,
            "city.scale": 0.002,
            "mqtt.port": mqtt_broker.port,
            **PLAIN,
            "etcd.mode": "external",
            "etcd.endpoints": list(etcd.endpoints),
            "failover.lease_ttl_s": 1.0,
            "failover.keepalive_interval_s": 0.2,
            "failover.safety_margin_s": 0.3,
            "failover.failsafe_after_s": 2.0,
            "run_dir": str(tmp_path),
        }
    )
    devices = Watcher(mqtt_broker.port, "application/+/device/+/command/down")
    key = leader_key(city)
    value = LeaderValue(name="primary", address="127.0.0.1:1").to_json()
    client = etcd.client()
    runner = GateRunner(config)
    try:
        await asyncio.to_thread(runner.start)
        await asyncio.sleep(3.0)  # no leader ever seen: posts still starting is not an outage
        assert devices.snapshot() == []
        await client.put(key, value)
        await _until(lambda: runner.failsafe.last_confirmed is not None, 5, "a leader confirmed")
        await _until(lambda: runner.stats().highest_epoch > 0, 5, "the leader's epoch")
        epoch = runner.stats().highest_epoch
        await client.delete(key)
        await _until(lambda: runner.failsafe.active, 10, "the fail-safe after the bound")
        await _until(lambda: len(devices.snapshot()) > 0, 10, "fail-safe downlinks")
        await asyncio.sleep(1.0)
        frames = [decode_command(chirpstack.parse_downlink(p).data) for _, p in devices.snapshot()]
        assert {f.epoch for f in frames} == {epoch}  # devices take it: not a stale epoch
        lamps = [f for f in frames if f.action == "set_brightness"]
        assert lamps and all(f.value == 100 for f in lamps)
        count = len(frames)
        await asyncio.sleep(2.0)
        assert len(devices.snapshot()) == count  # once per outage, not every check
        await client.put(key, value)
        await _until(lambda: not runner.failsafe.active, 5, "the fail-safe to end")
        assert runner.failsafe.entered == 1
    finally:
        await asyncio.to_thread(runner.stop)
        devices.close()
        await client.delete(key)
        await client.close()
