"""The post's actors on Ray: one named AssetActor per (asset class, group)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors import ray_api
from actors.asset_actor import AssetActor
from actors.catalog import POLICIES, actor_name
from actors.pool import ActorKey, Call
from bridges.registry import Device


class RayActorPool:
    def __init__(self, actors: Mapping[ActorKey, ray_api.Actor]) -> None:
        self._actors = dict(actors)

    @classmethod
    def spawn(
        cls, groups: Mapping[ActorKey, Sequence[Device]], *, max_restarts: int = -1
    ) -> RayActorPool:
        """Create every actor (Ray restarts a dead one; the post restores its state)."""
        actors = {
            key: ray_api.spawn(
                AssetActor,
                actor_name(*key),
                key[1],
                list(devices),
                POLICIES[key[0]],
                max_restarts=max_restarts,
                ready_timeout_s=None,
            )
            for key, devices in groups.items()
        }
        return cls(actors)

    def actor_keys(self) -> Iterable[ActorKey]:
        return list(self._actors)

    def actor(self, key: ActorKey) -> ray_api.Actor:
        return self._actors[key]

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        requests = [(self._actors[call.key], call.method, call.args) for call in calls]
        return ray_api.call_many(requests, timeout_s)
