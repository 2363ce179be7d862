"""A host's units answer each for itself; the pool sends one call per host and splits
the answers back in order."""

from __future__ import annotations

from typing import Any

import pytest

from actors import ray_api, ray_pool
from actors.asset_actor import Health, IngestResult
from actors.asset_host import AssetHost
from actors.pool import Call
from actors.ray_pool import RayActorPool, plan_hosts, unit_weight
from bridges.registry import Device
from citypost.errors import ActorCallError, ActorUnavailableError, NotFoundError
from protos.citypost.v1 import assets_pb2
from tests.unit.test_asset_actor import CountingPolicy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NOW_MS = 1_800_000_000_000


class BrokenPolicy(CountingPolicy):
    def on_tick(self, now: Any) -> list[Any]:
        raise ZeroDivisionError("a bug in one group's policy")


def _maker(group: str, devices: Any) -> CountingPolicy:
    return BrokenPolicy(group, devices) if group == "broken" else CountingPolicy(group, devices)


LAMP, BUS = assets_pb2.STREET_LAMP, assets_pb2.BUS
A, B, BROKEN = (LAMP, "a"), (LAMP, "b"), (LAMP, "broken")


def test_each_unit_has_its_own_state_and_a_bug_stays_in_its_group() -> None:
    # Units of two classes may share a group's name: the class tells them apart.
    bus_a = (BUS, "a")
    host = AssetHost([(key, [], _maker) for key in (A, B, BROKEN, bus_a)])
    restored = host.call_batch([(k, "restore", (None,)) for k in (A, B, BROKEN, bus_a)])
    assert all(isinstance(h, Health) and h.restored for h in restored)
    assert len({h.incarnation for h in restored}) == 4  # one incarnation per unit
    a, broken, b = host.call_batch(
        [
            (A, "ingest", (1, b"", NOW_MS)),
            (BROKEN, "ingest", (1, b"", NOW_MS)),
            (B, "ingest", (1, b"", NOW_MS)),
        ]
    )
    assert isinstance(a, IngestResult) and a.seq == 1
    assert isinstance(b, IngestResult) and b.seq == 1
    assert isinstance(broken, ActorCallError) and "ZeroDivisionError" in str(broken)
    assert host.call_batch([(B, "ingest", (1, b"", NOW_MS))])[0].duplicate
    assert not host.call_batch([(bus_a, "ingest", (1, b"", NOW_MS))])[0].duplicate


def test_only_unit_methods_of_known_units_are_reachable() -> None:
    host = AssetHost([(A, [], _maker)])
    nobody, private = host.call_batch([((LAMP, "z"), "health", ()), (A, "_policy", ())])
    assert isinstance(nobody, NotFoundError) and "'z'" in str(nobody)
    assert isinstance(private, NotFoundError) and "_policy" in str(private)


def _devices(n: int, period_s: float) -> list[Device]:
    return [
        Device(
            dev_eui=f"{i:016x}",
            name=f"d{i}",
            asset_class=LAMP,
            group="g",
            commune="Dijon",
            latitude=47.3,
            longitude=5.0,
            transport=assets_pb2.LORAWAN,
            application_id="app",
            report_interval_s=period_s,
        )
        for i in range(n)
    ]


def test_units_are_spread_over_the_hosts_by_their_uplink_rate_each_on_one_host() -> None:
    # 40 lamps reporting every 900 s weigh less than 4 buses every 10 s.
    groups = {(LAMP, f"g{i}"): _devices(40, 900.0) for i in range(6)} | {
        (BUS, f"line-{i}"): _devices(4, 10.0) for i in range(3)
    }
    plan = plan_hosts(groups, 2)
    assert sorted(k for units in plan.values() for k in units) == sorted(groups)  # each once
    loads = [sum(unit_weight(groups[k]) for k in units) for units in plan.values()]
    assert len(plan) == 2 and max(loads) - min(loads) <= max(map(unit_weight, groups.values()))
    assert plan_hosts(groups, 1) == {"host:0": sorted(groups)}
    assert len(plan_hosts(groups, 20)) == len(groups)  # never more hosts than units


def test_the_pool_batches_per_host_and_a_dead_host_fails_only_its_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lamp, bus = assets_pb2.STREET_LAMP, assets_pb2.BUS
    hosts = {n: ray_api.Actor(n, "ns", None) for n in ("host:street_lamp/0", "host:bus/0")}
    units = {
        (lamp, "a"): "host:street_lamp/0",
        (lamp, "b"): "host:street_lamp/0",
        (bus, "x"): "host:bus/0",
    }
    pool = RayActorPool(hosts, units)
    sent: list[tuple[str, list[Any]]] = []

    def call_many(
        requests: list[tuple[ray_api.Actor, str, tuple[Any, ...]]], timeout_s: float
    ) -> list[Any]:
        out: list[Any] = []
        for actor, method, (batch,) in requests:
            assert method == "call_batch"
            sent.append((actor.name, batch))
            if actor.name == "host:bus/0":
                out.append(ActorUnavailableError("host:bus/0 died"))
            else:
                out.append([f"{key[1]}:{m}" for key, m, _ in batch])
        return out

    monkeypatch.setattr(ray_pool.ray_api, "call_many", call_many)
    results = pool.call_many(
        [Call((lamp, "b"), "health"), Call((bus, "x"), "health"), Call((lamp, "a"), "snapshot")],
        1.0,
    )
    assert results[0] == "b:health" and results[2] == "a:snapshot"
    assert isinstance(results[1], ActorUnavailableError)
    assert sorted(name for name, _ in sent) == ["host:bus/0", "host:street_lamp/0"]  # one each
