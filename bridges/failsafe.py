"""The city's declared fail-safe states, and when the downlink gate applies them.

When no post can command (a leader was seen, then none could be confirmed in
etcd, e.g. etcd lost its quorum) for longer than `failover.failsafe_after_s`,
the gate, which sits next to the network server, sends every group its class's
fail-safe action once: lamps fully on (lit streets need no one), traffic
signals flashing amber (their own fail-safe mode), bollards lowered
(emergency vehicles are never locked out). A shorter outage changes nothing
visible: the leader demotes itself, devices hold their last state. When a
leader is confirmed again, the fail-safe ends; the new leader's policies
command from there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bridges.registry import DeviceRegistry
from citypost.errors import ConfigError
from protos.citypost.v1 import assets_pb2, command_pb2, telemetry_pb2

AC = assets_pb2.AssetClass
FAILSAFE_TTL_MS = 10 * 60 * 1000
FAILSAFE_ISSUER = "gate:failsafe"


def _action(asset_class: int) -> command_pb2.Command | None:
    if asset_class == AC.STREET_LAMP:
        return command_pb2.Command(set_brightness=command_pb2.SetBrightness(brightness_pct=100))
    if asset_class == AC.TRAFFIC_SIGNAL:
        return command_pb2.Command(
            set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER)
        )
    if asset_class == AC.BOLLARD:
        return command_pb2.Command(
            set_bollard_position=command_pb2.SetBollardPosition(position=telemetry_pb2.LOWERED)
        )
    return None  # sensors: nothing to command


def failsafe_commands(
    registry: DeviceRegistry, *, epoch: int, now_ms: int
) -> list[command_pb2.Command]:
    """One group command per (class, group) that declares a fail-safe action, under
    `epoch` (the highest the gate has seen, so devices take it) and fresh ids."""
    if epoch < 1:
        raise ConfigError("fail-safe commands need the epoch of a leader that was seen")
    out = []
    for asset_class, group in sorted(registry.groups()):
        command = _action(asset_class)
        if command is None:
            continue
        command.command_id = str(uuid.uuid4())
        command.epoch = epoch
        command.asset_class = asset_class
        command.target.group = group
        command.ttl_ms = FAILSAFE_TTL_MS
        command.issued_at_ms = now_ms
        command.issued_by = FAILSAFE_ISSUER
        out.append(command)
    return out


@dataclass
class FailsafeWatch:
    """When to enter and leave the fail-safe, from when a leader was last confirmed.

    Armed by the first leader seen: a city whose posts are still starting is not
    an outage.
    """

    bound_s: float
    last_confirmed: float | None = None
    active: bool = False
    entered: int = 0

    def leader_confirmed(self, now: float) -> bool:
        """A leader holds the key now. True if that ends a fail-safe."""
        self.last_confirmed = now
        ended, self.active = self.active, False
        return ended

    def due(self, now: float) -> bool:
        """True once per outage: the moment the fail-safe must be applied."""
        if self.active or self.last_confirmed is None:
            return False
        if now - self.last_confirmed <= self.bound_s:
            return False
        self.active = True
        self.entered += 1
        return True
