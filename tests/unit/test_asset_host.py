"""A host's units answer each for itself; the pool sends one call per host and splits
the answers back in order."""

from __future__ import annotations

from typing import Any

import pytest

from actors import ray_api, ray_pool
from actors.asset_actor import Health, IngestResult
from actors.asset_host import AssetHost
from actors.pool import Call
from actors.ray_pool import RayActorPool, plan_hosts
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


def test_each_unit_has_its_own_state_and_a_bug_stays_in_its_group() -> None:
    host = AssetHost([("a", []), ("b", []), ("broken", [])], _maker)
    restored = host.call_batch([(g, "restore", (None,)) for g in ("a", "b", "broken")])
    assert all(isinstance(h, Health) and h.restored for h in restored)
    assert len({h.incarnation for h in restored}) == 3  # one incarnation per unit
    a, broken, b = host.call_batch(
        [
            ("a", "ingest", (1, b"", NOW_MS)),
            ("broken", "ingest", (1, b"", NOW_MS)),
            ("b", "ingest", (1, b"", NOW_MS)),
        ]
    )
    assert isinstance(a, IngestResult) and a.seq == 1
    assert isinstance(b, IngestResult) and b.seq == 1
    assert isinstance(broken, ActorCallError) and "ZeroDivisionError" in str(broken)
    assert host.call_batch([("b", "ingest", (1, b"", NOW_MS))])[0].duplicate


def test_only_unit_methods_of_known_groups_are_reachable() -> None:
    host = AssetHost([("a", [])], _maker)
    nobody, private = host.call_batch([("z", "health", ()), ("a", "_policy", ())])
    assert isinstance(nobody, NotFoundError) and "'z'" in str(nobody)
    assert isinstance(private, NotFoundError) and "_policy" in str(private)


def test_groups_of_a_class_share_hosts_round_robin_and_classes_never_mix() -> None:
    lamp = assets_pb2.STREET_LAMP
    keys = [(lamp, f"g{i}") for i in range(5)] + [(assets_pb2.BUS, "line-1")]
    one = plan_hosts(keys, 1)
    assert one == {"host:street_lamp/0": sorted(keys[:5]), "host:bus/0": [keys[5]]}
    two = plan_hosts(keys, 2)
    assert [len(two[f"host:street_lamp/{i}"]) for i in (0, 1)] == [3, 2]
    assert sorted(k for units in two.values() for k in units) == sorted(keys)


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
                out.append([f"{group}:{m}" for group, m, _ in batch])
        return out

    monkeypatch.setattr(ray_pool.ray_api, "call_many", call_many)
    results = pool.call_many(
        [Call((lamp, "b"), "health"), Call((bus, "x"), "health"), Call((lamp, "a"), "snapshot")],
        1.0,
    )
    assert results[0] == "b:health" and results[2] == "a:snapshot"
    assert isinstance(results[1], ActorUnavailableError)
    assert sorted(name for name, _ in sent) == ["host:bus/0", "host:street_lamp/0"]  # one each
