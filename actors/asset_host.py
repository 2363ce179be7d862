"""One Ray actor hosting several actor shells: (asset class, group) units of any class.

Each (class, group) keeps its own shell (`AssetActor`) and policy: its own
sequence, snapshot, restore and incarnation, so the post supervises and replays
each group as before. Hosting them together is for the machine: a Ray actor is a
process of ~45 MB and about 10 millicores idle, and a call costs ~2.5 ms of CPU
whatever its size (measured on 2 cores), so a few processes and one call per
host per pump round instead of one per group.

When the host's process dies, Ray restarts it and every shell comes back as a
new incarnation that refuses batches until restored: each group is restored
from its own snapshot, as if it alone had crashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.asset_actor import AssetActor, PolicyMaker
from actors.pool import ActorKey
from bridges.registry import Device
from citypost.config import AlarmsConfig
from citypost.errors import ActorCallError, CitypostError, NotFoundError

# The shell methods the post may call through a host; nothing else is reachable.
UNIT_METHODS = frozenset({"ingest", "desired_commands", "health", "snapshot", "restore"})

UnitCall = tuple[ActorKey, str, tuple[Any, ...]]  # ((class, group), method, args)
HostedUnit = tuple[ActorKey, Sequence[Device], PolicyMaker]


class AssetHost:
    def __init__(self, units: Sequence[HostedUnit], alarms: AlarmsConfig | None = None) -> None:
        self._units = {
            key: AssetActor(key[1], devices, make_policy, alarms)
            for key, devices, make_policy in units
        }

    def units(self) -> list[ActorKey]:
        return list(self._units)

    def call_batch(self, calls: Sequence[UnitCall]) -> list[Any]:
        """Each call's result in order; a call that failed yields its error as the value,
        so one group's bug never hides the others' answers."""
        return [self._call(key, method, args) for key, method, args in calls]

    def _call(self, key: ActorKey, method: str, args: tuple[Any, ...]) -> Any:
        unit = self._units.get(key)
        group = key[1]
        if unit is None:
            return NotFoundError(f"no unit {key!r} in this host")
        if method not in UNIT_METHODS:
            return NotFoundError(f"no unit method {method!r}")
        try:
            return getattr(unit, method)(*args)
        except CitypostError as exc:
            return exc
        except Exception as exc:  # a policy's bug stays that group's answer
            return ActorCallError(f"group {group!r}: {method} raised {type(exc).__name__}: {exc}")
