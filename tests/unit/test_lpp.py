"""Cayenne LPP codec: spec vectors, round trips, pycayennelpp as an oracle, malformed input."""

from __future__ import annotations

import math

import pytest
from cayennelpp import LppFrame
from cayennelpp.lpp_type import LppType as OracleType
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridges.lpp import LppType, LppValue, decode, encode, size_of
from citypost.errors import DeadLetterReason, LppError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

T = LppType

# The spec table, written out independently of bridges.lpp: field sizes, divisors, signedness.
SPEC: dict[LppType, tuple[tuple[int, ...], tuple[int, ...], bool]] = {
    T.DIGITAL_INPUT: ((1,), (1,), False),
    T.DIGITAL_OUTPUT: ((1,), (1,), False),
    T.ANALOG_INPUT: ((2,), (100,), True),
    T.ANALOG_OUTPUT: ((2,), (100,), True),
    T.ILLUMINANCE: ((2,), (1,), False),
    T.PRESENCE: ((1,), (1,), False),
    T.TEMPERATURE: ((2,), (10,), True),
    T.HUMIDITY: ((1,), (2,), False),
    T.ACCELEROMETER: ((2, 2, 2), (1000, 1000, 1000), True),
    T.BAROMETER: ((2,), (10,), False),
    T.GYROMETER: ((2, 2, 2), (100, 100, 100), True),
    T.GPS: ((3, 3, 3), (10000, 10000, 100), True),
}


def raw_range(size: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
    return 0, (1 << (8 * size)) - 1


def record_bytes(channel: int, type_: LppType, raws: tuple[int, ...]) -> bytes:
    """Reference encoder from raw integers, by int.to_bytes rather than struct."""
    sizes, _, signed = SPEC[type_]
    body = b"".join(r.to_bytes(s, "big", signed=signed) for r, s in zip(raws, sizes, strict=True))
    return bytes((channel, type_)) + body


def as_value(channel: int, type_: LppType, raws: tuple[int, ...]) -> LppValue:
    _, divisors, _ = SPEC[type_]
    return LppValue(channel, type_, tuple(r / d for r, d in zip(raws, divisors, strict=True)))


Record = tuple[int, LppType, tuple[int, ...]]  # channel, type, raw integers


@st.composite
def raw_records(draw: st.DrawFn) -> Record:
    type_ = draw(st.sampled_from(list(LppType)))
    sizes, _, signed = SPEC[type_]
    raws = tuple(draw(st.integers(*raw_range(s, signed))) for s in sizes)
    return draw(st.integers(0, 255)), type_, raws


record_lists = st.lists(raw_records(), min_size=1, max_size=20)


def oracle_values(payload: bytes) -> list[tuple[int, int, tuple[float, ...]]]:
    return [(d.channel, int(d.type), tuple(d.value)) for d in LppFrame.from_bytes(payload)]


def ours(values: list[LppValue]) -> list[tuple[int, int, tuple[float, ...]]]:
    return [(v.channel, int(v.type), v.value) for v in values]


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(LppType))
def test_spec_table_matches_pycayennelpp(type_: LppType) -> None:
    sizes, divisors, signed = SPEC[type_]
    oracle = OracleType.get_lpp_type(int(type_))
    assert (oracle.sizes, oracle.scales, oracle.signs) == (
        list(sizes),
        list(divisors),
        [signed] * len(sizes),
    )
    assert size_of(type_) == sum(sizes) == oracle.size


def test_size_of_unknown_type_raises() -> None:
    with pytest.raises(LppError):
        size_of(100)  # type: ignore[arg-type]


# --- vectors --------------------------------------------------------------------------------

