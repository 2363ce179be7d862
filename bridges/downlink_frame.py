"""The command frame a device receives: epoch and command id ahead of the action.

A LoRaWAN device sees only the frame's bytes (the network server's queue id
never goes on air), so the fence and the at-most-once key travel inside it:

    version (1 B, = 1) | epoch (8 B, big-endian unsigned) | command_id (16 B, UUID) | action (Cayenne LPP)

25 bytes of header leave room for the action within the 51-byte EU868 limit at DR0-2.
Actions, as LPP values on fPort 100 (one record each, but five for a lamp profile):
  ch 1 analog output  = lamp brightness % (a fixed level)
  ch 2 digital output = bollard position (BollardPosition number)
  ch 3 analog output  = signal priority: green extension in seconds
  ch 4 digital output = signal mode (SignalPhase number)
  a lamp dimming profile (set_lamp_profile): channels 5-9, each exactly once, any order:
  ch 5 illuminance    = profile_id, 1..65535 (unsigned 16-bit, step 1)
  ch 6 analog output  = on_below_elevation_deg, -10..10 ° (signed, step 0.01)
  ch 7 analog output  = night_pct, 0..100 % (signed, step 0.01)
  ch 8 analog output  = boost_pct, night_pct..100 % (signed, step 0.01)
  ch 9 illuminance    = boost_hold_s, 0..3600 s (unsigned 16-bit, step 1)
A record is 2 header bytes and its value: 4 bytes each here, so a profile frame is
25 + 5 x 4 = 45 bytes. Illuminance is the LPP type that holds an unsigned 16-bit
integer; the analog types are signed and stop at 327.67.

Ranges are checked on both sides: encode raises InvalidArgumentError for a command that
cannot go on air, decode raises DecodeError for a frame that carries something else. The
range of a lamp profile is checked by `profile_problem`, which the lamp controller uses too.
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
_PROFILE_ID, _ON_BELOW, _NIGHT, _BOOST, _HOLD = 5, 6, 7, 8, 9

# The ranges of a lamp profile (command.proto, LampProfile).
PROFILE_ID_MAX = 65535  # 0 is not a profile: a lamp reports it while it holds a fixed level
ON_BELOW_ELEVATION_RANGE_DEG = (-10.0, 10.0)
BOOST_HOLD_MAX_S = 3600


@dataclass(frozen=True, slots=True)
class LampProfile:
    """A dimming profile as a lamp controller runs it (values at the wire's resolution)."""

    profile_id: int
    on_below_elevation_deg: float
    night_pct: float
    boost_pct: float
    boost_hold_s: int


def profile_problem(profile: LampProfile | command_pb2.LampProfile) -> str | None:
    """What is out of range in `profile`, or None when a lamp can run it."""
    low, high = ON_BELOW_ELEVATION_RANGE_DEG
    # Written as `not low <= x <= high` so that NaN is out of range too.
    if not 1 <= profile.profile_id <= PROFILE_ID_MAX:
        return f"profile_id must be within 1..{PROFILE_ID_MAX}, got {profile.profile_id}"
    if not low <= profile.on_below_elevation_deg <= high:
        return (
            f"on_below_elevation_deg must be within {low:g}..{high:g}, "
            f"got {profile.on_below_elevation_deg}"
        )
    if not 0.0 <= profile.night_pct <= 100.0:
        return f"night_pct must be within 0..100, got {profile.night_pct}"
    if not profile.night_pct <= profile.boost_pct <= 100.0:
        return f"boost_pct must be within night_pct..100, got {profile.boost_pct}"
    if not 0 <= profile.boost_hold_s <= BOOST_HOLD_MAX_S:
        return f"boost_hold_s must be within 0..{BOOST_HOLD_MAX_S}, got {profile.boost_hold_s}"
    return None


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """What a device decodes from a command frame."""

    epoch: int
    command_id: str
    action: str  # the Command oneof name, e.g. "set_brightness"
    value: float | int  # the action's one value; for set_lamp_profile, the profile_id
    profile: LampProfile | None = None  # set_lamp_profile only: the whole profile


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
    values: list[LppValue]
    if action == "set_lamp_profile":
        values = _profile_values(command.set_lamp_profile)
    elif action == "set_brightness":
        pct = command.set_brightness.brightness_pct
        values = [LppValue(_BRIGHTNESS, LppType.ANALOG_OUTPUT, (pct,))]
    elif action == "set_bollard_position":
        position = float(command.set_bollard_position.position)
        values = [LppValue(_BOLLARD, LppType.DIGITAL_OUTPUT, (position,))]
    elif action == "signal_priority":
        seconds = command.signal_priority.extend_green_ms / 1000
        values = [LppValue(_PRIORITY, LppType.ANALOG_OUTPUT, (seconds,))]
    elif action == "set_signal_mode":
        phase = float(command.set_signal_mode.phase)
        values = [LppValue(_SIGNAL_MODE, LppType.DIGITAL_OUTPUT, (phase,))]
    else:
        raise InvalidArgumentError("command has no action")
    header = _HEADER.pack(FRAME_VERSION, command.epoch, command_uuid.bytes)
    return header + lpp_encode(values)


def _profile_values(profile: command_pb2.LampProfile) -> list[LppValue]:
    problem = profile_problem(profile)
    if problem is not None:
        raise InvalidArgumentError(f"set_lamp_profile.{problem}")
    return [
        LppValue(_PROFILE_ID, LppType.ILLUMINANCE, (float(profile.profile_id),)),
        LppValue(_ON_BELOW, LppType.ANALOG_OUTPUT, (profile.on_below_elevation_deg,)),
        LppValue(_NIGHT, LppType.ANALOG_OUTPUT, (profile.night_pct,)),
        LppValue(_BOOST, LppType.ANALOG_OUTPUT, (profile.boost_pct,)),
        LppValue(_HOLD, LppType.ILLUMINANCE, (float(profile.boost_hold_s),)),
    ]


_ACTIONS = {
    (_BRIGHTNESS, LppType.ANALOG_OUTPUT): ("set_brightness", float),
    (_BOLLARD, LppType.DIGITAL_OUTPUT): ("set_bollard_position", int),
    (_PRIORITY, LppType.ANALOG_OUTPUT): ("signal_priority", float),
    (_SIGNAL_MODE, LppType.DIGITAL_OUTPUT): ("set_signal_mode", int),
}
_PROFILE_TYPES = {
    _PROFILE_ID: LppType.ILLUMINANCE,
    _ON_BELOW: LppType.ANALOG_OUTPUT,
    _NIGHT: LppType.ANALOG_OUTPUT,
    _BOOST: LppType.ANALOG_OUTPUT,
    _HOLD: LppType.ILLUMINANCE,
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
    if any(item.channel in _PROFILE_TYPES for item in values):
        profile = _decode_profile(values)
        return DeviceCommand(epoch, command_id, "set_lamp_profile", profile.profile_id, profile)
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


def _decode_profile(values: list[LppValue]) -> LampProfile:
    by_channel: dict[int, float] = {}
    for item in values:
        expected = _PROFILE_TYPES.get(item.channel)
        if expected is None or item.type != expected or item.channel in by_channel:
            raise DecodeError(
                DeadLetterReason.BAD_LAYOUT,
                f"a lamp profile frame carries channels 5-9 once each; got channel "
                f"{item.channel} with type {item.type.name}",
            )
        by_channel[item.channel] = item.value[0]
    if len(by_channel) != len(_PROFILE_TYPES):
        missing = ", ".join(str(c) for c in sorted(set(_PROFILE_TYPES) - set(by_channel)))
        raise DecodeError(
            DeadLetterReason.BAD_LAYOUT, f"a lamp profile frame lacks channel(s) {missing}"
        )
    profile = LampProfile(
        profile_id=int(by_channel[_PROFILE_ID]),
        on_below_elevation_deg=by_channel[_ON_BELOW],
        night_pct=by_channel[_NIGHT],
        boost_pct=by_channel[_BOOST],
        boost_hold_s=int(by_channel[_HOLD]),
    )
    problem = profile_problem(profile)
    if problem is not None:
        raise DecodeError(DeadLetterReason.BAD_LAYOUT, f"lamp profile: {problem}")
    return profile
