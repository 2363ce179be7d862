import math
import re

import pytest

from bridges.registry import application_id, class_name
from citypost.config import CityConfig
from fleet import dijon
from fleet.behaviours import Bus
from fleet.geo import Route, distance_m
from fleet.population import (
    IP_CLASSES,
    City,
    apportion,
    area_group,
    build_city,
    split_groups,
)
from protos.citypost.v1 import assets_pb2

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass
TR = assets_pb2.Transport
BY_SECTOR = set(dijon.DEFAULT_COUNTS) - {AC.STREET_LAMP, AC.BUS, AC.COMPANY_CAR}


def base_of(group: str) -> str:
    """`sector-centre-2` -> `sector-centre`: the group before it was split."""
    return re.sub(r"-\d+$", "", group)


def bearing_deg(c: dijon.Commune) -> float:
    north_m = (c.latitude - dijon.DIJON.latitude) * 111_200
    east_m = (c.longitude - dijon.DIJON.longitude) * 111_200 * math.cos(math.radians(c.latitude))
    return math.degrees(math.atan2(east_m, north_m)) % 360


@pytest.fixture(scope="module")
def full_city() -> City:
    return build_city(CityConfig())


def test_the_model_is_dijon_metropole() -> None:
    assert len(dijon.COMMUNES) == 24
    assert len({c.slug for c in dijon.COMMUNES}) == 24
    assert 250_000 <= sum(c.population for c in dijon.COMMUNES) <= 262_000
    for c in dijon.COMMUNES:
        assert (
            distance_m((c.latitude, c.longitude), (dijon.DIJON.latitude, dijon.DIJON.longitude))
            < 15_000
        )
    assert dijon.DEFAULT_COUNTS[AC.STREET_LAMP] == 34_000
    assert dijon.DEFAULT_COUNTS[AC.CAMERA] == 269
    assert dijon.DEFAULT_COUNTS[AC.COMPANY_CAR] == 400
    assert set(dijon.DEFAULT_COUNTS) == {v.number for v in AC.DESCRIPTOR.values if v.number}


@pytest.mark.timeout(60)
def test_scale_one_has_the_default_counts(full_city: City) -> None:
    counts = full_city.registry.count_by_class()
    assert counts == {class_name(cls): n for cls, n in dijon.DEFAULT_COUNTS.items()}
    assert len(full_city.devices) == len(full_city.registry) == sum(dijon.DEFAULT_COUNTS.values())


def test_groups_never_exceed_max_group_size(full_city: City) -> None:
    groups = full_city.registry.groups()
    assert max(len(members) for members in groups.values()) <= 2000
    lamp_groups = {g for (cls, g) in groups if cls == AC.STREET_LAMP}
    assert "dijon-1" in lamp_groups and "dijon" not in lamp_groups  # Dijon's lamps are split
    assert "ahuy" in lamp_groups
    small = build_city(CityConfig(scale=0.05, max_group_size=7))
    small_groups = small.registry.groups()
    assert max(len(m) for m in small_groups.values()) <= 7
    parking = {g for (cls, g) in small_groups if cls == AC.PARKING_SPOT}
    assert "sector-centre-1" in parking and "sector-centre" not in parking  # sectors split too


def test_scale_one_has_few_groups(full_city: City) -> None:
    # Each (class, group) is one actor of ~50 MiB: the whole city stays well under 100.
    groups = full_city.registry.groups()
    assert len(groups) < 100
    for cls in BY_SECTOR:
        assert len({g for (c, g) in groups if c == cls}) <= len(dijon.SECTORS)


def test_sectors_cover_every_commune_once() -> None:
    named = [name for sector in dijon.SECTORS for name in sector.communes]
    assert sorted(named) == sorted(c.name for c in dijon.COMMUNES)
    assert len(named) == len(set(named))
    assert 4 <= len(dijon.SECTORS) <= 5
    slugs = [s.slug for s in dijon.SECTORS]
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[a-z0-9-]+", s) for s in slugs)
    assert not set(slugs) & {c.slug for c in dijon.COMMUNES}
    assert dijon.SECTOR_OF_COMMUNE["Dijon"].name == "centre"


