"""Dijon Métropole as the simulated city sees it: communes, sectors, old town, Divia lines, scale.

Data only. Coordinates are approximate town centres (WGS84, 4 decimals ≈ 10 m);
populations are rounded recent census figures that add up to about 256,000 as
in the article. Divia routes are simplified polylines through approximate stop
positions, good enough for vehicles to move along plausible streets.

Default device counts (scale 1.0). The article gives three numbers; the rest
are reasoned estimates for a metropolis of 256,000:

- street lamps: 34,000 LED lamps (article: 93 % of the stock is replaced).
- cameras: 269 (article).
- company cars: 400 geolocated cars (article), split over the six former
  posts' departments by how much each drives: roads and waste run the largest
  fleets, snow service the smallest (a few gritter pick-ups and patrol cars).
- buses: Divia runs 33 Citadis trams on T1/T2 and about 160 buses at peak on
  its main lines; 193 vehicles, spread over the modelled lines by line weight.
- traffic signal controllers: cities of this size run about one signalised
  junction per 1,200 inhabitants -> about 210, most on bus/tram corridors
  (the article's bus priority needs them there).
- bollards: the secteur sauvegardé is about 97 ha with some 30 street entries;
  one or two retractable bollards per entry -> 60.
- elderly volunteers' water meters: about 10 % of 256,000 are 75 or older
  (~25,000); a volunteer scheme reaching ~4 % of them -> 1,000 meters.
- parking sensors: on-street paid spaces are ~5,000 in Dijon's centre; about
  half get a sensor -> 2,500.
- air quality stations: 4 reference stations plus low-cost sensors, about one
  per commune and a denser mesh in Dijon -> 40.
- road temperature sensors for the snow service: about one per 10 km of the
  priority gritting network (~300 km), bridges and slopes first -> 30.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from protos.citypost.v1 import assets_pb2

AssetClass = assets_pb2.AssetClass

LatLon = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Commune:
    name: str
    latitude: float
    longitude: float
    population: int

    @property
    def slug(self) -> str:
        """`Fontaine-lès-Dijon` -> `fontaine-les-dijon`: ASCII, for group names."""
        ascii_name = (
            unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode("ascii")
        )
        return ascii_name.lower().replace(" ", "-").replace("'", "-")

    @property
    def radius_km(self) -> float:
        """Rough extent of the built-up area: Dijon ~3.6 km, a village ~0.5 km."""
        return 0.4 + 0.008 * math.sqrt(self.population)


# The 24 communes of Dijon Métropole in 2017 (Crimolois merged into Neuilly in 2019).
COMMUNES: tuple[Commune, ...] = (
    Commune("Ahuy", 47.3700, 5.0208, 1_300),
    Commune("Bressey-sur-Tille", 47.3106, 5.1822, 1_100),
    Commune("Bretenière", 47.2403, 5.1114, 900),
    Commune("Chenôve", 47.2925, 5.0053, 14_300),
    Commune("Chevigny-Saint-Sauveur", 47.2997, 5.1336, 11_500),
    Commune("Corcelles-les-Monts", 47.2972, 4.9403, 650),
    Commune("Crimolois", 47.2722, 5.1250, 750),
    Commune("Daix", 47.3519, 4.9875, 1_500),
    Commune("Dijon", 47.3220, 5.0415, 157_000),
    Commune("Fénay", 47.2347, 5.0628, 1_650),
    Commune("Flavignerot", 47.2886, 4.9544, 180),
    Commune("Fontaine-lès-Dijon", 47.3425, 5.0206, 9_100),
    Commune("Hauteville-lès-Dijon", 47.3658, 4.9933, 1_200),
    Commune("Longvic", 47.2872, 5.0636, 9_500),
    Commune("Magny-sur-Tille", 47.2825, 5.1750, 900),
    Commune("Marsannay-la-Côte", 47.2717, 4.9886, 5_300),
    Commune("Neuilly-lès-Dijon", 47.2794, 5.1058, 1_950),
    Commune("Ouges", 47.2611, 5.0736, 1_450),
    Commune("Perrigny-lès-Dijon", 47.2658, 5.0061, 1_750),
    Commune("Plombières-lès-Dijon", 47.3372, 4.9656, 2_800),
    Commune("Quetigny", 47.3147, 5.1067, 9_800),
    Commune("Saint-Apollinaire", 47.3331, 5.0853, 7_600),
    Commune("Sennecey-lès-Dijon", 47.2903, 5.1044, 2_250),
    Commune("Talant", 47.3372, 5.0058, 11_600),
)

COMMUNE_BY_NAME: Mapping[str, Commune] = {c.name: c for c in COMMUNES}
DIJON = COMMUNE_BY_NAME["Dijon"]


@dataclass(frozen=True, slots=True)
class Sector:
    """Communes whose devices of one class share an actor (street lamps stay per commune)."""

    name: str
    communes: tuple[str, ...]

    @property
    def slug(self) -> str:
        """`north` -> `sector-north`: the group name, apart from any commune's slug."""
        return f"sector-{self.name}"


