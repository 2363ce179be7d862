"""The map's view of the city: each asset's display state and each vehicle's position.

`display_state` reads one telemetry item the ISA-101 way (normal states in greys,
colour only for the abnormal; see operator.proto's DisplayState). `AssetBoard` is a
telemetry sink that keeps, per asset index (the registry ordered by devEui, the
rows of `AssetMap`), the latest state and position and a bounded log of which
indexes changed, so a watcher asks for what changed since its last sequence and
gets each asset once, at its latest. A watcher that fell behind the log gets a
snapshot. In memory only: both posts see the same uplinks, so either can serve it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from bridges.registry import Device
from protos.citypost.v1 import assets_pb2, operator_pb2, telemetry_pb2

DisplayState: TypeAlias = operator_pb2.DisplayState.ValueType
UNKNOWN = operator_pb2.DISPLAY_STATE_UNSPECIFIED
IDLE = operator_pb2.IDLE
ACTIVE = operator_pb2.ACTIVE
TRANSITION = operator_pb2.TRANSITION
ATTENTION = operator_pb2.ATTENTION
FAULT = operator_pb2.FAULT

DEFAULT_LOG = 200_000  # changes kept for watchers: a dusk switching every lamp fits


def display_state(item: telemetry_pb2.Telemetry) -> DisplayState:
    """What the reading says, as the map draws it."""
    kind = item.WhichOneof("reading")
    if kind == "lamp":
        lamp = item.lamp
        return FAULT if lamp.fault else ACTIVE if lamp.brightness_pct > 0 else IDLE
    if kind == "traffic_signal":
        signal = item.traffic_signal
        if signal.fault:
            return FAULT
        return ATTENTION if signal.phase == telemetry_pb2.FLASHING_AMBER else ACTIVE
    if kind == "bollard":
        bollard = item.bollard
        if bollard.fault:
            return FAULT
        return {
            telemetry_pb2.RAISED: ACTIVE,
            telemetry_pb2.LOWERED: IDLE,
            telemetry_pb2.MOVING: TRANSITION,
        }.get(bollard.position, UNKNOWN)
    if kind == "water_meter":
        meter = item.water_meter
        if meter.leak_suspected:
            return ATTENTION
        return ACTIVE if meter.litres_since_last > 0 else IDLE
    if kind == "parking":
        return ACTIVE if item.parking.occupied else IDLE
    if kind == "air_quality":
        return ACTIVE  # its index is judged on hourly means: the zone's alarm says it
    if kind == "camera":
        camera = item.camera
        if not camera.online:
            return FAULT
        quiet = camera.event in (telemetry_pb2.NO_EVENT, telemetry_pb2.CAMERA_EVENT_UNSPECIFIED)
        return ACTIVE if quiet else ATTENTION
    if kind == "road_weather":
        return ATTENTION if item.road_weather.ice_detected else ACTIVE
    if kind == "vehicle":
        return ACTIVE if item.vehicle.speed_kmh > 0 else IDLE
    return UNKNOWN


def map_id_of(devices: Sequence[Device]) -> str:
    """A digest of the map's rows (order, identity, class, place, group, commune)."""
    digest = hashlib.sha256()
    for d in devices:
        row = (
            f"{d.dev_eui},{d.asset_class},{d.latitude:.6f},{d.longitude:.6f},{d.group},{d.commune}"
        )
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def asset_map(devices: Sequence[Device]) -> operator_pb2.AssetMap:
    """The rows of the map, as columns (devices already in index order)."""
    groups: dict[str, int] = {}
    communes: dict[str, int] = {}
    out = operator_pb2.AssetMap(map_id=map_id_of(devices))
    out.dev_euis.extend(d.dev_eui for d in devices)
    out.asset_classes.extend(d.asset_class for d in devices)
    out.latitudes.extend(d.latitude for d in devices)
    out.longitudes.extend(d.longitude for d in devices)
    out.groups.extend(groups.setdefault(d.group, len(groups)) for d in devices)
    out.communes.extend(communes.setdefault(d.commune, len(communes)) for d in devices)
    out.group_names.extend(groups)
    out.commune_names.extend(communes)
    return out