def test_sectors_follow_the_bearing_from_dijon() -> None:
    quadrant = {0: "north", 1: "east", 2: "south", 3: "west"}
    for c in dijon.COMMUNES:
        if c is dijon.DIJON:
            continue
        expected = quadrant[int(((bearing_deg(c) + 45) % 360) // 90)]
        assert dijon.SECTOR_OF_COMMUNE[c.name].name == expected, c.name


def test_lamps_by_commune_others_by_sector_lines_departments() -> None:
    city = build_city(CityConfig(scale=0.05, max_group_size=50))
    seen: set[int] = set()
    for d in city.registry:
        commune = dijon.COMMUNE_BY_NAME[d.commune]  # devices keep their commune
        seen.add(d.asset_class)
        if d.asset_class == AC.STREET_LAMP:
            assert base_of(d.group) == commune.slug
        elif d.asset_class in BY_SECTOR:
            assert base_of(d.group) == dijon.SECTOR_OF_COMMUNE[d.commune].slug
            assert d.group.startswith("sector-")
        assert re.fullmatch(r"[a-z0-9_-]+", d.group)
    assert seen == set(dijon.DEFAULT_COUNTS)
    assert area_group(AC.STREET_LAMP, dijon.DIJON) == "dijon"
    assert area_group(AC.WATER_METER, dijon.COMMUNE_BY_NAME["Talant"]) == "sector-west"


def test_buses_by_line_and_cars_by_department(full_city: City) -> None:
    groups = full_city.registry.groups()
    bus_groups = {g for (cls, g) in groups if cls == AC.BUS}
    car_groups = {g for (cls, g) in groups if cls == AC.COMPANY_CAR}
    assert bus_groups == {line.code for line in dijon.LINES}
    assert car_groups == {
        "police", "municipal_police", "roads", "waste", "snow_service", "citizen_services"
    }  # fmt: skip
    cars = {g: len(m) for (cls, g), m in groups.items() if cls == AC.COMPANY_CAR}
    assert cars == {d.name: d.cars for d in dijon.DEPARTMENTS}


def test_a_tiny_slice_still_has_every_class() -> None:
    city = build_city(CityConfig(scale=0.001))
    counts = city.registry.count_by_class()
    assert set(counts) == {class_name(cls) for cls in dijon.DEFAULT_COUNTS}
    assert all(n >= 1 for n in counts.values())
    assert counts["street_lamp"] == 34
    assert len(city.registry) < 60


def test_same_seed_same_euis_different_seed_different() -> None:
    first = build_city(CityConfig(scale=0.01, seed=1)).registry
    again = build_city(CityConfig(scale=0.01, seed=1)).registry
    a = [d.dev_eui for d in first]
    b = [d.dev_eui for d in again]
    c = [d.dev_eui for d in build_city(CityConfig(scale=0.01, seed=2)).registry]
    assert a == b
    assert list(first) == list(again)  # same groups, communes and places too
    assert not set(a) & set(c)
    assert all(re.fullmatch(r"[0-9a-f]{16}", eui) for eui in a)
    assert len(set(a)) == len(a)


def test_transport_and_application_by_class() -> None:
    city = build_city(CityConfig(scale=0.002))
    for sd in city.devices:
        device = sd.device
        ip = device.asset_class in IP_CLASSES
        assert device.transport == (TR.IP if ip else TR.LORAWAN)
        assert (sd.radio is None) == ip
        assert device.application_id == application_id("dijon", device.asset_class)
    assert {AC.BUS, AC.COMPANY_CAR, AC.CAMERA, AC.TRAFFIC_SIGNAL} == IP_CLASSES


def test_devices_are_where_the_model_says() -> None:
    city = build_city(CityConfig(scale=0.05))
    routes = {line.number: Route.of(line.stops) for line in dijon.LINES}
    for sd in city.devices:
        d = sd.device
        point = (d.latitude, d.longitude)
        if d.asset_class == AC.BOLLARD:
            assert distance_m(point, dijon.OLD_TOWN_CENTRE) <= dijon.OLD_TOWN_RADIUS_M * 1.1
            assert d.commune == "Dijon"
        elif d.asset_class == AC.BUS:
            assert isinstance(sd.behaviour, Bus)
            assert routes[sd.behaviour.line.number].distance_to(point) < 1
        else:
            south, west, north, east = dijon.BOUNDS
            assert south < d.latitude < north and west < d.longitude < east
        assert d.commune in dijon.COMMUNE_BY_NAME


def test_lamps_follow_population() -> None:
    city = build_city(CityConfig(scale=0.1))
    lamps: dict[str, int] = {}
    for d in city.registry:
        if d.asset_class == AC.STREET_LAMP:
            lamps[d.commune] = lamps.get(d.commune, 0) + 1
    assert lamps["Dijon"] > lamps["Chenôve"] > lamps["Ahuy"]
    assert abs(lamps["Dijon"] / 3400 - 157_000 / 256_030) < 0.01


def test_apportion_and_split() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(apportion(34_000, [c.population for c in dijon.COMMUNES])) == 34_000
    names = split_groups("dijon", 4001, 2000)
    assert sorted(set(names)) == ["dijon-1", "dijon-2", "dijon-3"]
    assert max(names.count(n) for n in set(names)) <= 2000
    assert split_groups("ahuy", 5, 2000) == ["ahuy"] * 5
