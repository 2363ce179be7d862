import uuid

import pytest

from bridges import chirpstack
from bridges.downlink_frame import COMMAND_F_PORT, decode_command
from bridges.downlinks import downlinks
from bridges.registry import Device, DeviceRegistry, application_id
from citypost.errors import InvalidArgumentError, NotFoundError
from protos.citypost.v1 import assets_pb2, command_pb2

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass


def _lamp(i: int, group: str) -> Device:
    return Device(
        dev_eui=f"{i:016x}",
        name=f"lamp-{i}",
        asset_class=AC.STREET_LAMP,
        group=group,
        commune="Dijon",
        latitude=47.3,
        longitude=5.0,
        transport=assets_pb2.LORAWAN,
        application_id=application_id("dijon", AC.STREET_LAMP),
    )


REGISTRY = DeviceRegistry([_lamp(1, "a"), _lamp(2, "a"), _lamp(3, "b")])


def _command(**target: str) -> command_pb2.Command:
    return command_pb2.Command(
        command_id=str(uuid.uuid4()),
        epoch=7,
        asset_class=AC.STREET_LAMP,
        target=command_pb2.Target(**target),
        set_brightness=command_pb2.SetBrightness(brightness_pct=40),
    )


def test_group_command_reaches_every_device_of_the_group_with_one_id() -> None:
    command = _command(group="a")
    out = downlinks(command, REGISTRY)
    assert sorted(d.dev_eui for d in out) == [f"{1:016x}", f"{2:016x}"]
    for item in out:
        parsed = chirpstack.parse_downlink(item.payload)
        assert parsed.id == command.command_id and parsed.f_port == COMMAND_F_PORT
        assert chirpstack.parse_topic(item.topic).dev_eui == item.dev_eui
        frame = decode_command(parsed.data)
        assert (frame.epoch, frame.command_id, frame.action) == (
            7,
            command.command_id,
            "set_brightness",
        )


def test_unknown_targets_are_refused() -> None:
    with pytest.raises(NotFoundError):
        downlinks(_command(dev_eui="00000000000000ff"), REGISTRY)
    with pytest.raises(NotFoundError):
        downlinks(_command(group="nowhere"), REGISTRY)
    with pytest.raises(InvalidArgumentError):
        downlinks(_command(), REGISTRY)