VECTORS: list[tuple[str, list[LppValue]]] = [
    # DESIGN.md
    (
        "03 67 01 10 05 67 00 FF",
        [LppValue(3, T.TEMPERATURE, (27.2,)), LppValue(5, T.TEMPERATURE, (25.5,))],
    ),
    ("01 67 FF D7", [LppValue(1, T.TEMPERATURE, (-4.1,))]),
    ("01 88 06 76 5F F2 96 0A 00 03 E8", [LppValue(1, T.GPS, (42.3519, -87.9094, 10.0))]),
    # one per type
    ("02 00 01", [LppValue(2, T.DIGITAL_INPUT, (1.0,))]),
    ("02 01 FF", [LppValue(2, T.DIGITAL_OUTPUT, (255.0,))]),
    ("04 02 04 D2", [LppValue(4, T.ANALOG_INPUT, (12.34,))]),
    ("05 03 FB 2E", [LppValue(5, T.ANALOG_OUTPUT, (-12.34,))]),
    ("07 65 FF FF", [LppValue(7, T.ILLUMINANCE, (65535.0,))]),
    ("08 66 01", [LppValue(8, T.PRESENCE, (1.0,))]),
    ("05 68 61", [LppValue(5, T.HUMIDITY, (48.5,))]),
    ("06 71 04 D2 FB 2E 00 00", [LppValue(6, T.ACCELEROMETER, (1.234, -1.234, 0.0))]),
    ("09 73 27 97", [LppValue(9, T.BAROMETER, (1013.5,))]),
    ("0A 86 04 D2 FB 2E 00 64", [LppValue(10, T.GYROMETER, (12.34, -12.34, 1.0))]),
    ("FF 88 80 00 00 7F FF FF FF FF FF", [LppValue(255, T.GPS, (-838.8608, 838.8607, -0.01))]),
]


