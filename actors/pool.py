"""How the post talks to its actors, whatever runs them.

`ActorPool` is the seam: `actors.ray_api` implements it on Ray; the unit
tests implement it in-process. Calls to many actors go out together and come
back in order, each a result or the error that stood in its place, so one
restarting actor never hides the others' answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from protos.citypost.v1 import assets_pb2

ActorKey: TypeAlias = tuple[assets_pb2.AssetClass.ValueType, str]  # (asset class, group)


@dataclass(frozen=True)
class Call:
    key: ActorKey
    method: str  # an AssetActor method: ingest, tick, desired_commands, health, snapshot, restore
    args: tuple[Any, ...] = ()


class ActorPool(Protocol):
    def actor_keys(self) -> Iterable[ActorKey]: ...

    def call_many(self, calls: Sequence[Call], timeout_s: float) -> list[Any]:
        """Results in the order of `calls`; a failed call yields its exception as the value
        (an ActorUnavailableError when the actor died or did not answer in time)."""
        ...
