"""Commands to downlinks: which devices a command reaches and what each receives.

Pure: a command and the registry in, MQTT (topic, payload) pairs out: either
ChirpStack v4 `command/down` messages, one per device, whose `id` is the
command_id (it comes back as `queueItemId` in the device's ack) and whose frame
carries the epoch; or, for a group command that goes by multicast, one
`multicast/<applicationId>/<group>` message whose payload is the command frame
itself: the downlink gate enqueues it on the network server's multicast group
of that (class, group) (ChirpStack has no MQTT path for multicast, only its
gRPC API).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridges import chirpstack
from bridges.downlink_frame import COMMAND_F_PORT, encode_command
from bridges.registry import Device, DeviceRegistry
from citypost.errors import InvalidArgumentError, NotFoundError
from protos.citypost.v1 import command_pb2


@dataclass(frozen=True)
class Downlink:
    dev_eui: str  # "" for a multicast
    topic: str
    payload: bytes
    # For the gate's airtime plan (it travels as MQTT v5 user properties, beside the
    # ChirpStack payload): who goes first, and when it is no use any more.
    priority: int = command_pb2.PRIORITY_POLICY
    deadline_ms: int = 0  # wall clock; 0: none


def targets(command: command_pb2.Command, registry: DeviceRegistry) -> list[Device]:
    """The devices a command is for; NotFoundError if there are none."""
    kind = command.target.WhichOneof("kind")
    if kind == "dev_eui":
        device = registry.get(command.target.dev_eui)
        if device is None:
            raise NotFoundError(f"no device {command.target.dev_eui!r} in the registry")
        if command.asset_class and device.asset_class != command.asset_class:
            raise InvalidArgumentError(
                f"device {device.dev_eui} is not of the command's asset class"
            )
        return [device]
    if kind == "group":
        members = registry.group(command.asset_class, command.target.group)
        if not members:
            raise NotFoundError(f"no device in group {command.target.group!r} of that asset class")
        return members
    raise InvalidArgumentError("command.target must name a dev_eui or a group")


MULTICAST_ROOT = "multicast"


def multicast_topic(application_id: str, group: str) -> str:
    return f"{MULTICAST_ROOT}/{application_id}/{group}"


def parse_multicast_topic(topic: str) -> tuple[str, str]:
    """(application_id, group) of a multicast topic; InvalidArgumentError otherwise."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != MULTICAST_ROOT or not parts[1] or not parts[2]:
        raise InvalidArgumentError(
            f"a multicast topic is {MULTICAST_ROOT}/<applicationId>/<group>, got {topic!r}"
        )
    return parts[1], parts[2]


def multicast(command: command_pb2.Command, registry: DeviceRegistry) -> Downlink:
    """A group command as one multicast: its topic and the frame."""
    if command.target.WhichOneof("kind") != "group":
        raise InvalidArgumentError("only a command to a group goes by multicast")
    members = targets(command, registry)
    return Downlink(
        "",
        multicast_topic(members[0].application_id, command.target.group),
        encode_command(command),
        command.priority or command_pb2.PRIORITY_POLICY,
        _deadline_ms(command),
    )


def _deadline_ms(command: command_pb2.Command) -> int:
    return command.issued_at_ms + command.ttl_ms if command.issued_at_ms and command.ttl_ms else 0


def downlinks(command: command_pb2.Command, registry: DeviceRegistry) -> list[Downlink]:
    frame = encode_command(command)
    return [
        Downlink(
            device.dev_eui,
            chirpstack.downlink_topic(device.application_id, device.dev_eui),
            chirpstack.build_downlink(
                device.dev_eui, COMMAND_F_PORT, frame, confirmed=True, id=command.command_id
            ),
            command.priority or command_pb2.PRIORITY_POLICY,
            _deadline_ms(command),
        )
        for device in targets(command, registry)
    ]
