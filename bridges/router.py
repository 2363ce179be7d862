"""The uplink router: topic and raw JSON in, typed telemetry out, or a DecodeError.

Pure and synchronous (no I/O), so the edge's hot path is one function call
per message and every rejection has a reason the dead letters can count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridges import chirpstack
from bridges.layouts import LAYOUTS, decode_reading
from bridges.registry import DeviceRegistry
from citypost.config import EdgeConfig
from citypost.errors import DeadLetterReason, DecodeError
from protos.citypost.v1 import assets_pb2, telemetry_pb2

_UPLINK_KIND = "event/up"


class UplinkRouter:
    def __init__(
        self, registry: DeviceRegistry, edge: EdgeConfig, now_ms: Callable[[], int]
    ) -> None:
        self._registry = registry
        self._max_message = edge.max_message_bytes
        self._lora_max = edge.lora_max_payload_bytes
        self._now_ms = now_ms

    def route(self, topic: str, payload: bytes) -> telemetry_pb2.Telemetry:
        if len(payload) > self._max_message:
            raise DecodeError(
                DeadLetterReason.OVERSIZED,
                f"message of {len(payload)} bytes exceeds the {self._max_message}-byte limit",
            )
        where = chirpstack.parse_topic(topic)
        if where.kind != _UPLINK_KIND:
            raise DecodeError(DeadLetterReason.BAD_TOPIC, f"{where.kind} is not an uplink topic")
        uplink = chirpstack.parse_uplink(payload)
        dev_eui = uplink.device.dev_eui
        if dev_eui != where.dev_eui:
            raise DecodeError(
                DeadLetterReason.BAD_ENVELOPE,
                f"topic names device {where.dev_eui} but the event is from {dev_eui}",
            )
        device = self._registry.get(dev_eui)
        if device is None or device.application_id != where.application_id:
            raise DecodeError(
                DeadLetterReason.UNKNOWN_DEVICE,
                f"device {dev_eui} is not registered in application {where.application_id}",
            )
        if device.transport == assets_pb2.LORAWAN and len(uplink.data) > self._lora_max:
            raise DecodeError(
                DeadLetterReason.OVERSIZED,
                f"LoRaWAN payload of {len(uplink.data)} bytes exceeds {self._lora_max} bytes",
            )
        layout = LAYOUTS[device.asset_class]
        if uplink.f_port != layout.f_port:
            raise DecodeError(
                DeadLetterReason.WRONG_FPORT,
                f"{layout.reading} devices send on fPort {layout.f_port}, got {uplink.f_port}",
            )
        # The reading goes in as a dict: protobuf builds the oneof message from it.
        reading: dict[str, Any] = {layout.reading: decode_reading(layout, uplink.data)}
        received = self._now_ms()
        return telemetry_pb2.Telemetry(
            dev_eui=dev_eui,
            asset_class=device.asset_class,
            group=device.group,
            observed_at_ms=uplink.time_ms if uplink.time_ms is not None else received,
            received_at_ms=received,
            f_cnt=uplink.f_cnt,
            rssi=uplink.rssi or 0,
            snr=uplink.snr or 0.0,
            gateway_id=uplink.gateway_id,
            **reading,
        )
