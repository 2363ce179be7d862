"""Per-class payload layouts: which Cayenne LPP channel carries which field.

This table is the one place that says how each asset class packs its reading
into an uplink. The edge decodes with it; the simulated devices encode with it.

| class | fPort | ch | LPP type | field | unit on the wire |
|---|---|---|---|---|---|
| street_lamp | 10 | 1 | analog output | brightness_pct | % |
| | | 2 | presence | presence_count | pedestrians since last uplink |
| | | 3 | analog input | power_w | W |
| | | 4 | digital input | fault | 0/1 |
| | | 5 | illuminance | ambient_lux | lux |
| | | 6 | illuminance | profile_id | LampProfile id it runs, 0 = a fixed level (unsigned 16-bit) |
| traffic_signal | 11 | 1 | digital input | phase | SignalPhase number |
| | | 2 | digital input | bus_priority_active | 0/1 |
| | | 3 | presence | queue_length | vehicles |
| | | 4 | digital input | fault | 0/1 |
| bollard | 12 | 1 | digital input | position | BollardPosition number |
| | | 2 | presence | vehicle_present | 0/1 |
| | | 3 | digital input | fault | 0/1 |
| water_meter | 13 | 1 | analog input | litres_since_last | hectolitres (0.01 hL = 1 L) |
| | | 2 | digital input | leak_suspected | 0/1 |
| | | 3 | analog input | battery_pct | % |
| parking_spot | 14 | 1 | presence | occupied | 0/1 |
| | | 2 | analog input | battery_pct | % |
| air_quality | 15 | 1-4 | analog input | no2, o3, pm10, pm25 (ug/m3) | tens of ug/m3 |
| | | 5 | temperature | temperature_c | °C |
| | | 6 | humidity | humidity_pct | % |
| camera | 16 | 1 | digital input | online | 0/1 |
| | | 2 | analog input | people_count | hundreds |
| | | 3 | analog input | vehicle_count | hundreds |
| | | 4 | digital input | event | CameraEvent number |
| road_weather | 17 | 1 | temperature | road_temperature_c | °C |
| | | 2 | temperature | air_temperature_c | °C |
| | | 3 | humidity | humidity_pct | % |
| | | 4 | digital input | ice_detected | 0/1 |
| bus, company_car | 18 | 1 | GPS | latitude, longitude, altitude_m | °, °, m |
| | | 2 | analog input | speed_kmh | km/h |
| | | 3 | analog input | heading_deg | tens of degrees |
| | | 4 | digital input | line | bus line number |
| | | 5 | analog input | delay_s | tens of seconds |

A channel may be left out (the field keeps its default); a channel the class
does not have, or a value of the wrong LPP type, makes the uplink a dead letter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

from bridges.lpp import LppType, LppValue, size_of, value_decoder
from bridges.lpp import decode as lpp_decode
from bridges.lpp import encode as lpp_encode
from citypost.errors import DeadLetterReason, DecodeError
from protos.citypost.v1 import assets_pb2, telemetry_pb2

AssetClass = assets_pb2.AssetClass
Kind = Literal["float", "int", "bool", "enum"]


@dataclass(frozen=True, slots=True)
class Field:
    channel: int
    lpp_type: LppType
    names: tuple[str, ...]  # reading fields; three for GPS
    kind: Kind = "float"
    # reading value = LPP value x scale (so a scale of 100 packs hectolitres into litres)
    scale: float = 1.0
    enum_values: frozenset[int] = frozenset()


def _converter(field: Field) -> Callable[[float], float | int | bool] | None:
    scale, channel, name = field.scale, field.channel, field.names[0]
    if field.kind == "float":
        return None if scale == 1 else lambda raw: raw * scale
    if field.kind == "bool":
        return lambda raw: raw != 0

    def to_int(raw: float) -> int:
        number = round(raw * scale)
        if number < 0:
            raise DecodeError(DeadLetterReason.BAD_LAYOUT, f"channel {channel}: {name} is negative")
        if field.kind == "enum" and number not in field.enum_values:
            raise DecodeError(
                DeadLetterReason.BAD_LAYOUT, f"channel {channel}: {number} is not a valid {name}"
            )
        return number

    return to_int


# Per channel, what decoding needs on the hot path: the expected LPP type byte, the
# value size and decoder, the reading fields, and a converter (None when the LPP
# float is the value as is).
_Converter = Callable[[float], float | int | bool] | None
_Plan = dict[
    int, tuple[int, int, Callable[[bytes, int], tuple[float, ...]], tuple[str, ...], _Converter]
]


@dataclass(frozen=True)
class Layout:
    asset_class: assets_pb2.AssetClass.ValueType
    f_port: int
    reading: str  # the Telemetry oneof field that holds this class's reading
    fields: tuple[Field, ...]
    plan: _Plan = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan: _Plan = {
            f.channel: (
                int(f.lpp_type),
                size_of(f.lpp_type),
                value_decoder(f.lpp_type),
                f.names,
                _converter(f),
            )
            for f in self.fields
        }
        object.__setattr__(self, "plan", plan)

    def field_for(self, channel: int) -> Field | None:
        return next((f for f in self.fields if f.channel == channel), None)


def _enum(values: Any) -> frozenset[int]:
    return frozenset(v.number for v in values.DESCRIPTOR.values if v.number != 0)


_A_IN, _A_OUT = LppType.ANALOG_INPUT, LppType.ANALOG_OUTPUT
_D_IN, _PRESENCE = LppType.DIGITAL_INPUT, LppType.PRESENCE
_TEMP, _HUM = LppType.TEMPERATURE, LppType.HUMIDITY

_VEHICLE_FIELDS = (
    Field(1, LppType.GPS, ("latitude", "longitude", "altitude_m")),
    Field(2, _A_IN, ("speed_kmh",)),
    Field(3, _A_IN, ("heading_deg",), scale=10),
    Field(4, _D_IN, ("line",), "int"),
    Field(5, _A_IN, ("delay_s",), scale=10),
)

LAYOUTS: Mapping[assets_pb2.AssetClass.ValueType, Layout] = {
    layout.asset_class: layout
    for layout in (
        Layout(
            AssetClass.STREET_LAMP,
            10,
            "lamp",
            (
                Field(1, _A_OUT, ("brightness_pct",)),
                Field(2, _PRESENCE, ("presence_count",), "int"),
                Field(3, _A_IN, ("power_w",)),
                Field(4, _D_IN, ("fault",), "bool"),
                Field(5, LppType.ILLUMINANCE, ("ambient_lux",)),
                Field(6, LppType.ILLUMINANCE, ("profile_id",), "int"),
            ),
        ),
        Layout(
            AssetClass.TRAFFIC_SIGNAL,
            11,
            "traffic_signal",
            (
                Field(1, _D_IN, ("phase",), "enum", enum_values=_enum(telemetry_pb2.SignalPhase)),
                Field(2, _D_IN, ("bus_priority_active",), "bool"),
                Field(3, _PRESENCE, ("queue_length",), "int"),
                Field(4, _D_IN, ("fault",), "bool"),
            ),
        ),
        Layout(
            AssetClass.BOLLARD,
            12,
            "bollard",
            (
                Field(
                    1,
                    _D_IN,
                    ("position",),
                    "enum",
                    enum_values=_enum(telemetry_pb2.BollardPosition),
                ),
                Field(2, _PRESENCE, ("vehicle_present",), "bool"),
                Field(3, _D_IN, ("fault",), "bool"),
            ),
        ),
        Layout(
            AssetClass.WATER_METER,
            13,
            "water_meter",
            (
                Field(1, _A_IN, ("litres_since_last",), scale=100),
                Field(2, _D_IN, ("leak_suspected",), "bool"),
                Field(3, _A_IN, ("battery_pct",)),
            ),
        ),
        Layout(
            AssetClass.PARKING_SPOT,
            14,
            "parking",
            (
                Field(1, _PRESENCE, ("occupied",), "bool"),
                Field(2, _A_IN, ("battery_pct",)),
            ),
        ),
        Layout(
            AssetClass.AIR_QUALITY,
            15,
            "air_quality",
            (
                Field(1, _A_IN, ("no2_ugm3",), scale=10),
                Field(2, _A_IN, ("o3_ugm3",), scale=10),
                Field(3, _A_IN, ("pm10_ugm3",), scale=10),
                Field(4, _A_IN, ("pm25_ugm3",), scale=10),
                Field(5, _TEMP, ("temperature_c",)),
                Field(6, _HUM, ("humidity_pct",)),
            ),
        ),
        Layout(
            AssetClass.CAMERA,
            16,
            "camera",
            (
                Field(1, _D_IN, ("online",), "bool"),
                Field(2, _A_IN, ("people_count",), "int", scale=100),
                Field(3, _A_IN, ("vehicle_count",), "int", scale=100),
                Field(4, _D_IN, ("event",), "enum", enum_values=_enum(telemetry_pb2.CameraEvent)),
            ),
        ),
        Layout(
            AssetClass.ROAD_WEATHER,
            17,
            "road_weather",
            (
                Field(1, _TEMP, ("road_temperature_c",)),
                Field(2, _TEMP, ("air_temperature_c",)),
                Field(3, _HUM, ("humidity_pct",)),
                Field(4, _D_IN, ("ice_detected",), "bool"),
            ),
        ),
        Layout(AssetClass.BUS, 18, "vehicle", _VEHICLE_FIELDS),
        Layout(AssetClass.COMPANY_CAR, 18, "vehicle", _VEHICLE_FIELDS),
    )
}


def layout_of(asset_class: assets_pb2.AssetClass.ValueType) -> Layout:
    return LAYOUTS[asset_class]


def decode_reading(layout: Layout, payload: bytes) -> dict[str, float | int | bool]:
    """LPP payload -> the class's reading fields; raises DecodeError (BAD_LPP or BAD_LAYOUT).

    The fast path reads records straight into fields, since the layout says
    what each channel must hold; at the first surprise it hands the payload to
    the checked path, which finds the exact fault and says where it is.
    """
    plan = layout.plan
    reading: dict[str, float | int | bool] = {}
    n = len(payload)
    offset = 0
    while offset < n:
        entry = plan.get(payload[offset])
        if entry is None or n - offset < 2:
            return _decode_reading_checked(layout, payload)
        type_id, size, decode_value, names, convert = entry
        start = offset + 2
        offset = start + size
        if payload[start - 1] != type_id or offset > n:
            return _decode_reading_checked(layout, payload)
        values = decode_value(payload, start)
        if convert is None:
            for name, raw in zip(names, values, strict=True):
                reading[name] = raw
        else:
            for name, raw in zip(names, values, strict=True):
                reading[name] = convert(raw)
    if not reading:
        return _decode_reading_checked(layout, payload)
    return reading


def _decode_reading_checked(layout: Layout, payload: bytes) -> dict[str, float | int | bool]:
    reading: dict[str, float | int | bool] = {}
    for item in lpp_decode(payload):
        field = layout.field_for(item.channel)
        if field is None:
            raise DecodeError(
                DeadLetterReason.BAD_LAYOUT,
                f"channel {item.channel} is not part of the {layout.reading} layout",
            )
        if item.type != field.lpp_type:
            raise DecodeError(
                DeadLetterReason.BAD_LAYOUT,
                f"channel {item.channel} must be {field.lpp_type.name}, got {item.type.name}",
            )
        convert = _converter(field)
        for name, raw in zip(field.names, item.value, strict=True):
            reading[name] = raw if convert is None else convert(raw)
    return reading


def encode_reading(layout: Layout, reading: Mapping[str, float | int | bool]) -> bytes:
    """The class's reading fields -> LPP payload; fields left out are not sent."""
    values = []
    for field in layout.fields:
        if not all(name in reading for name in field.names):
            continue
        raw = tuple(float(reading[name]) / field.scale for name in field.names)
        values.append(LppValue(field.channel, field.lpp_type, raw))
    return lpp_encode(values)