@dataclass(frozen=True)
class Position:
    latitude: float
    longitude: float
    heading_deg: float


@dataclass(frozen=True)
class BoardChanges:
    """What a watcher gets: every asset (snapshot) or what changed after its sequence."""

    sequence: int
    snapshot: bool
    states: dict[int, DisplayState]  # index -> state (a snapshot: every index)
    positions: dict[int, Position]  # index -> position


VEHICLES = frozenset({assets_pb2.BUS, assets_pb2.COMPANY_CAR})


class AssetBoard:
    """A telemetry sink (bridges.sinks.TelemetrySink) keeping the map's states."""

    def __init__(self, devices: Iterable[Device], *, log_size: int = DEFAULT_LOG) -> None:
        self.devices = sorted(devices, key=lambda d: d.dev_eui)
        self.map_id = map_id_of(self.devices)
        self._index = {d.dev_eui: i for i, d in enumerate(self.devices)}
        self._vehicle = [d.asset_class in VEHICLES for d in self.devices]
        self._states = bytearray(len(self.devices))  # DisplayState values fit a byte
        self._positions: dict[int, Position] = {}
        self._sequence = 0
        self._log: deque[tuple[int, int]] = deque(maxlen=log_size)  # (sequence, index)
        self._lock = threading.Lock()  # submit runs on the uplink path's thread

    @property
    def sequence(self) -> int:
        with self._lock:
            return self._sequence

    def submit(self, batch: Sequence[telemetry_pb2.Telemetry]) -> None:
        with self._lock:
            for item in batch:
                index = self._index.get(item.dev_eui)
                if index is None:
                    continue
                changed = False
                state = display_state(item)
                if state != UNKNOWN and state != self._states[index]:
                    self._states[index] = state
                    changed = True
                if self._vehicle[index] and item.WhichOneof("reading") == "vehicle":
                    v = item.vehicle
                    self._positions[index] = Position(v.latitude, v.longitude, v.heading_deg)
                    changed = True
                if changed:
                    self._sequence += 1
                    self._log.append((self._sequence, index))

    def snapshot(self) -> BoardChanges:
        """Every asset's state and every vehicle's position, with the sequence they are at."""
        with self._lock:
            return self._snapshot()

    def since(self, sequence: int) -> BoardChanges:
        """What changed after `sequence` (each index once, at its latest); a snapshot when
        `sequence` is ahead of this board (another post's) or older than the log reaches."""
        with self._lock:
            oldest = self._log[0][0] if self._log else self._sequence + 1
            if not 0 <= sequence <= self._sequence or sequence + 1 < oldest:
                return self._snapshot()
            indexes: set[int] = set()
            for seq, index in reversed(self._log):
                if seq <= sequence:
                    break
                indexes.add(index)
            return BoardChanges(
                self._sequence,
                False,
                {i: _state(self._states[i]) for i in indexes if self._states[i] != UNKNOWN},
                {i: self._positions[i] for i in indexes if i in self._positions},
            )

    def _snapshot(self) -> BoardChanges:
        return BoardChanges(
            self._sequence,
            True,
            {i: _state(s) for i, s in enumerate(self._states)},
            dict(self._positions),
        )


def asset_states(map_id: str, changes: BoardChanges) -> operator_pb2.AssetStates:
    """`changes` as the message WatchAssetStates streams."""
    out = operator_pb2.AssetStates(
        map_id=map_id, sequence=changes.sequence, snapshot=changes.snapshot
    )
    if changes.snapshot:  # every index, in order: no indexes needed
        out.states.extend(changes.states[i] for i in range(len(changes.states)))
    else:
        out.indexes.extend(changes.states)
        out.states.extend(changes.states.values())
    for index, position in changes.positions.items():
        out.vehicle_indexes.append(index)
        out.vehicle_latitudes.append(position.latitude)
        out.vehicle_longitudes.append(position.longitude)
        out.vehicle_headings.append(position.heading_deg)
    return out


def _state(value: int) -> DisplayState:
    return operator_pb2.DisplayState.ValueType(value)
