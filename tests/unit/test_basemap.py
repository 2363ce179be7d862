"""The console's schematic base map: one cell per commune, no overlap, no gap, the old
town inside Dijon, the lines inside the metropole, and the committed file up to date."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon

from citypost.errors import ConfigError
from console.web import basemap
from fleet import dijon
from fleet.geo import LatLon, distance_m, offset, to_xy
from fleet.population import _scatter

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    return basemap.build_basemap()


def _kind(collection: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in collection["features"] if f["properties"]["kind"] == kind]


def _xy(coords: list[list[float]]) -> list[tuple[float, float]]:
    return [to_xy((lat, lon)) for lon, lat in coords]


def _polygon(feature: dict[str, Any]) -> Polygon:
    """A feature's polygon in metres, for areas and distances."""
    geometry = feature["geometry"]
    assert geometry["type"] == "Polygon"
    assert len(geometry["coordinates"]) == 1  # no holes
    polygon = Polygon(_xy(geometry["coordinates"][0]))
    assert polygon.is_valid, feature["properties"]
    return polygon


def _cells(collection: dict[str, Any]) -> dict[str, Polygon]:
    return {f["properties"]["name"]: _polygon(f) for f in _kind(collection, "commune")}


def _metropole(collection: dict[str, Any]) -> Polygon:
    (outline,) = _kind(collection, "metropole")
    return _polygon(outline)


def _site(commune: dijon.Commune) -> Point:
    return Point(to_xy((commune.latitude, commune.longitude)))


def test_every_commune_has_exactly_one_cell_with_its_properties(
    collection: dict[str, Any],
) -> None:
    communes = _kind(collection, "commune")
    assert Counter(f["properties"]["name"] for f in communes) == Counter(
        c.name for c in dijon.COMMUNES
    )
    for feature in communes:
        props = feature["properties"]
        commune = dijon.COMMUNE_BY_NAME[props["name"]]
        assert props["population"] == commune.population
        assert props["slug"] == commune.slug
        assert props["sector"] == dijon.SECTOR_OF_COMMUNE[commune.name].name
        assert props["sector_group"] == dijon.SECTOR_OF_COMMUNE[commune.name].slug
    assert {f["properties"]["sector"] for f in communes} == {s.name for s in dijon.SECTORS}


def test_the_cells_tile_the_metropole_without_overlap_or_gap(collection: dict[str, Any]) -> None:
    cells = _cells(collection)
    metropole = _metropole(collection)
    overlaps = {
        (a, b): cells[a].intersection(cells[b]).area
        for a, b in itertools.combinations(sorted(cells), 2)
    }
    # Neighbours share their rounded vertices, so their edges coincide exactly.
    assert max(overlaps.values()) < 1.0  # m2
    union = shapely.union_all(list(cells.values()))
    assert abs(union.area - metropole.area) < 1e-4 * metropole.area
    assert abs(sum(c.area for c in cells.values()) - metropole.area) < 1e-4 * metropole.area
    assert all(union.covers(_site(c)) for c in dijon.COMMUNES)


def test_each_town_hall_and_label_lies_in_its_own_cell_only(collection: dict[str, Any]) -> None:
    cells = _cells(collection)
    for feature in _kind(collection, "commune"):
        props = feature["properties"]
        site = _site(dijon.COMMUNE_BY_NAME[props["name"]])
        label = Point(to_xy((props["label_lat"], props["label_lon"])))
        assert [name for name, cell in cells.items() if cell.contains(site)] == [props["name"]]
        assert [name for name, cell in cells.items() if cell.contains(label)] == [props["name"]]


