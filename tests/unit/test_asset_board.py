"""The map's board: display states the ISA-101 way, changes since a sequence, snapshots."""

import pytest

from bridges.registry import Device
from post.asset_board import (
    ACTIVE,
    ATTENTION,
    FAULT,
    IDLE,
    TRANSITION,
    UNKNOWN,
    AssetBoard,
    asset_map,
    display_state,
    map_id_of,
)
from protos.citypost.v1 import assets_pb2 as AC
from protos.citypost.v1 import telemetry_pb2 as T

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _device(eui: str, cls: int, group: str = "g", commune: str = "Dijon") -> Device:
    return Device(eui, f"d-{eui}", cls, group, commune, 47.32, 5.04, AC.LORAWAN, "app")  # type: ignore[arg-type]


LAMP = _device("00000000000000a2", AC.STREET_LAMP)
BUS = _device("00000000000000a1", AC.BUS, group="buses", commune="Chenôve")
SPOT = _device("00000000000000a3", AC.PARKING_SPOT)


def lamp(pct: float, fault: bool = False, eui: str = LAMP.dev_eui) -> T.Telemetry:
    return T.Telemetry(dev_eui=eui, lamp=T.LampReading(brightness_pct=pct, fault=fault))


def bus(lat: float, lon: float, speed: float = 30.0) -> T.Telemetry:
    reading = T.VehicleReading(latitude=lat, longitude=lon, speed_kmh=speed, heading_deg=90)
    return T.Telemetry(dev_eui=BUS.dev_eui, vehicle=reading)


@pytest.mark.parametrize(
    ("item", "state"),
    [
        (T.Telemetry(), UNKNOWN),
        (T.Telemetry(lamp=T.LampReading(brightness_pct=0)), IDLE),
        (T.Telemetry(lamp=T.LampReading(brightness_pct=30)), ACTIVE),
        (T.Telemetry(lamp=T.LampReading(brightness_pct=30, fault=True)), FAULT),
        (T.Telemetry(traffic_signal=T.TrafficSignalReading(phase=T.GREEN)), ACTIVE),
        (T.Telemetry(traffic_signal=T.TrafficSignalReading(phase=T.FLASHING_AMBER)), ATTENTION),
        (T.Telemetry(traffic_signal=T.TrafficSignalReading(fault=True)), FAULT),
        (T.Telemetry(bollard=T.BollardReading(position=T.RAISED)), ACTIVE),
        (T.Telemetry(bollard=T.BollardReading(position=T.LOWERED)), IDLE),
        (T.Telemetry(bollard=T.BollardReading(position=T.MOVING)), TRANSITION),
        (T.Telemetry(bollard=T.BollardReading(position=T.RAISED, fault=True)), FAULT),
        (T.Telemetry(water_meter=T.WaterMeterReading(litres_since_last=3)), ACTIVE),
        (T.Telemetry(water_meter=T.WaterMeterReading(litres_since_last=0)), IDLE),
        (T.Telemetry(water_meter=T.WaterMeterReading(leak_suspected=True)), ATTENTION),
        (T.Telemetry(parking=T.ParkingReading(occupied=True)), ACTIVE),
        (T.Telemetry(parking=T.ParkingReading(occupied=False)), IDLE),
        (T.Telemetry(air_quality=T.AirQualityReading(no2_ugm3=300)), ACTIVE),
        (T.Telemetry(camera=T.CameraReading(online=True, event=T.NO_EVENT)), ACTIVE),
        (T.Telemetry(camera=T.CameraReading(online=True, event=T.FIRE)), ATTENTION),
        (T.Telemetry(camera=T.CameraReading(online=False)), FAULT),
        (T.Telemetry(road_weather=T.RoadWeatherReading(ice_detected=True)), ATTENTION),
        (T.Telemetry(road_weather=T.RoadWeatherReading(ice_detected=False)), ACTIVE),
        (T.Telemetry(vehicle=T.VehicleReading(speed_kmh=0)), IDLE),
        (T.Telemetry(vehicle=T.VehicleReading(speed_kmh=12)), ACTIVE),
    ],
)
def test_display_state_of_each_reading(item: T.Telemetry, state: int) -> None:
    assert display_state(item) == state


def test_rows_are_in_dev_eui_order_and_the_map_names_them() -> None:
    board = AssetBoard([SPOT, LAMP, BUS])
    assert [d.dev_eui for d in board.devices] == [BUS.dev_eui, LAMP.dev_eui, SPOT.dev_eui]
    amap = asset_map(board.devices)
    assert list(amap.dev_euis) == [BUS.dev_eui, LAMP.dev_eui, SPOT.dev_eui]
    assert [amap.group_names[g] for g in amap.groups] == ["buses", "g", "g"]
    assert [amap.commune_names[c] for c in amap.communes] == ["Chenôve", "Dijon", "Dijon"]
    assert amap.map_id == board.map_id == map_id_of(board.devices)
    moved = _device(LAMP.dev_eui, AC.STREET_LAMP, group="other")
    assert map_id_of([BUS, moved, SPOT]) != board.map_id


def test_changes_since_a_sequence_carry_each_asset_once_at_its_latest() -> None:
    board = AssetBoard([LAMP, BUS, SPOT])
    first = board.snapshot()
    assert first.snapshot and first.states == {0: UNKNOWN, 1: UNKNOWN, 2: UNKNOWN}
    board.submit([lamp(50), lamp(0), lamp(0, fault=True)])
    board.submit([lamp(0, fault=True)])  # no change: no new sequence
    board.submit([T.Telemetry(dev_eui="ffffffffffffffff", lamp=T.LampReading())])  # unknown
    board.submit([bus(47.3, 5.0), bus(47.31, 5.01)])
    later = board.since(first.sequence)
    assert not later.snapshot and later.sequence == 5
    assert later.states == {1: FAULT, 0: ACTIVE}
    assert later.positions[0].latitude == pytest.approx(47.31)
    assert board.since(later.sequence).states == {}  # nothing new
    board.submit([T.Telemetry(dev_eui=SPOT.dev_eui, parking=T.ParkingReading(occupied=True))])
    assert board.since(later.sequence).states == {2: ACTIVE}


def test_a_watcher_behind_the_log_or_from_another_post_gets_a_snapshot() -> None:
    board = AssetBoard([LAMP, SPOT], log_size=3)
    start = board.snapshot().sequence
    for pct in (10, 0, 10, 0, 10):  # five changes, the log keeps three
        board.submit([lamp(pct)])
    behind = board.since(start + 1)
    assert behind.snapshot and behind.states == {0: ACTIVE, 1: UNKNOWN}
    assert not board.since(board.sequence - 2).snapshot  # within the log: changes
    ahead = board.since(board.sequence + 10)  # a sequence this board never reached
    assert ahead.snapshot and ahead.sequence == board.sequence
