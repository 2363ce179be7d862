"""The whole city at its real size, as `make demo` runs it: 38,702 devices, both posts, a
3-member etcd, the broker, on this machine; the lamps' 23:00 transition inside the run,
and the leader SIGKILLed during it.

What must hold: telemetry of every class keeps flowing to the end, the transition's group
commands converge (the lamps report the new profile), no command FAILED, nothing executed
twice or under a deposed epoch, the standby takes over, and each post stays under 2 GiB.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.city import anchored, ledger
from citypost.config import load_config
from cluster.system import CitySystem
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, command_pb2, control_state_pb2
from security import identities
from security.identities import tls_identity
from security.pki import Kind
from tests.integration.failover_support import check_execution_log, wait_leader

pytestmark = pytest.mark.integration

POST_PSS_BOUND = 2 * 2**30
TRANSITION_AFTER_S = 45.0  # from the clock's origin to 23:00 local
STARTUP_ALLOWANCE_S = 120.0  # the clock's origin: the city must be live by then
CRASH_AFTER_TRANSITION_S = 5.0
OBSERVE_AFTER_TRANSITION_S = 150.0  # the group commands' TTL and their confirmations
# Every class must have new uplinks in the last this many seconds (bench.city: the
# longest gap of any class 0.9-3.5 s; room left for a busy machine).
FLOWING_WINDOW_S = 10.0
TAKEOVER_BOUND_S = 30.0  # generous: the whole city loads both cores


@pytest.fixture
def system(tmp_path: Path) -> Iterator[CitySystem]:
    config = anchored(
        load_config(overrides={"run_dir": str(tmp_path), "post.grpc_port": None}),
        startup_allowance_s=STARTUP_ALLOWANCE_S,
        transition_after_s=TRANSITION_AFTER_S,
    )
    assert config.city.scale == 1.0  # the default city, nothing scaled down
    the_system = CitySystem(config, tmp_path / "run")
    try:
        the_system.start()
        yield the_system
    finally:
        the_system.stop()


def _status(system: CitySystem, address: str) -> admin_pb2.PostStatus | None:
    with system.channel(address) as channel:
        try:
            status: admin_pb2.PostStatus = admin_pb2_grpc.PostAdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=5
            )
        except grpc.RpcError:
            return None
        return status


@pytest.mark.timeout(600)
async def test_the_whole_city_through_a_transition_and_a_leader_crash(
    system: CitySystem,
) -> None:
    assert system.network_server is not None and system.config.sim.origin is not None
    origin = system.config.sim.origin.timestamp()
    transition_at = origin + TRANSITION_AFTER_S  # wall clock
    assert time.time() < transition_at, "the city started too slowly to see the transition"
    async with system.etcd_client() as etcd:
        old, _ = await wait_leader(system, etcd, 60.0)
    pss: dict[str, int] = Counter()
    last_new: dict[str, float] = {}
    counts: dict[str, int] = {}
    crashed_at: float | None = None
    new = None
    while time.time() < transition_at + OBSERVE_AFTER_TRANSITION_S:
        await asyncio.sleep(2.0)
        if crashed_at is None and time.time() >= transition_at + CRASH_AFTER_TRANSITION_S:
            crashed_at = time.monotonic()
            assert await asyncio.to_thread(system.crash_post, old.name) > 1
            async with system.etcd_client() as etcd:
                new, _ = await wait_leader(system, etcd, TAKEOVER_BOUND_S, newer_than=old.epoch)
        for name, post in system.posts.items():
            if name == old.name and crashed_at is not None:
                continue
            status = await asyncio.to_thread(_status, system, post.address)
            if status is None:
                continue
            pss[name] = max(pss[name], status.memory_pss_bytes)
            if status.role != "leader":
                continue
            for cls, n in status.uplinks_by_class.items():
                if n > counts.get(cls, -1):
                    last_new[cls] = time.monotonic()
                counts[cls] = n

    assert new is not None and new.name != old.name
    published = system.network_server.stats().uplinks_by_class
    assert set(last_new) == set(published), "a class never reached the new leader"
    now = time.monotonic()
    stalled = {
        cls: round(now - at, 1) for cls, at in last_new.items() if now - at > FLOWING_WINDOW_S
    }
    assert not stalled, f"no uplink for longer than {FLOWING_WINDOW_S:g} s at the end: {stalled}"
    assert all(0 < b <= POST_PSS_BOUND for b in pss.values()), f"post memory (PSS): {dict(pss)}"

    observer = tls_identity(system.config, Kind.CHAOS, identities.CHAOS)
    records = await ledger(system.endpoints, system.config.city.name, observer)
    crash_ms = int((time.time() - (time.monotonic() - crashed_at)) * 1000)

    def described(r: control_state_pb2.CommandRecord) -> tuple[str, ...]:
        return (
            r.command.command_id[:8],
            r.issued_by,
            f"created {(r.created_at_ms - crash_ms) / 1000:+.1f} s from the crash",
            f"epoch {r.command.epoch}",
            f"attempts {r.attempts}",
            f"finished {(r.finished_at_ms - crash_ms) / 1000:+.1f} s",
            r.detail,
        )

    failed = [described(r) for r in records if r.status == command_pb2.FAILED]
    assert not failed, f"commands FAILED (old epoch {old.epoch}): {failed[:10]}"
    transition_ms = int(transition_at * 1000)
    night = [r for r in records if r.multicast and r.created_at_ms >= transition_ms - 5_000]
    assert night, "no group command for the 23:00 transition"
    outcome = Counter(command_pb2.CommandStatus.Name(r.status) for r in night)
    assert set(outcome) <= {"ACKED", "SUPERSEDED"}, f"the transition's group commands: {outcome}"
    check_execution_log(system.network_server.executions())
