import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.downlink_frame import (
    HEADER_SIZE,
    LampProfile,
    decode_command,
    encode_command,
    profile_problem,
)
from bridges.lpp import LppType, LppValue
from bridges.lpp import encode as lpp_encode
from citypost.errors import DeadLetterReason, DecodeError, InvalidArgumentError
from protos.citypost.v1 import command_pb2, telemetry_pb2

pytestmark = pytest.mark.unit


_PROFILE = command_pb2.LampProfile(
    profile_id=65535,
    on_below_elevation_deg=-10.0,
    night_pct=100.0,
    boost_pct=100.0,
    boost_hold_s=3600,
)


def _command(**action: object) -> command_pb2.Command:
    return command_pb2.Command(command_id=str(uuid.uuid4()), epoch=42, **action)  # type: ignore[arg-type]


@given(epoch=st.integers(0, 2**63 - 1), brightness=st.floats(0, 100))
def test_brightness_round_trips(epoch: int, brightness: float) -> None:
    command = command_pb2.Command(
        command_id=str(uuid.uuid4()),
        epoch=epoch,
        set_brightness=command_pb2.SetBrightness(brightness_pct=brightness),
    )
    decoded = decode_command(encode_command(command))
    assert decoded.epoch == epoch
    assert decoded.command_id == command.command_id
    assert decoded.action == "set_brightness"
    assert decoded.value == pytest.approx(brightness, abs=0.005 + 1e-9)


def test_every_action_fits_the_smallest_lora_payload() -> None:
    commands = [
        _command(set_brightness=command_pb2.SetBrightness(brightness_pct=40)),
        _command(
            set_bollard_position=command_pb2.SetBollardPosition(position=telemetry_pb2.RAISED)
        ),
        _command(signal_priority=command_pb2.SignalPriority(extend_green_ms=8000)),
        _command(set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER)),
        _command(set_lamp_profile=_PROFILE),
    ]
    for command in commands:
        frame = encode_command(command)
        assert len(frame) <= 51  # EU868 DR0-2
        decoded = decode_command(frame)
        assert decoded.action == command.WhichOneof("action")
    assert decode_command(encode_command(commands[1])).value == telemetry_pb2.RAISED
    assert decode_command(encode_command(commands[2])).value == pytest.approx(8.0)


def test_encode_refuses_what_cannot_go_on_air() -> None:
    with pytest.raises(InvalidArgumentError, match="UUID"):
        encode_command(command_pb2.Command(command_id="not-a-uuid", epoch=1))
    with pytest.raises(InvalidArgumentError, match="no action"):
        encode_command(command_pb2.Command(command_id=str(uuid.uuid4()), epoch=1))


@given(st.binary(max_size=64))
def test_decode_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_command(data)


def test_short_frame_names_the_header() -> None:
    with pytest.raises(DecodeError, match=f"{HEADER_SIZE}-byte header"):
        decode_command(b"\x01\x00")


# --- lamp profiles ---------------------------------------------------------------------------


def _profile_frame(**fields: float) -> bytes:
    profile = command_pb2.LampProfile(
        profile_id=7,
        on_below_elevation_deg=-0.83,
        night_pct=30.0,
        boost_pct=100.0,
        boost_hold_s=300,
    )
    for name, value in fields.items():
        setattr(profile, name, value)
    return encode_command(_command(set_lamp_profile=profile))


@given(
    epoch=st.integers(0, 2**63 - 1),
    profile_id=st.integers(1, 65535),
    elevation=st.floats(-10, 10),
    night=st.floats(0, 100),
    boost_over_night=st.floats(0, 1),
    hold=st.integers(0, 3600),
)
def test_a_lamp_profile_round_trips_at_the_wire_resolution(
    epoch: int, profile_id: int, elevation: float, night: float, boost_over_night: float, hold: int
) -> None:
    boost = min(100.0, night + (100.0 - night) * boost_over_night)
    command = command_pb2.Command(
        command_id=str(uuid.uuid4()),
        epoch=epoch,
        set_lamp_profile=command_pb2.LampProfile(
            profile_id=profile_id,
            on_below_elevation_deg=elevation,
            night_pct=night,
            boost_pct=boost,
            boost_hold_s=hold,
        ),
    )
    frame = encode_command(command)
    assert len(frame) == HEADER_SIZE + 5 * 4 <= 51  # EU868 DR0-2
    decoded = decode_command(frame)
    assert (decoded.epoch, decoded.command_id) == (epoch, command.command_id)
    assert decoded.action == "set_lamp_profile"
    assert decoded.value == profile_id  # what the network server's execution log shows
    profile = decoded.profile
    assert profile is not None and profile_problem(profile) is None
    assert profile.profile_id == profile_id and profile.boost_hold_s == hold
    assert profile.on_below_elevation_deg == pytest.approx(elevation, abs=0.005 + 1e-9)
    assert profile.night_pct == pytest.approx(night, abs=0.005 + 1e-9)
    assert profile.boost_pct == pytest.approx(boost, abs=0.005 + 1e-9)


