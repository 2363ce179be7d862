"""The web console's offline base map: a schematic drawing of the city from fleet/dijon.py.

Schematic, not surveyed. No commune boundary, street or river is known to the
project, only town halls, populations, the old town's circle and the Divia
routes, so the map draws what those give:

- the metropole: the convex hull of every commune's device disc (a circle of
  SCATTER_REACH x the commune's built-up radius around its town hall, the
  farthest fleet.population places a device), so that every device placed by
  commune lies on the map. With the built-up radii of fleet/dijon.py the
  outline keeps 0.7 to 4.3 km around the town halls and stays inside BOUNDS
  (a fixed 1.5 km around the town halls would not: Ahuy and Bressey would
  push it past the north and east edges).
- one cell per commune: the Voronoi cell of its town hall, clipped to that
  outline. Every point of a cell is nearer its own town hall than any other,
  which is how fleet.population.nearest_commune files a point; a real
  boundary it is not (Dijon's cell is about 13 km2, the real commune 40 km2).
- the old town: the bollard sector's circle, OLD_TOWN_VERTICES vertices.
- one line string per Divia line through its stops.
- one point per LoRaWAN gateway site (fleet/dijon.py's GATEWAYS): the map draws
  them and places a gateway's alarm there.

Coordinates are [lon, lat] rounded to DECIMALS places (about 1 m); each ring
runs counterclockwise (RFC 7946) from its lowest [lon, lat] vertex, so that the
output depends on the geometry only and not on the order GEOS lists vertices.

Run from the project root: `python -m console.web.basemap [--check]` writes
console/web/static/basemap.geojson, or with --check fails if the committed file
is not what a fresh build writes. Shapely (a dev dependency) is imported only
where the map is built: the console serves the committed file and needs none.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citypost.errors import ConfigError
from fleet import dijon
from fleet.dijon import Commune, Sector, TransitLine
from fleet.geo import LatLon, from_xy, to_xy

if TYPE_CHECKING:
    from shapely.geometry import Polygon

BASEMAP_PATH = Path(__file__).resolve().parent / "static" / "basemap.geojson"

DECIMALS = 5  # 1e-5 degree: 1.1 m north-south, 0.75 m east-west at Dijon
OLD_TOWN_VERTICES = 48
DISC_VERTICES = 64  # each commune's device disc, before the hull keeps the outer ones
# fleet.population._scatter places a device at most 1.2 built-up radii from its town hall.
SCATTER_REACH = 1.2

Coordinate = list[float]  # [lon, lat]
Feature = dict[str, Any]
XY = tuple[float, float]


def _lonlat(x: float, y: float) -> Coordinate:
    lat, lon = from_xy(x, y)
    return [round(lon, DECIMALS), round(lat, DECIMALS)]


def _circle(centre: XY, radius_m: float, vertices: int) -> list[XY]:
    """A regular polygon around centre, first vertex due east, counterclockwise."""
    cx, cy = centre
    return [
        (
            cx + radius_m * math.cos(2 * math.pi * i / vertices),
            cy + radius_m * math.sin(2 * math.pi * i / vertices),
        )
        for i in range(vertices)
    ]


def _ring(points: Sequence[XY]) -> list[Coordinate]:
    """Metric points -> a closed GeoJSON ring: rounded, no repeated vertex,
    counterclockwise, starting at its lowest [lon, lat]."""
    ring: list[Coordinate] = []
    for x, y in points:
        c = _lonlat(x, y)
        if not ring or c != ring[-1]:
            ring.append(c)
    while len(ring) > 1 and ring[0] == ring[-1]:
        ring.pop()
    if len(ring) < 3:
        raise ConfigError(f"basemap: a ring of {len(ring)} distinct points after rounding")
    twice_area = sum(
        a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
    )
    if twice_area < 0:
        ring.reverse()
    start = ring.index(min(ring))
    ring = ring[start:] + ring[:start]
    return [*ring, ring[0]]


def _polygon(polygon: Polygon) -> dict[str, Any]:
    if polygon.interiors:
        raise ConfigError("basemap: a drawn polygon has a hole")
    ring = [(x, y) for x, y in list(polygon.exterior.coords)[:-1]]
    return {"type": "Polygon", "coordinates": [_ring(ring)]}


def _line(points: Sequence[LatLon]) -> dict[str, Any]:
    coords: list[Coordinate] = []
    for lat, lon in points:
        c = [round(lon, DECIMALS), round(lat, DECIMALS)]
        if not coords or c != coords[-1]:
            coords.append(c)
    return {"type": "LineString", "coordinates": coords}


def _feature(geometry: dict[str, Any], **properties: object) -> Feature:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def metropole_outline(communes: Sequence[Commune]) -> Polygon:
    """Metric outline: the convex hull of every commune's device disc."""
    from shapely.geometry import MultiPoint, Polygon  # dev dependency, imported only here

    points = [
        vertex
        for c in communes
        for vertex in _circle(
            to_xy((c.latitude, c.longitude)), SCATTER_REACH * c.radius_km * 1000, DISC_VERTICES
        )
    ]
    hull = MultiPoint(points).convex_hull
    if not isinstance(hull, Polygon):
        raise ConfigError("basemap: the communes span no area")
    return hull