def test_a_cell_holds_the_points_nearer_its_town_hall_than_any_other(
    collection: dict[str, Any],
) -> None:
    """Voronoi: a vertex of a cell is no nearer another town hall than its own (to the
    rounding of the coordinates, about a metre)."""
    for feature in _kind(collection, "commune"):
        own = dijon.COMMUNE_BY_NAME[feature["properties"]["name"]]
        for lon, lat in feature["geometry"]["coordinates"][0]:
            point: LatLon = (lat, lon)
            mine = distance_m(point, (own.latitude, own.longitude))
            nearest = min(distance_m(point, (c.latitude, c.longitude)) for c in dijon.COMMUNES)
            assert mine - nearest < 2.0, (own.name, point)


def test_the_old_town_is_a_48_vertex_circle_well_inside_dijons_cell(
    collection: dict[str, Any],
) -> None:
    (old_town,) = _kind(collection, "old_town")
    ring = old_town["geometry"]["coordinates"][0]
    assert len(ring) == 48 + 1 and ring[0] == ring[-1]
    for lon, lat in ring:
        radius = distance_m((lat, lon), dijon.OLD_TOWN_CENTRE)
        assert abs(radius - dijon.OLD_TOWN_RADIUS_M) < 2.0
    circle = _polygon(old_town)
    dijon_cell = _cells(collection)["Dijon"]
    assert dijon_cell.contains(circle)
    # Not just grazing: Dijon's cell edge is some 750 m off it (towards Fontaine-lès-Dijon).
    assert dijon_cell.exterior.distance(circle) > 500


def test_every_line_runs_through_its_stops_inside_the_metropole(
    collection: dict[str, Any],
) -> None:
    lines = _kind(collection, "bus_line")
    assert [f["properties"]["line"] for f in lines] == [line.number for line in dijon.LINES]
    metropole = _metropole(collection)
    for feature, line in zip(lines, dijon.LINES, strict=True):
        coords = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "LineString"
        assert len(coords) >= 2
        assert feature["properties"]["name"] == line.name
        assert feature["properties"]["tram"] is line.tram
        assert coords[0] == [round(line.stops[0][1], 5), round(line.stops[0][0], 5)]
        assert coords[-1] == [round(line.stops[-1][1], 5), round(line.stops[-1][0], 5)]
        # Wholly inside, and by a margin: the nearest, T2 at Valmy, is some 800 m in.
        assert metropole.exterior.distance(LineString(_xy(coords))) > 500
        assert metropole.contains(LineString(_xy(coords)))


class _Farthest(random.Random):
    """Draws that send fleet.population's scatter as far as it goes, towards `angle`."""

    def __init__(self, angle: float) -> None:
        super().__init__(0)
        self.angle = angle

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        return 1e9

    def uniform(self, a: float, b: float) -> float:
        return self.angle


def test_the_metropole_holds_every_device_and_stays_inside_the_bounds(
    collection: dict[str, Any],
) -> None:
    metropole = _metropole(collection)
    for commune in dijon.COMMUNES:
        centre = (commune.latitude, commune.longitude)
        for i in range(36):
            lat, lon = _scatter(
                _Farthest(math.radians(10 * i)), centre, commune.radius_km * 1000, 0.5
            )
            # Rounding the outline's vertices may move its edge by a metre.
            assert metropole.buffer(2.0).contains(Point(to_xy((lat, lon)))), (commune.name, i)
    south, west, north, east = dijon.BOUNDS
    west_lon, south_lat, east_lon, north_lat = collection["bbox"]
    assert west < west_lon < east_lon < east and south < south_lat < north_lat < north
    (outline,) = _kind(collection, "metropole")
    assert outline["properties"]["population"] == sum(c.population for c in dijon.COMMUNES)


def test_every_gateway_site_is_a_point_inside_the_metropole(collection: dict[str, Any]) -> None:
    metropole = _metropole(collection)
    gateways = _kind(collection, "gateway")
    assert [g["properties"]["gateway_id"] for g in gateways] == [gw for gw, _ in dijon.GATEWAYS]
    for feature, (_, (lat, lon)) in zip(gateways, dijon.GATEWAYS, strict=True):
        assert feature["geometry"] == {"type": "Point", "coordinates": [lon, lat]}
        assert metropole.contains(Point(to_xy((lat, lon))))


