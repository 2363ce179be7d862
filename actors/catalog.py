"""Which policy runs each asset class, and which classes a policy also listens to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from actors import (
    air_quality,
    bollards,
    buses,
    cameras,
    dispatch,
    lighting,
    parking,
    road_weather,
    traffic,
    water,
)
from actors.asset_actor import PolicyMaker
from protos.citypost.v1 import assets_pb2

AC = assets_pb2.AssetClass
AssetClass: TypeAlias = assets_pb2.AssetClass.ValueType

POLICIES: Mapping[AssetClass, PolicyMaker] = {
    AC.STREET_LAMP: lighting.make_policy,
    AC.TRAFFIC_SIGNAL: traffic.make_policy,
    AC.BOLLARD: bollards.make_policy,
    AC.WATER_METER: water.make_policy,
    AC.PARKING_SPOT: parking.make_policy,
    AC.AIR_QUALITY: air_quality.make_policy,
    AC.CAMERA: cameras.make_policy,
    AC.ROAD_WEATHER: road_weather.make_policy,
    AC.BUS: buses.make_policy,
    AC.COMPANY_CAR: dispatch.make_policy,
}

# Telemetry of the key class is also delivered to every group of these classes:
# signals give priority to the buses that approach them.
ALSO_FEEDS: Mapping[AssetClass, tuple[AssetClass, ...]] = {
    AC.BUS: (AC.TRAFFIC_SIGNAL,),
}


def actor_name(asset_class: AssetClass, group: str) -> str:
    """The actor's name, also its audit identity: `policy:<class>/<group>`."""
    return f"policy:{AC.Name(asset_class).lower()}/{group}"
