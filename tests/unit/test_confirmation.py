"""What counts as a device confirming a group command, and who goes by multicast."""

from __future__ import annotations

import pytest

from bridges.registry import Device, DeviceRegistry, application_id
from post.confirmation import Confirmations, confirms, goes_by_multicast
from protos.citypost.v1 import assets_pb2, command_pb2, control_state_pb2, telemetry_pb2

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass


def group(asset_class: int, **action: object) -> command_pb2.Command:
    return command_pb2.Command(
        command_id="c1", asset_class=asset_class, target=command_pb2.Target(group="g"), **action
    )


PROFILE = group(AC.STREET_LAMP, set_lamp_profile=command_pb2.LampProfile(profile_id=9))
LEVEL = group(AC.STREET_LAMP, set_brightness=command_pb2.SetBrightness(brightness_pct=55))
RAISE = group(
    AC.BOLLARD,
    set_bollard_position=command_pb2.SetBollardPosition(position=telemetry_pb2.RAISED),
)


def lamp(profile_id: int, level: float = 40.0) -> telemetry_pb2.Telemetry:
    reading = telemetry_pb2.LampReading(brightness_pct=level, profile_id=profile_id)
    return telemetry_pb2.Telemetry(dev_eui="00000000000000c1", lamp=reading)


def test_a_lamp_confirms_a_profile_by_the_profile_it_reports() -> None:
    assert confirms(PROFILE, lamp(9))
    assert not confirms(PROFILE, lamp(8))
    assert not confirms(PROFILE, lamp(0, 40.0))


def test_a_fixed_level_is_confirmed_by_the_level_outside_any_profile() -> None:
    assert confirms(LEVEL, lamp(0, 55.0))
    assert not confirms(LEVEL, lamp(0, 54.0))
    assert not confirms(LEVEL, lamp(9, 55.0))  # still running a profile that happens to be there


def test_a_bollard_confirms_by_its_position_and_other_readings_never_confirm() -> None:
    up = telemetry_pb2.Telemetry(
        bollard=telemetry_pb2.BollardReading(position=telemetry_pb2.RAISED)
    )
    down = telemetry_pb2.Telemetry(
        bollard=telemetry_pb2.BollardReading(position=telemetry_pb2.LOWERED)
    )
    assert confirms(RAISE, up) and not confirms(RAISE, down)
    assert not confirms(PROFILE, up) and not confirms(RAISE, lamp(9))


def test_only_confirmable_group_commands_to_class_c_go_by_multicast() -> None:
    assert goes_by_multicast(PROFILE) and goes_by_multicast(LEVEL) and goes_by_multicast(RAISE)
    one_lamp = command_pb2.Command()
    one_lamp.CopyFrom(PROFILE)
    one_lamp.target.dev_eui = "00000000000000c1"
    signals = group(
        AC.TRAFFIC_SIGNAL,
        set_signal_mode=command_pb2.SetSignalMode(phase=telemetry_pb2.FLASHING_AMBER),
    )
    assert not goes_by_multicast(one_lamp) and not goes_by_multicast(signals)


def test_confirmations_count_each_device_once_and_only_for_its_own_group() -> None:
    app = application_id("dijon", AC.STREET_LAMP)
    devices = [
        Device(f"{0xC0 + i:016x}", f"l{i}", AC.STREET_LAMP, grp, "Talant", 47.3, 5.0, 1, app)
        for i, grp in ((1, "g"), (2, "g"), (3, "other"))
    ]
    book = Confirmations(DeviceRegistry(devices))
    book.submit([lamp(9)])  # nothing watched: nothing kept
    book.watch(control_state_pb2.CommandRecord(command=PROFILE))
    reports = [
        telemetry_pb2.Telemetry(dev_eui=d.dev_eui, lamp=telemetry_pb2.LampReading(profile_id=9))
        for d in devices
    ]
    book.submit(reports)
    book.submit(reports)  # a batch retried by the edge
    assert book.confirmed("c1") == {devices[0].dev_eui, devices[1].dev_eui}
    book.watch(control_state_pb2.CommandRecord(command=PROFILE))  # a re-send keeps the count
    assert book.count("c1") == 2
    book.forget("c1")
    assert book.count("c1") == 0 and book.watching() == 0
