import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.downlink_frame import HEADER_SIZE, decode_command, encode_command
from citypost.errors import DecodeError, InvalidArgumentError
from protos.citypost.v1 import command_pb2, telemetry_pb2

pytestmark = pytest.mark.unit


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
