"""The post's actors on Ray: the (class, group) units hosted by a few named Ray actors.

Every (asset class, group) stays a unit of its own (see `actors.asset_host`);
the pool maps each unit to the Ray actor hosting it and sends one call per
host for all the calls of a round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors import ray_api
from actors.asset_host import AssetHost, UnitCall
from actors.catalog import POLICIES
from actors.pool import ActorKey, Call
from bridges.registry import Device
from citypost.config import AlarmsConfig


def host_name(index: int) -> str:
    return f"host:{index}"


def unit_weight(devices: Sequence[Device]) -> float:
    """The uplinks per second a unit's devices send (a device without a declared period
    counted as one a minute): what its host spends its time on."""
    return sum(1.0 / d.report_interval_s if d.report_interval_s > 0 else 1 / 60 for d in devices)


def plan_hosts(
    groups: Mapping[ActorKey, Sequence[Device]], hosts: int
) -> dict[str, list[ActorKey]]:
    """Every unit on one of at most `hosts` hosts, balanced by their devices' uplink rate:
    the heaviest unit first, each onto the host carrying the least so far."""
    load = [0.0] * hosts
    plan: dict[str, list[ActorKey]] = {}
    heaviest_first = sorted(groups, key=lambda key: (-unit_weight(groups[key]), key))
    for key in heaviest_first:
        index = min(range(hosts), key=lambda i: (load[i], i))
        load[index] += unit_weight(groups[key])
        plan.setdefault(host_name(index), []).append(key)
    return {name: sorted(keys) for name, keys in sorted(plan.items())}


class RayActorPool:
    def __init__(self, hosts: Mapping[str, ray_api.Actor], units: Mapping[ActorKey, str]) -> None:
        self._hosts = dict(hosts)
        self._units = dict(units)  # unit -> its host's name

    @classmethod
    def spawn(
        cls,
        groups: Mapping[ActorKey, Sequence[Device]],
        *,
        hosts: int = 4,
        max_restarts: int = -1,
        alarms: AlarmsConfig | None = None,
    ) -> RayActorPool:
        """Create every host (Ray restarts a dead one; the post restores its units)."""
        plan = plan_hosts(groups, hosts)
        spawned = {
            name: ray_api.spawn(
                AssetHost,
                name,
                [(key, list(groups[key]), POLICIES[key[0]]) for key in keys],
                alarms,
                max_restarts=max_restarts,
                ready_timeout_s=None,
            )
            for name, keys in plan.items()
        }
        units = {key: name for name, keys in plan.items() for key in keys}
        return cls(spawned, units)

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
            batches.setdefault(self._units[call.key], []).append((call.key, call.method, call.args))
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