# Dijon is the centre; every other commune goes by its bearing from Dijon's town centre
# to the quadrant around N, E, S or W (boundaries on the diagonals: Daix at 309° is west).
SECTORS: tuple[Sector, ...] = (
    Sector("centre", ("Dijon",)),
    Sector("north", ("Ahuy", "Fontaine-lès-Dijon", "Hauteville-lès-Dijon")),
    Sector(
        "east",
        (
            "Bressey-sur-Tille",
            "Chevigny-Saint-Sauveur",
            "Crimolois",
            "Magny-sur-Tille",
            "Neuilly-lès-Dijon",
            "Quetigny",
            "Saint-Apollinaire",
            "Sennecey-lès-Dijon",
        ),
    ),
    Sector(
        "south",
        (
            "Bretenière",
            "Chenôve",
            "Fénay",
            "Longvic",
            "Marsannay-la-Côte",
            "Ouges",
            "Perrigny-lès-Dijon",
        ),
    ),
    Sector(
        "west",
        ("Corcelles-les-Monts", "Daix", "Flavignerot", "Plombières-lès-Dijon", "Talant"),
    ),
)

SECTOR_OF_COMMUNE: Mapping[str, Sector] = {name: s for s in SECTORS for name in s.communes}

# The old town (secteur sauvegardé, ~97 ha around the Palais des ducs): a circle of
# 97 ha has a radius of ~560 m; bollards stand at its street entries.
OLD_TOWN_CENTRE: LatLon = (47.3219, 5.0405)
OLD_TOWN_RADIUS_M = 600.0

# LoRaWAN gateway sites (rooftops, water towers): the network server picks the
# nearest for each device's radio metadata.
GATEWAYS: tuple[tuple[str, LatLon], ...] = (
    ("0016c001f1000001", (47.3220, 5.0415)),  # Dijon centre
    ("0016c001f1000002", (47.3530, 5.0540)),  # Toison d'Or
    ("0016c001f1000003", (47.3170, 5.0030)),  # Fontaine d'Ouche
    ("0016c001f1000004", (47.3100, 5.0650)),  # Université
    ("0016c001f1000005", (47.2925, 5.0053)),  # Chenôve
    ("0016c001f1000006", (47.3147, 5.1067)),  # Quetigny
    ("0016c001f1000007", (47.3372, 5.0058)),  # Talant
    ("0016c001f1000008", (47.2872, 5.0636)),  # Longvic
    ("0016c001f1000009", (47.3331, 5.0853)),  # Saint-Apollinaire
    ("0016c001f100000a", (47.2717, 4.9886)),  # Marsannay-la-Côte
    ("0016c001f100000b", (47.2997, 5.1336)),  # Chevigny-Saint-Sauveur
    ("0016c001f100000c", (47.2400, 5.0800)),  # Fénay / Bretenière
)


@dataclass(frozen=True, slots=True)
class TransitLine:
    """A Divia line: its number on the wire (VehicleReading.line) and its route."""

    code: str  # group name: "t1", "l3"
    number: int
    name: str
    tram: bool
    weight: int  # share of the vehicle fleet
    stops: tuple[LatLon, ...]

    @property
    def commercial_speed_kmh(self) -> float:
        # Trams on their own track run faster than buses in traffic.
        return 19.0 if self.tram else 15.0


