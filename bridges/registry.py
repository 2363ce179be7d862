"""The device registry: what the edge knows about each device it may hear from.

In a real city this comes from provisioning; the simulated city builds it from
its model (fleet.population). Lookups are by devEui, on the hot path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from citypost.names import class_name as class_name  # re-exported: callers import it here
from protos.citypost.v1 import assets_pb2

AssetClass = assets_pb2.AssetClass
Transport = assets_pb2.Transport


def application_id(city: str, asset_class: assets_pb2.AssetClass.ValueType) -> str:
    """One network-server application per (city, class), with a stable UUID as ChirpStack uses."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"citypost:{city}:{class_name(asset_class)}"))


class RadioClass(StrEnum):
    """When a device can receive a downlink (LoRaWAN device classes), or IP."""

    A = "A"  # battery: only in RX1/RX2 right after one of its own uplinks
    C = "C"  # mains-powered: listens all the time (RX2 parameters); takes multicast
    IP = "IP"  # fibre or mobile modem: any time, no airtime


# By asset class, as the city's equipment is: lamp controllers and bollards are on the
# mains (class C, so a group can be reached by one multicast); meters and sensors run on
# batteries (class A); buses, cars, cameras and signals are on the fibre or a modem.
RADIO_CLASS: Final[Mapping[assets_pb2.AssetClass.ValueType, RadioClass]] = {
    AssetClass.STREET_LAMP: RadioClass.C,
    AssetClass.BOLLARD: RadioClass.C,
    AssetClass.WATER_METER: RadioClass.A,
    AssetClass.PARKING_SPOT: RadioClass.A,
    AssetClass.AIR_QUALITY: RadioClass.A,
    AssetClass.ROAD_WEATHER: RadioClass.A,
    AssetClass.TRAFFIC_SIGNAL: RadioClass.IP,
    AssetClass.CAMERA: RadioClass.IP,
    AssetClass.BUS: RadioClass.IP,
    AssetClass.COMPANY_CAR: RadioClass.IP,
}


def radio_class(asset_class: assets_pb2.AssetClass.ValueType) -> RadioClass:
    """KeyError-free: an unknown class is treated as class A, the most restrictive."""
    return RADIO_CLASS.get(asset_class, RadioClass.A)


@dataclass(frozen=True, slots=True)
class Device:
    dev_eui: str  # 16 lowercase hex characters
    name: str
    asset_class: assets_pb2.AssetClass.ValueType
    group: str  # the actor that owns it: one per (class, group)
    commune: str
    latitude: float
    longitude: float
    transport: assets_pb2.Transport.ValueType
    application_id: str
    # How often it reports, in the city's (simulated) seconds; 0: unknown. A command
    # confirmed by what the device reports, or waiting for its uplink (class A), cannot
    # be done sooner.
    report_interval_s: float = 0.0


class DeviceRegistry:
    """Devices by devEui, and by (class, group) for the actors."""

    def __init__(self, devices: Iterable[Device]) -> None:
        self._by_eui: dict[str, Device] = {}
        self._by_group: dict[tuple[assets_pb2.AssetClass.ValueType, str], list[Device]] = {}
        for device in devices:
            if device.dev_eui in self._by_eui:
                raise ValueError(f"duplicate devEui {device.dev_eui}")
            self._by_eui[device.dev_eui] = device
            self._by_group.setdefault((device.asset_class, device.group), []).append(device)

    def get(self, dev_eui: str) -> Device | None:
        return self._by_eui.get(dev_eui)

    def __len__(self) -> int:
        return len(self._by_eui)

    def __iter__(self) -> Iterator[Device]:
        return iter(self._by_eui.values())

    def group(self, asset_class: assets_pb2.AssetClass.ValueType, group: str) -> list[Device]:
        return list(self._by_group.get((asset_class, group), ()))

    def groups(self) -> dict[tuple[assets_pb2.AssetClass.ValueType, str], list[Device]]:
        return {key: list(members) for key, members in self._by_group.items()}

    def count_by_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self._by_eui.values():
            name = class_name(device.asset_class)
            counts[name] = counts.get(name, 0) + 1
        return counts
