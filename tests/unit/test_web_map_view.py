"""The map's JSON: columns from the post's AssetMap, states and vehicles as flat arrays."""

import orjson
import pytest

from bridges.registry import Device
from console.web.map_view import map_json, states_json
from post.asset_board import AssetBoard, asset_map, asset_states
from protos.citypost.v1 import assets_pb2 as AC
from protos.citypost.v1 import operator_pb2 as OP
from protos.citypost.v1 import telemetry_pb2 as T

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

DEVICES = [
    Device(
        "00000000000000b2",
        "lamp",
        AC.STREET_LAMP,
        "dijon-1",
        "Dijon",
        47.3219,
        5.0415,
        AC.LORAWAN,
        "a",
    ),
    Device("00000000000000b1", "bus", AC.BUS, "buses", "Talant", 47.33, 5.0, AC.IP, "a"),
]


def test_the_map_is_columns_in_index_order_with_names_once() -> None:
    board = AssetBoard(DEVICES)
    out = orjson.loads(orjson.dumps(map_json(asset_map(board.devices))))
    assert out["eui"] == ["00000000000000b1", "00000000000000b2"]
    assert out["cls"] == [AC.BUS, AC.STREET_LAMP]
    assert out["lat"] == [47.33, 47.3219] and out["lon"] == [5.0, 5.0415]  # float32, rounded
    assert [out["groups"][g] for g in out["grp"]] == ["buses", "dijon-1"]
    assert [out["communes"][c] for c in out["com"]] == ["Talant", "Dijon"]
    assert out["states"]["FAULT"] == OP.FAULT and out["map_id"] == board.map_id


def test_states_are_arrays_and_vehicles_one_flat_array() -> None:
    board = AssetBoard(DEVICES)
    start = board.snapshot().sequence
    board.submit(
        [
            T.Telemetry(dev_eui="00000000000000b2", lamp=T.LampReading(fault=True)),
            T.Telemetry(
                dev_eui="00000000000000b1",
                vehicle=T.VehicleReading(
                    latitude=47.3, longitude=5.01, speed_kmh=20, heading_deg=271.6
                ),
            ),
        ]
    )
    change = asset_states(board.map_id, board.since(start))
    out = states_json(change)
    assert sorted(zip(out["i"], out["s"], strict=True)) == [(0, OP.ACTIVE), (1, OP.FAULT)]
    assert out["v"] == [0, 47.3, 5.01, 272]
    snapshot = states_json(OP.AssetStates(snapshot=True, states=[OP.IDLE, OP.FAULT]))
    assert "i" not in snapshot and snapshot["s"] == [OP.IDLE, OP.FAULT]