@pytest.mark.parametrize(("hex_", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors_decode(hex_: str, expected: list[LppValue]) -> None:
    got = decode(bytes.fromhex(hex_))
    assert got == expected
    assert all(isinstance(x, float) for v in got for x in v.value)
    assert all(type(v.type) is LppType for v in got)


@pytest.mark.parametrize(("hex_", "values"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors_encode(hex_: str, values: list[LppValue]) -> None:
    assert encode(values) == bytes.fromhex(hex_)


def test_vector_types_cover_every_type() -> None:
    assert {v.type for _, values in VECTORS for v in values} == set(LppType)


def test_decoded_values_are_ordinary_frozen_lpp_values() -> None:
    (got,) = decode(bytes.fromhex("03 67 01 10"))
    built = LppValue(3, T.TEMPERATURE, (27.2,))
    assert got == built and hash(got) == hash(built) and repr(got) == repr(built)
    with pytest.raises(AttributeError):
        got.channel = 4  # type: ignore[misc]


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_any_bytes_like(wrap: type) -> None:
    payload = bytes.fromhex("03 67 01 10 05 67 00 FF")
    assert decode(wrap(payload)) == decode(payload)


def test_encode_empty_is_empty() -> None:
    assert encode([]) == b""


# --- rounding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "given_", "stored"),
    [
        (T.HUMIDITY, 0.25, 0.5),  # half a step: away from zero (banker's would give 0.0)
        (T.HUMIDITY, 0.75, 1.0),
        (T.HUMIDITY, 0.2, 0.0),
        (T.DIGITAL_INPUT, 2.5, 3.0),
        (T.ANALOG_INPUT, 0.125, 0.13),
        (T.ANALOG_INPUT, -0.125, -0.13),
        (T.TEMPERATURE, -4.14, -4.1),
        (T.TEMPERATURE, -4.16, -4.2),
        (T.TEMPERATURE, 3276.74, 3276.7),
        (T.ILLUMINANCE, 7, 7.0),  # ints are fine
    ],
)
def test_encode_rounds_to_nearest_step_half_away_from_zero(
    type_: LppType, given_: float, stored: float
) -> None:
    assert decode(encode([LppValue(1, type_, (given_,))])) == [LppValue(1, type_, (stored,))]


# --- round trips ----------------------------------------------------------------------------


@given(raw_records())
def test_every_raw_value_round_trips(record: Record) -> None:
    channel, type_, raws = record
    value = as_value(channel, type_, raws)
    payload = encode([value])
    assert payload == record_bytes(channel, type_, raws)
    assert decode(payload) == [value]


@st.composite
def in_range_floats(draw: st.DrawFn) -> LppValue:
    type_ = draw(st.sampled_from(list(LppType)))
    sizes, divisors, signed = SPEC[type_]
    fields = []
    for size, divisor in zip(sizes, divisors, strict=True):
        low, high = raw_range(size, signed)
        fields.append(draw(st.floats(low / divisor, high / divisor)))
    return LppValue(draw(st.integers(0, 255)), type_, tuple(fields))


@given(in_range_floats())
def test_any_in_range_float_round_trips_at_resolution(value: LppValue) -> None:
    (got,) = decode(encode([value]))
    assert (got.channel, got.type) == (value.channel, value.type)
    for divisor, sent, back in zip(SPEC[value.type][1], value.value, got.value, strict=True):
        assert abs(back * divisor - round(back * divisor)) < 1e-6  # on the grid
        assert abs(back - sent) * divisor <= 0.5 + 1e-6  # the nearest step


@given(record_lists)
def test_multi_value_payloads_round_trip(
    records: list[Record],
) -> None:
    values = [as_value(*r) for r in records]
    payload = encode(values)
    assert payload == b"".join(record_bytes(*r) for r in records)
    assert decode(payload) == values
    assert encode(decode(payload)) == payload


# --- pycayennelpp as an oracle --------------------------------------------------------------


@given(record_lists)
def test_decode_agrees_with_pycayennelpp(
    records: list[Record],
) -> None:
    payload = b"".join(record_bytes(*r) for r in records)
    assert ours(decode(payload)) == oracle_values(payload)


@given(st.lists(in_range_floats(), min_size=1, max_size=10))
def test_pycayennelpp_decodes_what_we_encode(values: list[LppValue]) -> None:
    payload = encode(values)
    assert oracle_values(payload) == ours(decode(payload))
    assert [(c, t) for c, t, _ in oracle_values(payload)] == [(v.channel, v.type) for v in values]


@st.composite
def mangled_payloads(draw: st.DrawFn) -> bytes:
    """A valid payload with a few bytes overwritten, cut or appended: mostly near-valid input."""
    payload = bytearray(b"".join(record_bytes(*r) for r in draw(record_lists)))
    for _ in range(draw(st.integers(0, 3))):
        payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(payload)))
    return bytes(payload[:cut]) + draw(st.binary(max_size=3))


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=64), mangled_payloads()))
@example(b"")
@example(b"\x03")
@example(b"\x03\x67\x01")
@example(b"\x03\x64\x00\x00\x00\x00")
def test_arbitrary_bytes_raise_only_lpp_error(payload: bytes) -> None:
    try:
        values = decode(payload)
    except LppError as error:
        assert error.reason is DeadLetterReason.BAD_LPP
        assert error.message
        return
    # whatever decodes is canonical and agrees with the oracle
    assert encode(values) == payload
    assert ours(values) == oracle_values(payload)


# --- malformed input ------------------------------------------------------------------------

MALFORMED: list[tuple[str, list[str]]] = [
    ("", ["empty"]),
    ("03", ["header", "byte 0"]),
    ("03 67 01 10 05", ["header", "byte 4", "0x05"]),
    ("03 64 00 00 00 00", ["unknown", "type 100", "byte 1", "channel 3"]),
    ("03 67 01 10 05 FF 00", ["unknown", "type 255", "byte 5", "channel 5"]),
    ("03 67", ["temperature", "byte 2", "needs 2 bytes", "0 left"]),
    ("03 67 01", ["temperature", "byte 2", "needs 2 bytes", "1 left"]),
    ("03 67 01 10 01 88 06 76 5F F2 96 0A 00 03", ["gps", "byte 6", "needs 9 bytes", "8 left"]),
    ("06 71 04 D2 FB 2E 00", ["accelerometer", "needs 6 bytes", "5 left"]),
]


@pytest.mark.parametrize(("hex_", "words"), MALFORMED, ids=[m[0] or "empty" for m in MALFORMED])
def test_malformed_payload_names_what_and_where(hex_: str, words: list[str]) -> None:
    with pytest.raises(LppError) as caught:
        decode(bytes.fromhex(hex_))
    for word in words:
        assert word in caught.value.message


