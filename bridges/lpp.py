"""Cayenne LPP v1 codec: `[channel:u8][type:u8][value]` records, big-endian.

Decoded values are always tuples of floats: `raw / divisor`, which is the double nearest
the decimal reading (`0x0110` as a temperature decodes as exactly `27.2`), the same numbers
pycayennelpp returns. One element for scalars, three for accelerometer, gyrometer and GPS
(latitude °, longitude °, altitude m).

Encoding scales by the divisor and rounds to the nearest step, half away from zero
(`0.25` % humidity -> 0.5 %, `-0.125` analog -> -0.13). The range checked is the wire range
of the type (e.g. temperature -3276.8..3276.7 °C, GPS latitude ±838.8607°), not physical
plausibility; that is the caller's business.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from citypost.errors import LppError

HEADER_SIZE = 2  # channel byte + type byte


class LppType(IntEnum):
    DIGITAL_INPUT = 0
    DIGITAL_OUTPUT = 1
    ANALOG_INPUT = 2
    ANALOG_OUTPUT = 3
    ILLUMINANCE = 101
    PRESENCE = 102
    TEMPERATURE = 103
    HUMIDITY = 104
    ACCELEROMETER = 113
    BAROMETER = 115
    GYROMETER = 134
    GPS = 136


# A named tuple, not a frozen dataclass: built in one step, where a frozen dataclass's
# __init__ stores each field through object.__setattr__ (half the cost of decoding a record).
class LppValue(NamedTuple):
    channel: int
    type: LppType
    value: tuple[float, ...]  # 1 element for scalars, 3 for accelerometer/gyrometer/GPS


# --- the type table -------------------------------------------------------------------------

_Decoder = Callable[[bytes, int], tuple[float, ...]]  # (payload, value offset) -> floats
_Encoder = Callable[[int, list[int]], bytes]  # (channel, range-checked raw ints) -> record


@dataclass(frozen=True, slots=True)
class _Spec:
    type: LppType
    name: str  # for messages: "digital input"
    size: int  # value bytes, header excluded
    fields: tuple[tuple[int, int, int], ...]  # per field: divisor, lowest raw, highest raw
    decode: _Decoder
    encode: _Encoder


def _scalar(type_: LppType, code: str, divisor: int) -> tuple[_Decoder, _Encoder]:
    unpack_from = struct.Struct(">" + code).unpack_from
    pack = struct.Struct(">BB" + code).pack
    type_id = int(type_)

    def decode(buf: bytes, offset: int) -> tuple[float, ...]:
        return (unpack_from(buf, offset)[0] / divisor,)

    def encode(channel: int, raw: list[int]) -> bytes:
        return pack(channel, type_id, raw[0])

    return decode, encode


def _triple(type_: LppType, divisor: int) -> tuple[_Decoder, _Encoder]:
    unpack_from = struct.Struct(">hhh").unpack_from
    pack = struct.Struct(">BBhhh").pack
    type_id = int(type_)

    def decode(buf: bytes, offset: int) -> tuple[float, ...]:
        x, y, z = unpack_from(buf, offset)
        return (x / divisor, y / divisor, z / divisor)

    def encode(channel: int, raw: list[int]) -> bytes:
        return pack(channel, type_id, *raw)

    return decode, encode


def _gps() -> tuple[_Decoder, _Encoder]:
    # struct has no 24-bit code: each field is a signed high byte and an unsigned low 16 bits.
    unpack_from = struct.Struct(">bHbHbH").unpack_from
    pack = struct.Struct(">BBbHbHbH").pack
    type_id = int(LppType.GPS)

    def decode(buf: bytes, offset: int) -> tuple[float, ...]:
        lat_h, lat_l, lon_h, lon_l, alt_h, alt_l = unpack_from(buf, offset)
        return (
            (lat_h * 65536 + lat_l) / 10000,
            (lon_h * 65536 + lon_l) / 10000,
            (alt_h * 65536 + alt_l) / 100,
        )

    def encode(channel: int, raw: list[int]) -> bytes:
        lat, lon, alt = raw
        # >> is arithmetic, so the high byte keeps the sign; & keeps the low 16 bits.
        lo = 0xFFFF
        return pack(channel, type_id, lat >> 16, lat & lo, lon >> 16, lon & lo, alt >> 16, alt & lo)

    return decode, encode


def _spec(
    type_: LppType,
    sizes: tuple[int, ...],
    divisors: tuple[int, ...],
    signed: bool,
    codec: tuple[_Decoder, _Encoder],
) -> _Spec:
    fields = tuple(
        (d, -(1 << (8 * s - 1)), (1 << (8 * s - 1)) - 1) if signed else (d, 0, (1 << (8 * s)) - 1)
        for s, d in zip(sizes, divisors, strict=True)
    )
    name = type_.name.lower().replace("_", " ")
    return _Spec(type_, name, sum(sizes), fields, codec[0], codec[1])


def _one(type_: LppType, size: int, divisor: int, signed: bool) -> _Spec:
    code = {(1, False): "B", (2, False): "H", (2, True): "h"}[size, signed]
    return _spec(type_, (size,), (divisor,), signed, _scalar(type_, code, divisor))


def _three(type_: LppType, divisor: int) -> _Spec:
    return _spec(type_, (2, 2, 2), (divisor,) * 3, True, _triple(type_, divisor))


_SPECS: dict[int, _Spec] = {
    s.type: s
    for s in (
        _one(LppType.DIGITAL_INPUT, 1, 1, signed=False),
        _one(LppType.DIGITAL_OUTPUT, 1, 1, signed=False),
        _one(LppType.ANALOG_INPUT, 2, 100, signed=True),
        _one(LppType.ANALOG_OUTPUT, 2, 100, signed=True),
        _one(LppType.ILLUMINANCE, 2, 1, signed=False),
        _one(LppType.PRESENCE, 1, 1, signed=False),
        _one(LppType.TEMPERATURE, 2, 10, signed=True),
        _one(LppType.HUMIDITY, 1, 2, signed=False),
        _three(LppType.ACCELEROMETER, 1000),
        _one(LppType.BAROMETER, 2, 10, signed=False),
        _three(LppType.GYROMETER, 100),
        _spec(LppType.GPS, (3, 3, 3), (10000, 10000, 100), True, _gps()),
    )
}

# Hot-path lookup: indexed by the type byte, one entry per possible byte, no hashing.
_DECODE_TABLE: tuple[tuple[int, LppType, _Decoder] | None, ...] = tuple(
    (s.size, s.type, s.decode) if (s := _SPECS.get(i)) is not None else None for i in range(256)
)
_KNOWN_IDS = ", ".join(str(int(t)) for t in LppType)


def value_decoder(type: LppType) -> Callable[[bytes, int], tuple[float, ...]]:
    """The decoder of one value of `type` at an offset: for callers that know the layout."""
    return _SPECS[type].decode


def size_of(type: LppType) -> int:
    """Bytes of a value of `type`, without the 2 header bytes."""
    spec = _SPECS.get(type)
    if spec is None:
        raise LppError(f"unknown LPP type {type!r}; known types: {_KNOWN_IDS}")
    return spec.size


# --- decode ---------------------------------------------------------------------------------


def decode(payload: bytes) -> list[LppValue]:
    """Every record of `payload`, in order; LppError names the byte offset of what is wrong."""
    n = len(payload)
    if n == 0:
        raise LppError("empty LPP payload: expected at least one [channel][type][value] record")
    out: list[LppValue] = []
    append = out.append
    table = _DECODE_TABLE
    offset = 0
    while offset < n:
        if n - offset < HEADER_SIZE:
            raise LppError(
                f"truncated LPP record header at byte {offset}: 1 trailing byte "
                f"(0x{payload[offset]:02x}) after {len(out)} record(s), a record needs "
                f"a channel and a type byte (payload length {n})"
            )
        entry = table[payload[offset + 1]]
        if entry is None:
            type_id = payload[offset + 1]
            raise LppError(
                f"unknown LPP type {type_id} (0x{type_id:02x}) at byte {offset + 1} "
                f"(channel {payload[offset]}); known types: {_KNOWN_IDS}"
            )
        size, type_, decode_value = entry
        end = offset + HEADER_SIZE + size
        if end > n:
            raise LppError(
                f"truncated LPP {_SPECS[type_].name} value (type {int(type_)}) at byte "
                f"{offset + HEADER_SIZE} (channel {payload[offset]}): needs {size} bytes, "
                f"{n - offset - HEADER_SIZE} left (payload length {n})"
            )
        append(LppValue(payload[offset], type_, decode_value(payload, offset + HEADER_SIZE)))
        offset = end
    return out


# --- encode ---------------------------------------------------------------------------------


def _quantize(spec: _Spec, item: LppValue, index: int) -> list[int]:
    """The raw integers of `item`, rounded half away from zero and range-checked."""
    value = item.value
    fields = spec.fields
    try:
        count = len(value)
    except TypeError:
        count = -1
    if count != len(fields):
        raise LppError(
            f"LPP {spec.name} value #{index} (channel {item.channel}) must be a tuple of "
            f"{len(fields)} number(s), got {value!r}"
        )
    raws: list[int] = []
    for x, (divisor, low, high) in zip(value, fields):  # noqa: B905 - lengths checked above
        try:
            scaled = x * divisor
            raw = int(scaled)  # toward zero; NaN -> ValueError, inf -> OverflowError
            frac = scaled - raw  # exact for floats; TypeError for a str that int() accepted
        except (TypeError, ValueError, OverflowError):
            raise LppError(
                f"LPP {spec.name} value #{index} (channel {item.channel}) is not a finite "
                f"number: {x!r}"
            ) from None
        if frac >= 0.5:
            raw += 1
        elif frac <= -0.5:
            raw -= 1
        if not low <= raw <= high:
            raise LppError(
                f"LPP {spec.name} value #{index} (channel {item.channel}) out of range: "
                f"{x!r} not in [{low / divisor}, {high / divisor}]"
            )
        raws.append(raw)
    return raws


def encode(values: Iterable[LppValue]) -> bytes:
    """The LPP payload for `values`, in order; LppError if one does not fit its type."""
    parts: list[bytes] = []
    append = parts.append
    for index, item in enumerate(values):
        spec = _SPECS.get(item.type)
        if spec is None:
            raise LppError(
                f"LPP value #{index} (channel {item.channel}) has unknown type "
                f"{item.type!r}; known types: {_KNOWN_IDS}"
            )
        channel = item.channel
        if not isinstance(channel, int) or not 0 <= channel <= 255:
            raise LppError(
                f"LPP {spec.name} value #{index}: channel must be an integer 0..255, "
                f"got {channel!r}"
            )
        append(spec.encode(channel, _quantize(spec, item, index)))
    return b"".join(parts)
