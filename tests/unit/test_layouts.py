import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.layouts import LAYOUTS, decode_reading, encode_reading, layout_of
from bridges.lpp import LppType, LppValue, encode
from citypost.errors import DeadLetterReason, DecodeError
from protos.citypost.v1 import assets_pb2, telemetry_pb2

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass


def test_every_asset_class_has_a_layout_whose_fields_exist_in_its_reading() -> None:
    classes = {v.number for v in AC.DESCRIPTOR.values if v.number != 0}
    assert set(LAYOUTS) == classes
    for layout in LAYOUTS.values():
        message = telemetry_pb2.Telemetry.DESCRIPTOR.fields_by_name[layout.reading].message_type
        for field in layout.fields:
            for name in field.names:
                assert name in message.fields_by_name, (layout.reading, name)
        channels = [f.channel for f in layout.fields]
        assert len(channels) == len(set(channels))


def test_lamp_reading_round_trips() -> None:
    layout = layout_of(AC.STREET_LAMP)
    reading = {
        "brightness_pct": 35.0,
        "presence_count": 4,
        "power_w": 21.5,
        "fault": True,
        "ambient_lux": 3.0,
        "profile_id": 49784,
    }
    assert decode_reading(layout, encode_reading(layout, reading)) == reading


def test_a_full_lamp_uplink_fits_the_smallest_lora_payload() -> None:
    layout = layout_of(AC.STREET_LAMP)
    largest = {
        "brightness_pct": 100.0,
        "presence_count": 255,
        "power_w": 327.67,
        "fault": True,
        "ambient_lux": 65535.0,
        "profile_id": 65535,
    }
    payload = encode_reading(layout, largest)
    assert len(payload) == 22 <= 51  # EU868 DR0-2
    assert payload[-4:].hex() == "0665ffff"  # ch 6 illuminance: the profile id, unsigned 16-bit
    decoded = decode_reading(layout, payload)
    assert decoded["profile_id"] == 65535 and isinstance(decoded["profile_id"], int)
    # The edge builds the protobuf reading from the decoded fields.
    assert telemetry_pb2.LampReading(**decoded).profile_id == 65535  # type: ignore[arg-type]


def test_scaled_fields_pack_large_values() -> None:
    layout = layout_of(AC.WATER_METER)
    # 1,234 litres do not fit an analog input (max 327.67) unscaled.
    decoded = decode_reading(layout, encode_reading(layout, {"litres_since_last": 1234.0}))
    assert decoded["litres_since_last"] == pytest.approx(1234.0)


def test_bus_gps_decodes_into_three_fields() -> None:
    layout = layout_of(AC.BUS)
    reading = {"latitude": 47.3220, "longitude": 5.0415, "altitude_m": 245.5, "line": 3}
    decoded = decode_reading(layout, encode_reading(layout, reading))
    assert decoded["latitude"] == pytest.approx(47.322)
    assert decoded["longitude"] == pytest.approx(5.0415)
    assert decoded["line"] == 3


@given(
    brightness=st.floats(0, 100),
    presence=st.integers(0, 255),
    lux=st.integers(0, 65535),
    profile_id=st.integers(0, 65535),
)
def test_lamp_round_trip_within_resolution(
    brightness: float, presence: int, lux: int, profile_id: int
) -> None:
    layout = layout_of(AC.STREET_LAMP)
    decoded = decode_reading(
        layout,
        encode_reading(
            layout,
            {
                "brightness_pct": brightness,
                "presence_count": presence,
                "ambient_lux": lux,
                "profile_id": profile_id,
            },
        ),
    )
    assert decoded["profile_id"] == profile_id
    assert decoded["brightness_pct"] == pytest.approx(brightness, abs=0.005 + 1e-9)
    assert decoded["presence_count"] == presence
    assert decoded["ambient_lux"] == lux


def test_unknown_channel_and_wrong_type_are_layout_errors() -> None:
    layout = layout_of(AC.PARKING_SPOT)
    with pytest.raises(DecodeError) as caught:
        decode_reading(layout, encode([LppValue(9, LppType.PRESENCE, (1.0,))]))
    assert caught.value.reason is DeadLetterReason.BAD_LAYOUT
    with pytest.raises(DecodeError) as caught:
        decode_reading(layout, encode([LppValue(1, LppType.TEMPERATURE, (1.0,))]))
    assert caught.value.reason is DeadLetterReason.BAD_LAYOUT


def test_enum_out_of_range_is_a_layout_error() -> None:
    layout = layout_of(AC.TRAFFIC_SIGNAL)
    with pytest.raises(DecodeError, match="not a valid phase"):
        decode_reading(layout, encode([LppValue(1, LppType.DIGITAL_INPUT, (77.0,))]))


def test_bad_lpp_is_reported_as_bad_lpp() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_reading(layout_of(AC.STREET_LAMP), b"\x01\x67\x01")
    assert caught.value.reason is DeadLetterReason.BAD_LPP


def _outcome(decode: object, layout: object, payload: bytes) -> object:
    try:
        return decode(layout, payload)  # type: ignore[operator]
    except DecodeError as error:
        return error.reason


@given(
    asset_class=st.sampled_from(sorted(LAYOUTS)),
    payload=st.binary(max_size=40),
    seed_reading=st.booleans(),
)
def test_fast_path_agrees_with_the_checked_path(
    asset_class: int, payload: bytes, seed_reading: bool
) -> None:
    from bridges.layouts import _decode_reading_checked

    layout = LAYOUTS[asset_class]
    if seed_reading:  # start from a valid payload so the fast path is exercised, then damage it
        valid = encode_reading(layout, {name: 1 for f in layout.fields for name in f.names})
        payload = valid + payload[:3]
    fast = _outcome(decode_reading, layout, payload)
    checked = _outcome(_decode_reading_checked, layout, payload)
    assert fast == checked