def test_a_lamp_profile_is_five_lpp_records_after_the_header() -> None:
    frame = _profile_frame()
    assert len(frame) == 45
    assert frame[HEADER_SIZE:].hex() == (
        "05650007"  # ch 5 illuminance: profile_id 7
        "0603ffad"  # ch 6 analog output: -0.83 °
        "07030bb8"  # ch 7 analog output: 30.00 %
        "08032710"  # ch 8 analog output: 100.00 %
        "0965012c"  # ch 9 illuminance: 300 s
    )
    # Any order of the five records decodes the same.
    records = [frame[HEADER_SIZE + 4 * k : HEADER_SIZE + 4 * k + 4] for k in range(5)]
    shuffled = frame[:HEADER_SIZE] + b"".join(reversed(records))
    assert decode_command(shuffled) == decode_command(frame)
    assert decode_command(frame).profile == LampProfile(7, -0.83, 30.0, 100.0, 300)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile_id", 0),
        ("profile_id", 65536),
        ("on_below_elevation_deg", -10.01),
        ("on_below_elevation_deg", 10.5),
        ("on_below_elevation_deg", float("nan")),
        ("night_pct", -1.0),
        ("boost_pct", 29.0),  # below night_pct
        ("boost_pct", 100.5),
        ("boost_hold_s", 3601),
    ],
)
def test_a_profile_out_of_range_is_refused_on_encode(field: str, value: float) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        _profile_frame(**{field: value})


def _raw_profile_frame(records: list[LppValue]) -> bytes:
    return _profile_frame()[:HEADER_SIZE] + lpp_encode(records)


_GOOD_RECORDS = [
    LppValue(5, LppType.ILLUMINANCE, (7.0,)),
    LppValue(6, LppType.ANALOG_OUTPUT, (-0.83,)),
    LppValue(7, LppType.ANALOG_OUTPUT, (30.0,)),
    LppValue(8, LppType.ANALOG_OUTPUT, (100.0,)),
    LppValue(9, LppType.ILLUMINANCE, (300.0,)),
]


@pytest.mark.parametrize(
    ("index", "replacement", "message"),
    [
        (0, LppValue(5, LppType.ILLUMINANCE, (0.0,)), "profile_id"),
        (1, LppValue(6, LppType.ANALOG_OUTPUT, (12.0,)), "on_below_elevation_deg"),
        (2, LppValue(7, LppType.ANALOG_OUTPUT, (150.0,)), "night_pct"),
        (3, LppValue(8, LppType.ANALOG_OUTPUT, (20.0,)), "boost_pct"),
        (4, LppValue(9, LppType.ILLUMINANCE, (7200.0,)), "boost_hold_s"),
        (4, LppValue(9, LppType.ANALOG_OUTPUT, (300.0 / 100,)), "channels 5-9 once each"),
        (4, LppValue(5, LppType.ILLUMINANCE, (7.0,)), "channels 5-9 once each"),
        (4, LppValue(1, LppType.ANALOG_OUTPUT, (50.0,)), "channels 5-9 once each"),
    ],
)
def test_a_profile_frame_out_of_range_or_malformed_is_a_decode_error(
    index: int, replacement: LppValue, message: str
) -> None:
    records = list(_GOOD_RECORDS)
    records[index] = replacement
    with pytest.raises(DecodeError, match=message) as caught:
        decode_command(_raw_profile_frame(records))
    assert caught.value.reason is DeadLetterReason.BAD_LAYOUT


def test_a_profile_frame_missing_a_field_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="lacks channel"):
        decode_command(_raw_profile_frame(_GOOD_RECORDS[:4]))