def commune_cells(communes: Sequence[Commune], outline: Polygon) -> list[Polygon]:
    """Metric Voronoi cell of each commune's town hall within outline, in the communes' order."""
    import shapely  # dev dependency, imported only here
    from shapely.geometry import MultiPoint, Point, Polygon

    sites = [Point(to_xy((c.latitude, c.longitude))) for c in communes]
    seen: dict[tuple[float, float], str] = {}
    for commune, site in zip(communes, sites, strict=True):
        other = seen.setdefault((site.x, site.y), commune.name)
        if other != commune.name:
            raise ConfigError(f"basemap: {commune.name} and {other} share a town hall position")
    if len(sites) < 2:
        raise ConfigError("basemap: a map of communes needs at least two of them")
    voronoi = shapely.voronoi_polygons(MultiPoint(sites), extend_to=outline)
    cells: list[Polygon] = []
    for commune, site in zip(communes, sites, strict=True):
        mine = [cell for cell in voronoi.geoms if cell.contains(site)]
        if len(mine) != 1:
            raise ConfigError(f"basemap: {len(mine)} Voronoi cells hold {commune.name}'s town hall")
        clipped = mine[0].intersection(outline)
        if not isinstance(clipped, Polygon):
            raise ConfigError(f"basemap: {commune.name}'s cell is not one polygon")
        cells.append(clipped)
    return cells


def build_basemap(
    communes: Sequence[Commune] = dijon.COMMUNES,
    sector_of: Mapping[str, Sector] = dijon.SECTOR_OF_COMMUNE,
    lines: Sequence[TransitLine] = dijon.LINES,
    old_town_centre: LatLon = dijon.OLD_TOWN_CENTRE,
    old_town_radius_m: float = dijon.OLD_TOWN_RADIUS_M,
    gateways: Sequence[tuple[str, LatLon]] = dijon.GATEWAYS,
) -> dict[str, Any]:
    """The base map as a GeoJSON FeatureCollection, in drawing order: metropole,
    communes, old town, lines, gateways."""
    missing = [c.name for c in communes if c.name not in sector_of]
    if missing:
        raise ConfigError(f"basemap: no sector for {', '.join(missing)}")
    short = [line.code for line in lines if len(line.stops) < 2]
    if short:
        raise ConfigError(f"basemap: fewer than two stops on {', '.join(short)}")
    outline = metropole_outline(communes)
    features: list[Feature] = [
        _feature(
            _polygon(outline),
            kind="metropole",
            name="Dijon Métropole",
            communes=len(communes),
            population=sum(c.population for c in communes),
        )
    ]
    for commune, cell in zip(communes, commune_cells(communes, outline), strict=True):
        label = cell.centroid  # a cell is convex, so its centroid lies inside it
        label_lon, label_lat = _lonlat(label.x, label.y)
        sector = sector_of[commune.name]
        features.append(
            _feature(
                _polygon(cell),
                kind="commune",
                name=commune.name,
                slug=commune.slug,
                population=commune.population,
                sector=sector.name,
                sector_group=sector.slug,
                label_lon=label_lon,
                label_lat=label_lat,
            )
        )
    old_town = _circle(to_xy(old_town_centre), old_town_radius_m, OLD_TOWN_VERTICES)
    features.append(
        _feature(
            {"type": "Polygon", "coordinates": [_ring(old_town)]},
            kind="old_town",
            name="Secteur sauvegardé",
            radius_m=old_town_radius_m,
        )
    )
    features.extend(
        _feature(
            _line(line.stops),
            kind="bus_line",
            line=line.number,
            code=line.code,
            name=line.name,
            tram=line.tram,
        )
        for line in lines
    )
    features.extend(
        _feature(
            {"type": "Point", "coordinates": [round(lon, DECIMALS), round(lat, DECIMALS)]},
            kind="gateway",
            gateway_id=gateway_id,
        )
        for gateway_id, (lat, lon) in gateways
    )
    west, south, east, north = outline.bounds
    return {
        "type": "FeatureCollection",
        "name": "Dijon Métropole, schematic base map",
        "bbox": [*_lonlat(west, south), *_lonlat(east, north)],
        "properties": {
            "schematic": True,
            "note": (
                "Schematic, not surveyed: commune cells are the Voronoi cells of the town "
                "halls within the hull of the communes' built-up areas; lines join "
                "approximate stops."
            ),
            "source": "fleet/dijon.py",
            "generator": "python -m console.web.basemap",
        },
        "features": features,
    }


def render(collection: Mapping[str, Any]) -> str:
    """Compact JSON with sorted keys: the same bytes for the same map."""
    return json.dumps(collection, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed map is stale")
    parser.add_argument("--path", type=Path, default=BASEMAP_PATH, help="the GeoJSON file")
    args = parser.parse_args(argv)
    path: Path = args.path
    fresh = render(build_basemap())
    if args.check:
        committed = path.read_text(encoding="utf-8") if path.exists() else None
        if committed != fresh:
            state = "missing" if committed is None else "stale"
            print(
                f"base map {path} is {state}: run `python -m console.web.basemap`",
                file=sys.stderr,
            )
            return 1
        print(f"basemap: {path.name} up to date ({len(fresh.encode('utf-8'))} bytes)")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fresh, encoding="utf-8")
    print(f"basemap: wrote {path} ({len(fresh.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