@given(record_lists, st.data())
def test_any_truncation_of_a_valid_payload_raises(
    records: list[Record], data: st.DataObject
) -> None:
    payload = b"".join(record_bytes(*r) for r in records)
    boundaries = set()
    offset = 0
    for r in records:
        boundaries.add(offset)
        offset += 2 + sum(SPEC[r[1]][0])
    cut = data.draw(
        st.integers(0, len(payload) - 1).filter(lambda c: c not in boundaries or c == 0)
    )
    with pytest.raises(LppError, match=r"empty|byte \d+"):
        decode(payload[:cut])


@given(record_lists, st.integers(0, 255).filter(lambda t: t not in set(LppType)))
def test_unknown_type_anywhere_raises_with_its_offset(records: list[Record], bad_type: int) -> None:
    prefix = b"".join(record_bytes(*r) for r in records)
    with pytest.raises(LppError) as caught:
        decode(prefix + bytes((7, bad_type, 0, 0, 0, 0)))
    assert f"type {bad_type} " in caught.value.message
    assert f"byte {len(prefix) + 1} " in caught.value.message


# --- encode out of range --------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(LppType))
def test_encode_accepts_wire_extremes_and_rejects_one_step_beyond(type_: LppType) -> None:
    sizes, _, signed = SPEC[type_]
    for field in range(len(sizes)):
        low, high = raw_range(sizes[field], signed)
        for raw, fits in ((low, True), (high, True), (low - 1, False), (high + 1, False)):
            raws = [0] * len(sizes)
            raws[field] = raw
            value = as_value(3, type_, tuple(raws))
            if fits:
                assert decode(encode([value])) == [value]
            else:
                with pytest.raises(LppError, match="out of range"):
                    encode([value])


@given(in_range_floats(), st.floats(1, 1e300), st.booleans(), st.data())
def test_encode_rejects_any_value_past_the_range(
    value: LppValue, excess: float, above: bool, data: st.DataObject
) -> None:
    sizes, divisors, signed = SPEC[value.type]
    field = data.draw(st.integers(0, len(sizes) - 1))
    low, high = raw_range(sizes[field], signed)
    bad = (high + excess) / divisors[field] if above else (low - excess) / divisors[field]
    fields = list(value.value)
    fields[field] = bad
    with pytest.raises(LppError, match="out of range"):
        encode([LppValue(value.channel, value.type, tuple(fields))])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (LppValue(1, T.HUMIDITY, (-0.5,)), ["humidity", "out of range"]),
        (LppValue(1, T.TEMPERATURE, (3276.75,)), ["out of range", "3276.7"]),
        (LppValue(1, T.TEMPERATURE, (math.nan,)), ["not a finite number"]),
        (LppValue(1, T.TEMPERATURE, (math.inf,)), ["not a finite number"]),
        (LppValue(1, T.GPS, (-math.inf, 0.0, 0.0)), ["not a finite number"]),
        (LppValue(1, T.TEMPERATURE, ("20",)), ["not a finite number"]),  # type: ignore[arg-type]
        (LppValue(1, T.GPS, (1.0, 2.0)), ["gps", "3 number(s)"]),
        (LppValue(1, T.TEMPERATURE, ()), ["1 number(s)"]),
        (LppValue(1, T.TEMPERATURE, 20.0), ["1 number(s)"]),  # type: ignore[arg-type]
        (LppValue(-1, T.TEMPERATURE, (20.0,)), ["channel", "0..255"]),
        (LppValue(256, T.TEMPERATURE, (20.0,)), ["channel", "0..255"]),
        (LppValue(1.0, T.TEMPERATURE, (20.0,)), ["channel"]),  # type: ignore[arg-type]
        (LppValue(1, 100, (20.0,)), ["unknown type", "100"]),  # type: ignore[arg-type]
    ],
)
def test_encode_bad_value_raises_lpp_error(value: LppValue, words: list[str]) -> None:
    good = LppValue(0, T.PRESENCE, (1.0,))
    with pytest.raises(LppError) as caught:
        encode([good, value])
    for word in words:
        assert word in caught.value.message
    assert "#1" in caught.value.message
