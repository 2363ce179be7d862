"""The map's JSON for the page: the asset map as columns, state changes as arrays.

Compact on purpose (the whole city's map is 38,702 rows): one array per column,
places rounded to 5 decimals (about a metre), a display state as its number
(operator.proto's DisplayState), vehicles as one flat array of
[index, latitude, longitude, heading, ...].
"""

from __future__ import annotations

from typing import Any

from protos.citypost.v1 import operator_pb2

PLACE_DECIMALS = 5


def map_json(amap: operator_pb2.AssetMap) -> dict[str, Any]:
    return {
        "map_id": amap.map_id,
        "eui": list(amap.dev_euis),
        "cls": list(amap.asset_classes),
        "lat": [round(v, PLACE_DECIMALS) for v in amap.latitudes],
        "lon": [round(v, PLACE_DECIMALS) for v in amap.longitudes],
        "grp": list(amap.groups),
        "groups": list(amap.group_names),
        "com": list(amap.communes),
        "communes": list(amap.commune_names),
        "states": {name: number for name, number in operator_pb2.DisplayState.items()},
    }


def states_json(message: operator_pb2.AssetStates) -> dict[str, Any]:
    vehicles: list[float] = []
    for i, lat, lon, heading in zip(
        message.vehicle_indexes,
        message.vehicle_latitudes,
        message.vehicle_longitudes,
        message.vehicle_headings,
        strict=True,
    ):
        vehicles += [i, round(lat, PLACE_DECIMALS), round(lon, PLACE_DECIMALS), round(heading)]
    out: dict[str, Any] = {
        "map_id": message.map_id,
        "seq": message.sequence,
        "snapshot": message.snapshot,
        "s": list(message.states),
        "v": vehicles,
    }
    if not message.snapshot:
        out["i"] = list(message.indexes)
    return out