def test_rings_are_closed_counterclockwise_and_rounded_to_a_metre(
    collection: dict[str, Any],
) -> None:
    for feature in collection["features"]:
        geometry = feature["geometry"]
        rings = geometry["coordinates"] if geometry["type"] == "Polygon" else []
        for ring in rings:
            assert ring[0] == ring[-1] and ring[0] == min(ring)
            assert Polygon(ring).exterior.is_ccw, feature["properties"]
        coords = rings[0] if rings else geometry["coordinates"]
        for lon, lat in [coords] if geometry["type"] == "Point" else coords:
            assert lon == round(lon, 5) and lat == round(lat, 5)
    assert collection["properties"]["schematic"] is True


def test_the_build_is_the_same_bytes_every_time_and_small(collection: dict[str, Any]) -> None:
    text = basemap.render(collection)
    assert text == basemap.render(basemap.build_basemap())
    assert json.loads(text) == collection
    assert len(text.encode("utf-8")) < 150_000


def test_the_committed_file_is_a_fresh_build(capsys: pytest.CaptureFixture[str]) -> None:
    committed = basemap.BASEMAP_PATH.read_text(encoding="utf-8")
    assert committed == basemap.render(basemap.build_basemap())
    assert basemap.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_check_fails_on_a_stale_or_missing_file_and_a_write_cures_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "static" / "basemap.geojson"
    assert basemap.main(["--check", "--path", str(path)]) == 1
    assert "missing" in capsys.readouterr().err
    assert basemap.main(["--path", str(path)]) == 0
    assert basemap.main(["--check", "--path", str(path)]) == 0
    stale = json.loads(path.read_text(encoding="utf-8"))
    stale["features"][1]["properties"]["population"] += 1
    path.write_text(basemap.render(stale), encoding="utf-8")
    capsys.readouterr()
    assert basemap.main(["--check", "--path", str(path)]) == 1
    assert "stale: run `python -m console.web.basemap`" in capsys.readouterr().err


def test_bad_geography_is_a_config_error() -> None:
    ahuy, *rest = dijon.COMMUNES
    twin = dataclasses.replace(ahuy, name="Ahuy-bis")
    sectors = {**dijon.SECTOR_OF_COMMUNE, "Ahuy-bis": dijon.SECTORS[1]}
    with pytest.raises(ConfigError, match="share a town hall"):
        basemap.build_basemap(communes=(ahuy, twin, *rest), sector_of=sectors)
    with pytest.raises(ConfigError, match="no sector for Ahuy-bis"):
        basemap.build_basemap(communes=(twin, *rest))
    one_stop = dataclasses.replace(dijon.LINES[0], stops=dijon.LINES[0].stops[:1])
    with pytest.raises(ConfigError, match="fewer than two stops on t1"):
        basemap.build_basemap(lines=(one_stop,))


def test_the_cells_follow_the_town_halls() -> None:
    """Move Dijon's town hall 2 km east and Fontaine-lès-Dijon's cell reaches into the old
    town: the cells come from the geography, not from a fixed drawing."""
    lat, lon = offset((dijon.DIJON.latitude, dijon.DIJON.longitude), 2000.0, 0.0)
    moved = tuple(
        dataclasses.replace(c, latitude=lat, longitude=lon) if c is dijon.DIJON else c
        for c in dijon.COMMUNES
    )
    collection = basemap.build_basemap(communes=moved)
    cells = _cells(collection)
    (old_town,) = _kind(collection, "old_town")
    circle = _polygon(old_town)
    assert not cells["Dijon"].contains(circle)
    assert cells["Fontaine-lès-Dijon"].intersection(circle).area > 0.05 * circle.area
    assert cells["Dijon"].contains(Point(to_xy((lat, lon))))
