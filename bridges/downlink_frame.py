"""The command frame a device receives: epoch and command id ahead of the action.

A LoRaWAN device sees only the frame's bytes (the network server's queue id
never goes on air), so the fence and the at-most-once key travel inside it:

    version (1 B, = 1) | epoch (8 B, big-endian unsigned) | command_id (16 B, UUID) | action (Cayenne LPP)

25 bytes of header leave room for the action within the 51-byte EU868 limit at DR0-2.
Actions, as LPP outputs on fPort 100:
  ch 1 analog output  = lamp brightness %
  ch 2 digital output = bollard position (BollardPosition number)
  ch 3 analog output  = signal priority: green extension in seconds
  ch 4 digital output = signal mode (SignalPhase number)
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from bridges.lpp import LppType, LppValue
from bridges.lpp import decode as lpp_decode
from bridges.lpp import encode as lpp_encode
from citypost.errors import DeadLetterReason, DecodeError, InvalidArgumentError
from protos.citypost.v1 import command_pb2

COMMAND_F_PORT = 100
FRAME_VERSION = 1
_HEADER = struct.Struct(">BQ16s")
HEADER_SIZE = _HEADER.size

_BRIGHTNESS, _BOLLARD, _PRIORITY, _SIGNAL_MODE = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """What a device decodes from a command frame."""

    epoch: int
    command_id: str
    action: str  # the Command oneof name, e.g. "set_brightness"
    value: float | int


def encode_command(command: command_pb2.Command) -> bytes:
    """Command -> frame bytes; raises InvalidArgumentError for what cannot go on air."""
    try:
        command_uuid = uuid.UUID(command.command_id)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"command_id must be a UUID, got {command.command_id!r}"
        ) from exc
    if command.epoch < 0:
        raise InvalidArgumentError(f"epoch must be >= 0, got {command.epoch}")
    action = command.WhichOneof("action")
    if action == "set_brightness":
        value = LppValue(
            _BRIGHTNESS, LppType.ANALOG_OUTPUT, (command.set_brightness.brightness_pct,)
        )
    elif action == "set_bollard_position":
        value = LppValue(
            _BOLLARD, LppType.DIGITAL_OUTPUT, (float(command.set_bollard_position.position),)
        )
    elif action == "signal_priority":
        seconds = command.signal_priority.extend_green_ms / 1000
        value = LppValue(_PRIORITY, LppType.ANALOG_OUTPUT, (seconds,))
    elif action == "set_signal_mode":
        value = LppValue(
            _SIGNAL_MODE, LppType.DIGITAL_OUTPUT, (float(command.set_signal_mode.phase),)
        )
    else:
        raise InvalidArgumentError("command has no action")
    header = _HEADER.pack(FRAME_VERSION, command.epoch, command_uuid.bytes)
    return header + lpp_encode([value])


_ACTIONS = {
    (_BRIGHTNESS, LppType.ANALOG_OUTPUT): ("set_brightness", float),
    (_BOLLARD, LppType.DIGITAL_OUTPUT): ("set_bollard_position", int),
    (_PRIORITY, LppType.ANALOG_OUTPUT): ("signal_priority", float),
    (_SIGNAL_MODE, LppType.DIGITAL_OUTPUT): ("set_signal_mode", int),
}


def decode_header(data: bytes) -> tuple[int, str]:
    """(epoch, command_id) of a frame, without its action (what the downlink gate needs);
    DecodeError(BAD_ENVELOPE) if it has no valid header."""
    if len(data) < HEADER_SIZE:
        raise DecodeError(
            DeadLetterReason.BAD_ENVELOPE,
            f"command frame is {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header",
        )
    version, epoch, raw_id = _HEADER.unpack_from(data)
    if version != FRAME_VERSION:
        raise DecodeError(DeadLetterReason.BAD_ENVELOPE, f"unknown command frame version {version}")
    return epoch, str(uuid.UUID(bytes=raw_id))


def decode_command(data: bytes) -> DeviceCommand:
    """Frame bytes -> DeviceCommand; raises DecodeError on anything malformed."""
    epoch, command_id = decode_header(data)
    values = lpp_decode(data[HEADER_SIZE:])
    if len(values) != 1:
        raise DecodeError(
            DeadLetterReason.BAD_LAYOUT, f"a command frame carries one action, got {len(values)}"
        )
    item = values[0]
    known = _ACTIONS.get((item.channel, item.type))
    if known is None:
        raise DecodeError(
            DeadLetterReason.BAD_LAYOUT,
            f"no command action on channel {item.channel} with type {item.type.name}",
        )
    name, cast = known
    return DeviceCommand(epoch, command_id, name, cast(item.value[0]))