# Approximate routes; stop positions are rounded to ~50 m.
LINES: tuple[TransitLine, ...] = (
    TransitLine(
        "t1",
        1,
        "T1 Dijon Gare - Quetigny Centre",
        True,
        15,
        (
            (47.3232, 5.0274),  # Gare
            (47.3228, 5.0321),  # Foch Gare
            (47.3226, 5.0350),  # Darcy
            (47.3240, 5.0405),  # Godrans
            (47.3276, 5.0450),  # République
            (47.3293, 5.0530),  # Auditorium
            (47.3285, 5.0595),  # Poincaré
            (47.3250, 5.0680),  # Parc des Sports
            (47.3215, 5.0720),  # Mazen-Sully
            (47.3200, 5.0780),  # Piscine olympique
            (47.3180, 5.0900),  # Cap Vert
            (47.3160, 5.1005),  # Grand Marché
            (47.3140, 5.1075),  # Quetigny Centre
        ),
    ),
    TransitLine(
        "t2",
        2,
        "T2 Dijon Valmy - Chenôve Centre",
        True,
        18,
        (
            (47.3622, 5.0420),  # Valmy
            (47.3590, 5.0470),  # Parc Technologique
            (47.3545, 5.0530),  # Toison d'Or
            (47.3500, 5.0500),  # Nation
            (47.3440, 5.0462),  # Drapeau
            (47.3385, 5.0450),  # Junot
            (47.3330, 5.0448),  # Dauphine
            (47.3276, 5.0450),  # République
            (47.3240, 5.0405),  # Godrans
            (47.3226, 5.0350),  # Darcy
            (47.3228, 5.0321),  # Foch Gare
            (47.3160, 5.0290),  # Monge
            (47.3090, 5.0260),  # Jaurès
            (47.3020, 5.0200),  # Carraz
            (47.2990, 5.0150),  # Bourroches
            (47.2925, 5.0080),  # Chenôve Centre
        ),
    ),
    TransitLine(
        "l3",
        3,
        "L3 Fontaine d'Ouche - Saint-Apollinaire",
        False,
        40,
        (
            (47.3135, 4.9990),  # Fontaine d'Ouche Lac
            (47.3170, 5.0080),
            (47.3200, 5.0150),  # Chartreux
            (47.3232, 5.0274),  # Gare
            (47.3226, 5.0350),  # Darcy
            (47.3220, 5.0440),  # Théâtre
            (47.3260, 5.0600),
            (47.3300, 5.0720),
            (47.3331, 5.0853),  # Saint-Apollinaire Centre
        ),
    ),
    TransitLine(
        "l4",
        4,
        "L4 Talant - Longvic",
        False,
        40,
        (
            (47.3372, 5.0058),  # Talant Belvédère
            (47.3330, 5.0170),
            (47.3280, 5.0260),
            (47.3226, 5.0350),  # Darcy
            (47.3160, 5.0450),  # Place Wilson
            (47.3060, 5.0520),
            (47.2960, 5.0590),
            (47.2872, 5.0636),  # Longvic Centre
        ),
    ),
    TransitLine(
        "l5",
        5,
        "L5 Fontaine-lès-Dijon - Université",
        False,
        40,
        (
            (47.3425, 5.0206),  # Fontaine-lès-Dijon
            (47.3350, 5.0300),
            (47.3276, 5.0450),  # République
            (47.3230, 5.0560),
            (47.3140, 5.0650),  # Université
            (47.3110, 5.0720),  # Érasme
        ),
    ),
    TransitLine(
        "l6",
        6,
        "L6 Dijon Gare - Chevigny-Saint-Sauveur",
        False,
        40,
        (
            (47.3232, 5.0274),  # Gare
            (47.3160, 5.0450),  # Place Wilson
            (47.3120, 5.0620),
            (47.3080, 5.0850),
            (47.3040, 5.1100),
            (47.2997, 5.1336),  # Chevigny-Saint-Sauveur Centre
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Department:
    """One of the six former posts' departments, with its cars and where they park."""

    name: str
    cars: int  # at scale 1.0; the six add up to 400
    depot: LatLon
    depot_commune: str


DEPARTMENTS: tuple[Department, ...] = (
    Department("police", 60, (47.3170, 5.0440), "Dijon"),
    Department("municipal_police", 70, (47.3190, 5.0370), "Dijon"),
    Department("roads", 110, (47.3035, 5.0535), "Dijon"),
    Department("waste", 70, (47.2985, 5.0220), "Dijon"),
    Department("snow_service", 30, (47.2860, 5.0600), "Longvic"),
    Department("citizen_services", 60, (47.3216, 5.0412), "Dijon"),
)

# Device counts at scale 1.0; the module docstring gives the reasoning.
DEFAULT_COUNTS: Mapping[assets_pb2.AssetClass.ValueType, int] = {
    AssetClass.STREET_LAMP: 34_000,
    AssetClass.CAMERA: 269,
    AssetClass.COMPANY_CAR: sum(d.cars for d in DEPARTMENTS),
    AssetClass.BUS: 193,
    AssetClass.TRAFFIC_SIGNAL: 210,
    AssetClass.BOLLARD: 60,
    AssetClass.WATER_METER: 1_000,
    AssetClass.PARKING_SPOT: 2_500,
    AssetClass.AIR_QUALITY: 40,
    AssetClass.ROAD_WEATHER: 30,
}

# Metropolitan bounding box, with a margin; vehicles never leave it.
BOUNDS = (47.22, 4.92, 47.38, 5.20)  # south, west, north, east
