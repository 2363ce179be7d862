"""Group commands confirmed by the state the devices report.

A multicast is unconfirmed on air: no device acknowledges it. A group command
is therefore done when the group's devices report, in their uplinks, the state
it asked for: the profile a lamp runs (its `profile_id`), the fixed level it
holds, the position of a bollard. `confirms` is that test, pure. `Confirmations`
keeps, for every multicast command still open, which devices showed it: the
edge's thread feeds it every telemetry batch (it is a telemetry sink), the
post's loop reads the counts. Both posts keep one, so a standby promoted in
the middle of a convergence already knows who confirmed.

Only uplinks received after the command was watched count: an uplink that
shows the commanded state is proof enough, whenever the device reached it (a
lamp already running the new profile needs nothing more).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from bridges.registry import DeviceRegistry, RadioClass, radio_class
from post.command_ledger import STATE_ACTIONS
from protos.citypost.v1 import command_pb2, control_state_pb2, telemetry_pb2

# A level matches within the wire's resolution (LPP analog output: 0.01).
_LEVEL_TOLERANCE = 0.006
# The actions a device's uplinks show; others (signal priority, signal mode: on IP,
# acknowledged) are confirmed by acks only.
CONFIRMABLE = STATE_ACTIONS


def confirms(command: command_pb2.Command, item: telemetry_pb2.Telemetry) -> bool:
    """Does this reading show the device in the state `command` asks for?"""
    action = command.WhichOneof("action")
    reading = item.WhichOneof("reading")
    if action == "set_lamp_profile" and reading == "lamp":
        return item.lamp.profile_id == command.set_lamp_profile.profile_id
    if action == "set_brightness" and reading == "lamp":
        wanted = command.set_brightness.brightness_pct
        return (
            item.lamp.profile_id == 0 and abs(item.lamp.brightness_pct - wanted) <= _LEVEL_TOLERANCE
        )
    if action == "set_bollard_position" and reading == "bollard":
        return item.bollard.position == command.set_bollard_position.position
    return False


def goes_by_multicast(command: command_pb2.Command) -> bool:
    """A group command to class C devices whose effect their uplinks show."""
    return (
        command.target.WhichOneof("kind") == "group"
        and radio_class(command.asset_class) is RadioClass.C
        and command.WhichOneof("action") in CONFIRMABLE
    )


class Confirmations:
    """Who confirmed each open multicast command. Thread-safe."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._commands: dict[str, command_pb2.Command] = {}
        # (asset class, group) -> ids of the open commands to it
        self._by_group: dict[tuple[int, str], list[str]] = {}
        self._seen: dict[str, set[str]] = {}  # command id -> devEuis that confirmed

    def watch(self, record: control_state_pb2.CommandRecord) -> None:
        """Start counting for a multicast command (idempotent: a re-send keeps the count)."""
        command = record.command
        command_id = command.command_id
        with self._lock:
            if command_id in self._commands:
                return
            self._commands[command_id] = command
            key = (command.asset_class, command.target.group)
            self._by_group.setdefault(key, []).append(command_id)
            self._seen[command_id] = set()

    def forget(self, command_id: str) -> None:
        with self._lock:
            command = self._commands.pop(command_id, None)
            self._seen.pop(command_id, None)
            if command is None:
                return
            key = (command.asset_class, command.target.group)
            ids = self._by_group.get(key, [])
            if command_id in ids:
                ids.remove(command_id)
            if not ids:
                self._by_group.pop(key, None)

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        """A telemetry batch from the edge (its thread): note who shows an open command."""
        if not self._by_group:
            return  # the usual case: nothing to confirm, no lock taken
        with self._lock:
            for item in batch:
                device = self._registry.get(item.dev_eui)
                if device is None:
                    continue
                for command_id in self._by_group.get((device.asset_class, device.group), ()):
                    if confirms(self._commands[command_id], item):
                        self._seen[command_id].add(item.dev_eui)

    def confirmed(self, command_id: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._seen.get(command_id, ()))

    def count(self, command_id: str) -> int:
        with self._lock:
            return len(self._seen.get(command_id, ()))

    def watching(self) -> int:
        with self._lock:
            return len(self._commands)
