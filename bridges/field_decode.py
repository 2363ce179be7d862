"""Decoding for field engineers: a payload or an uplink event in, plain JSON out.

No registry is needed: the asset class follows from the fPort (or is given),
so a payload copied off a gateway log can be read on the spot.
"""

from __future__ import annotations

from typing import Any

from bridges import chirpstack
from bridges.layouts import LAYOUTS, Layout, decode_reading
from bridges.lpp import decode as lpp_decode
from bridges.registry import AssetClass, class_name
from citypost.errors import DeadLetterReason, DecodeError, LppError


def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).removeprefix("0x")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise LppError(f"not hexadecimal: {text!r}") from exc


def class_by_name(name: str) -> AssetClass.ValueType:
    try:
        return AssetClass.Value(name.upper())
    except ValueError as exc:
        known = ", ".join(class_name(c) for c in LAYOUTS)
        raise DecodeError(
            DeadLetterReason.BAD_LAYOUT, f"unknown asset class {name!r}; known: {known}"
        ) from exc


def _layouts_for(f_port: int | None, asset_class: str | None) -> list[Layout]:
    if asset_class is not None:
        return [LAYOUTS[class_by_name(asset_class)]]
    if f_port is None:
        return []
    found = [layout for layout in LAYOUTS.values() if layout.f_port == f_port]
    if not found:
        raise DecodeError(DeadLetterReason.WRONG_FPORT, f"no asset class sends on fPort {f_port}")
    return found


def _readings(layouts: list[Layout], payload: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lpp": [
            {"channel": v.channel, "type": v.type.name.lower(), "value": list(v.value)}
            for v in lpp_decode(payload)
        ]
    }
    if layouts:
        out["asset_classes"] = [class_name(layout.asset_class) for layout in layouts]
        out["reading"] = decode_reading(layouts[0], payload)
    return out


def decode_lpp(
    text: str, *, f_port: int | None = None, asset_class: str | None = None
) -> dict[str, Any]:
    return _readings(_layouts_for(f_port, asset_class), parse_hex(text))


def decode_event(raw: bytes, *, asset_class: str | None = None) -> dict[str, Any]:
    uplink = chirpstack.parse_uplink(raw)
    result: dict[str, Any] = {
        "devEui": uplink.device.dev_eui,
        "applicationId": uplink.device.application_id,
        "fPort": uplink.f_port,
        "fCnt": uplink.f_cnt,
        "timeMs": uplink.time_ms,
        "rssi": uplink.rssi,
        "snr": uplink.snr,
    }
    result.update(_readings(_layouts_for(uplink.f_port, asset_class), uplink.data))
    return result
