"""The post's actors on Ray: each asset class's groups hosted by a few named Ray actors.

Every (asset class, group) stays a unit of its own (see `actors.asset_host`);
the pool maps each unit to the Ray actor hosting it and sends one call per
host for all the calls of a round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors import ray_api
from actors.asset_host import AssetHost, UnitCall
from actors.catalog import POLICIES, AssetClass
from actors.pool import ActorKey, Call
from bridges.registry import Device
from protos.citypost.v1 import assets_pb2


def host_name(asset_class: AssetClass, index: int) -> str:
    return f"host:{assets_pb2.AssetClass.Name(asset_class).lower()}/{index}"


def plan_hosts(keys: Iterable[ActorKey], hosts_per_class: int) -> dict[str, list[ActorKey]]:
    """The units of each class spread round-robin over at most `hosts_per_class` hosts."""
    by_class: dict[AssetClass, list[ActorKey]] = {}
    for key in sorted(keys):
        by_class.setdefault(key[0], []).append(key)
    plan: dict[str, list[ActorKey]] = {}
    for asset_class, units in by_class.items():
        for i, key in enumerate(units):
            plan.setdefault(host_name(asset_class, i % hosts_per_class), []).append(key)
    return plan


class RayActorPool:
    def __init__(self, hosts: Mapping[str, ray_api.Actor], units: Mapping[ActorKey, str]) -> None:
        self._hosts = dict(hosts)
        self._units = dict(units)  # unit -> its host's name

    @classmethod
    def spawn(
        cls,
        groups: Mapping[ActorKey, Sequence[Device]],
        *,
        hosts_per_class: int = 1,
        max_restarts: int = -1,
    ) -> RayActorPool:
        """Create every host (Ray restarts a dead one; the post restores its units)."""
        plan = plan_hosts(groups, hosts_per_class)
        hosts = {
            name: ray_api.spawn(
                AssetHost,
                name,
                [(key[1], list(groups[key])) for key in keys],
                POLICIES[keys[0][0]],
                max_restarts=max_restarts,
                ready_timeout_s=None,
            )
            for name, keys in plan.items()
        }
        units = {key: name for name, keys in plan.items() for key in keys}
        return cls(hosts, units)

    def actor_keys(self) -> Iterable[ActorKey]:
        return list(self._units)

    def actor(self, key: ActorKey) -> ray_api.Actor:
        """The Ray actor hosting the unit `key`."""
        return self._hosts[self._units[key]]

    def hosts(self) -> list[ray_api.Actor]:
        return list(self._hosts.values())

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        batches: dict[str, list[UnitCall]] = {}
        for call in calls:
            batches.setdefault(self._units[call.key], []).append(
                (call.key[1], call.method, call.args)
            )
        names = list(batches)
        answers = ray_api.call_many(
            [(self._hosts[n], "call_batch", (batches[n],)) for n in names], timeout_s
        )
        by_host = dict(zip(names, answers, strict=True))
        taken = dict.fromkeys(names, 0)
        results: list[Any] = []
        for call in calls:
            name = self._units[call.key]
            answer = by_host[name]
            if isinstance(answer, BaseException):
                results.append(answer)  # the host failed: every call it carried did
            else:
                results.append(answer[taken[name]])
                taken[name] += 1
        return results
