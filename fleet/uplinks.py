"""Each simulated device's uplinks, as its network server (or IP gateway) publishes them.

Pure: a device index and a simulated time in, a topic and ChirpStack v4 JSON
out. The network server publishes them; the ingest benchmark replays them.
Not thread-safe: the caller serialises access.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridges.chirpstack import DeviceInfo, build_uplink, uplink_topic
from bridges.layouts import Layout, encode_reading, layout_of
from bridges.registry import class_name
from fleet.population import City

FCNT_MODULO = 2**32


@dataclass(slots=True)
class DeviceWire:
    """Per-device wire state, built on first use."""

    info: DeviceInfo
    topic: str
    layout: Layout
    cls: str
    f_cnt: int = 0
    f_cnt_down: int = 0


class UplinkFactory:
    def __init__(self, city: City, city_name: str, rng: random.Random) -> None:
        self._devices = city.devices
        self._city_name = city_name
        self._rng = rng
        self._tenant = str(uuid.uuid5(uuid.NAMESPACE_URL, f"citypost:{city_name}"))
        self._wires: list[DeviceWire | None] = [None] * len(self._devices)

    def wire(self, i: int) -> DeviceWire:
        wire = self._wires[i]
        if wire is None:
            device = self._devices[i].device
            cls = class_name(device.asset_class)
            info = DeviceInfo(
                tenant_id=self._tenant,
                application_id=device.application_id,
                application_name=f"{self._city_name}-{cls}",
                device_profile_name=cls,
                device_name=device.name,
                dev_eui=device.dev_eui,
                tags={"group": device.group, "commune": device.commune},
            )
            wire = DeviceWire(
                info,
                uplink_topic(device.application_id, device.dev_eui),
                layout_of(device.asset_class),
                cls,
            )
            self._wires[i] = wire
        return wire

    def uplink(self, i: int, ts: float, via: str | None = None) -> tuple[str, bytes, str]:
        """Device i's next uplink at simulated ts: (topic, JSON, class name); f_cnt advances.
        `via`: the gateway that heard it, when not its best one (that one is down); the
        signal figures stay those of its best."""
        sim_device = self._devices[i]
        wire = self.wire(i)
        reading = sim_device.behaviour.reading(datetime.fromtimestamp(ts, UTC), self._rng)
        data = encode_reading(wire.layout, reading)
        radio = sim_device.radio
        kwargs: dict[str, Any] = {"dr": None}  # an IP device: no radio fields
        if radio is not None:
            kwargs = {
                "dr": radio.dr,
                "rssi": radio.rssi + round(self._rng.gauss(0, 2)),
                "snr": round(radio.snr + self._rng.gauss(0, 1), 1),
                "gateway_id": via or radio.gateway_id,
            }
        payload = build_uplink(
            wire.info, data, wire.layout.f_port, wire.f_cnt, time_ms=int(ts * 1000), **kwargs
        )
        wire.f_cnt = (wire.f_cnt + 1) % FCNT_MODULO
        return wire.topic, payload, wire.cls
