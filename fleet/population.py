"""Populate the city: every device, where it stands, which group owns it, how it behaves.

Deterministic: the same CityConfig gives the same devEuis, places and
behaviours. Counts follow `fleet.dijon.DEFAULT_COUNTS` times `city.scale`,
with at least one device of every class so that a tiny slice still has them
all. Groups are the commune for street lamps, the bus line, the car's
department, and the sector (`sector-north`, see `fleet.dijon.SECTORS`) for
every other class; a group past `max_group_size` is split into `<group>-<n>`.
Each (class, group) is one actor (~50 MiB), so groups are few and large.
A few water-meter volunteers have a welfare episode planned (WELFARE_SHARE): their
household draws no water for most of a day; fleet.faults tells which and when.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from bridges.registry import RADIO_CLASS, Device, DeviceRegistry, RadioClass, application_id
from citypost.config import CityConfig
from fleet import dijon
from fleet.behaviours import (
    AirQualityStation,
    Behaviour,
    Bollard,
    Bus,
    Camera,
    CompanyCar,
    LineRoute,
    ParkingSpot,
    RoadWeatherStation,
    StreetLamp,
    TrafficSignal,
    WaterMeter,
    places_from,
)
from fleet.dijon import COMMUNES, SECTOR_OF_COMMUNE, Commune
from fleet.geo import LatLon, Route, distance_m, offset
from protos.citypost.v1 import assets_pb2

AssetClass = assets_pb2.AssetClass
Transport = assets_pb2.Transport
ClassId: TypeAlias = assets_pb2.AssetClass.ValueType

# On the city's fibre or on a mobile modem: everything else is on LoRaWAN.
IP_CLASSES = frozenset(c for c, radio in RADIO_CLASS.items() if radio is RadioClass.IP)
# Volunteers whose household stops drawing water for a while during the run (a fall, an
# illness, a stay in hospital): at least one however small the city, 5 of 1,000 at full scale.
WELFARE_SHARE = 0.005
# Volunteer k's episode begins 7k h + 2..6 h after its meter's first reading (within an
# hour of the simulation's start) and lasts 18..21 h: the first one is over within 28 h (a
# demo's day sees it raised and cleared); at full scale they begin over the first day and
# a half. 18 h covers the post's 8 h outside its quiet period (7 h, 8 on the night clocks go
# back) plus an hourly uplink's granularity, wherever the episode falls in the day.
WELFARE_STAGGER_H = 7.0
WELFARE_START_H = (2.0, 6.0)
WELFARE_HOURS = (18.0, 21.0)
# The volunteers are the first of a random draw of this share of the meters: a draw kept
# from an earlier model, so that the city's random stream, hence every device's devEui and
# place, stays as it was.
_VOLUNTEER_DRAW_SHARE = 0.03
SIGNALS_ON_LINES = 0.6  # share of signals at junctions on bus/tram corridors


@dataclass(frozen=True, slots=True)
class RadioLink:
    """What the network server reports for a LoRaWAN device's uplinks (before noise)."""

    gateway_id: str
    rssi: int
    snr: float
    dr: int
    # Every gateway that hears the device, best first (gateway_id is the first): the
    # network server sends a downlink through the best one whose duty cycle allows it.
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SimDevice:
    device: Device
    behaviour: Behaviour
    radio: RadioLink | None  # None for IP devices


@dataclass(frozen=True)
class City:
    name: str
    registry: DeviceRegistry
    devices: tuple[SimDevice, ...]  # in registry order

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_eui", {d.device.dev_eui: d for d in self.devices})

    def get(self, dev_eui: str) -> SimDevice | None:
        by_eui: dict[str, SimDevice] = self.__dict__["_by_eui"]
        return by_eui.get(dev_eui)

    def behaviour(self, dev_eui: str) -> Behaviour | None:
        found = self.get(dev_eui)
        return None if found is None else found.behaviour

    def uplinks_per_sim_s(self, interval_factor: float = 1.0) -> float:
        """The city's nominal uplink rate per simulated second."""
        return sum(1 / (d.behaviour.interval_s * interval_factor) for d in self.devices)


def scaled_counts(scale: float) -> dict[ClassId, int]:
    """Devices per class at this scale: the defaults at 1.0, at least one of each."""
    return {cls: max(1, round(n * scale)) for cls, n in dijon.DEFAULT_COUNTS.items()}


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` by weights, largest remainder first (Hamilton); ties to the earlier."""
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    shares = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def split_groups(base: str, n: int, max_size: int) -> list[str]:
    """Group names for n devices of one (class, base): `base`, or `base-1`.. past max_size."""
    if n <= max_size:
        return [base] * n
    k = math.ceil(n / max_size)
    return [f"{base}-{i * k // n + 1}" for i in range(n)]


def _scatter(rng: random.Random, centre: LatLon, radius_m: float, spread: float) -> LatLon:
    """A point around centre, denser in the middle, never beyond 1.2 radius."""
    r = min(abs(rng.gauss(0.0, radius_m * spread)), 1.2 * radius_m)
    a = rng.uniform(0.0, 2 * math.pi)
    return offset(centre, r * math.cos(a), r * math.sin(a))


def nearest_commune(point: LatLon) -> Commune:
    return min(COMMUNES, key=lambda c: distance_m(point, (c.latitude, c.longitude)))


# Below this a gateway does not count as hearing the device (SF12's sensitivity is about
# -137 dBm; the margin covers fading).
HEARD_ABOVE_DBM = -125.0


def _path_rssi(point: LatLon, site: LatLon, extra_loss_db: float) -> float:
    km = max(distance_m(point, site) / 1000, 0.05)
    return -62 - 32 * math.log10(km / 0.1) - extra_loss_db


def radio_link(point: LatLon, extra_loss_db: float, rng: random.Random) -> RadioLink:
    """Path loss to the nearest gateway -> RSSI, SNR and the data rate ADR would settle on;
    and every gateway that hears the device, best first."""
    gateway_id, site = min(dijon.GATEWAYS, key=lambda g: distance_m(point, g[1]))
    rssi = _path_rssi(point, site, extra_loss_db) + rng.gauss(0, 3)
    rssi = max(-130.0, min(-40.0, rssi))
    snr = max(-18.0, min(12.0, 10 + (rssi + 100) * 0.5))
    dr = 5 if rssi > -100 else 4 if rssi > -108 else 3 if rssi > -114 else 2 if rssi > -120 else 0
    others = sorted(
        (-_path_rssi(point, other, extra_loss_db), gw)
        for gw, other in dijon.GATEWAYS
        if gw != gateway_id and _path_rssi(point, other, extra_loss_db) > HEARD_ABOVE_DBM
    )
    heard = (gateway_id, *(gw for _, gw in others))
    return RadioLink(gateway_id, round(rssi), round(snr, 1), dr, heard)


# Grouped by commune: lamps are numerous enough to fill commune groups, and a dusk or
# dimming command to a commune's lamps is what the lighting plan is made of.
COMMUNE_GROUPED = frozenset({AssetClass.STREET_LAMP})


def area_group(cls: ClassId, commune: Commune) -> str:
    """The base group of a placed device: its commune's slug for lamps, else its sector's."""
    return commune.slug if cls in COMMUNE_GROUPED else SECTOR_OF_COMMUNE[commune.name].slug


# How far below street level each LoRaWAN class sits: meters in cellars, sensors in asphalt.
_EXTRA_LOSS_DB: Mapping[ClassId, float] = {
    AssetClass.WATER_METER: 15.0,
    AssetClass.PARKING_SPOT: 10.0,
    AssetClass.BOLLARD: 5.0,
}


@dataclass
class _Spec:
    asset_class: ClassId
    base_group: str
    commune: str
    point: LatLon
    behaviour: Behaviour


class _Builder:
    def __init__(self, city: CityConfig) -> None:
        self.city = city
        self.rng = random.Random(f"citypost:{city.name}:{city.seed}")
        # Its own stream, so that planning episodes moves no device.
        self.welfare_rng = random.Random(f"citypost:{city.name}:{city.seed}:welfare")
        self.counts = scaled_counts(city.scale)
        self.specs: list[_Spec] = []
        self.routes = {line.code: Route.of(line.stops) for line in dijon.LINES}

    def by_commune(
        self,
        cls: ClassId,
        weight: Callable[[Commune], float],
        spread: float,
        make: Callable[[Commune, LatLon], Behaviour],
    ) -> None:
        shares = apportion(self.counts[cls], [weight(c) for c in COMMUNES])
        for commune, n in zip(COMMUNES, shares, strict=True):
            centre = (commune.latitude, commune.longitude)
            for _ in range(n):
                point = _scatter(self.rng, centre, commune.radius_km * 1000, spread)
                self.specs.append(
                    _Spec(cls, area_group(cls, commune), commune.name, point, make(commune, point))
                )

    def lamps(self) -> None:
        rng = self.rng

        def make(commune: Commune, _p: LatLon) -> Behaviour:
            # Busier streets in bigger communes; main roads get the stronger lamps.
            density = (commune.population / 10_000) ** 0.3 * rng.lognormvariate(0, 0.5)
            return StreetLamp(rated_w=rng.choice((30.0, 45.0, 60.0, 90.0, 120.0)), density=density)

        self.by_commune(AssetClass.STREET_LAMP, lambda c: c.population, 0.5, make)

    def welfare_plans(self, n: int) -> dict[int, tuple[tuple[float, float], ...]]:
        """Meter index -> its welfare episodes as (after_s, duration_s), for the few that
        have one (see WELFARE_SHARE)."""
        drawn = self.rng.sample(range(n), max(1, round(n * _VOLUNTEER_DRAW_SHARE)))
        volunteers = drawn[: max(1, round(n * WELFARE_SHARE))]
        rng = self.welfare_rng
        plans: dict[int, tuple[tuple[float, float], ...]] = {}
        for k, i in enumerate(volunteers):
            after_h = k * WELFARE_STAGGER_H + rng.uniform(*WELFARE_START_H)
            hours = rng.uniform(*WELFARE_HOURS)
            plans[i] = ((round(after_h * 60) * 60.0, round(hours * 60) * 60.0),)  # whole minutes
        return plans

    def water_meters(self) -> None:
        n = self.counts[AssetClass.WATER_METER]
        plans = self.welfare_plans(n)
        made = iter(range(n))
        rng = self.rng

        def make(_c: Commune, _p: LatLon) -> Behaviour:
            i = next(made)
            return WaterMeter(
                usage=rng.lognormvariate(0, 0.3),
                battery_pct=round(rng.uniform(60, 100), 2),
                episodes=plans.get(i, ()),
            )

        self.by_commune(AssetClass.WATER_METER, lambda c: c.population, 0.5, make)

    def parking(self) -> None:
        rng = self.rng
        self.by_commune(
            AssetClass.PARKING_SPOT,
            lambda c: c.population,
            0.3,  # paid on-street parking is in the centres
            lambda _c, _p: ParkingSpot(rng.random() < 0.6, round(rng.uniform(50, 100), 2)),
        )

    def air_and_road(self) -> None:
        rng = self.rng
        # Coverage sensors: spread by the square root of population, so villages get some.
        self.by_commune(
            AssetClass.AIR_QUALITY,
            lambda c: math.sqrt(c.population),
            0.4,
            lambda _c, _p: AirQualityStation(traffic_exposure=rng.uniform(1.0, 2.0)),
        )
        self.by_commune(
            AssetClass.ROAD_WEATHER,
            lambda c: math.sqrt(c.population),
            0.6,
            lambda _c, _p: RoadWeatherStation(exposure=rng.uniform(0.8, 1.5)),
        )

    def cameras(self) -> None:
        rng = self.rng
        self.by_commune(
            AssetClass.CAMERA,
            lambda c: c.population,
            0.3,
            lambda _c, _p: Camera(
                people_scale=rng.lognormvariate(math.log(40), 0.8),
                vehicle_scale=rng.lognormvariate(math.log(20), 0.6),
            ),
        )

    def _line_points(self, commune: Commune) -> list[LatLon]:
        """Points every ~100 m along the modelled lines within the commune's extent."""
        centre = (commune.latitude, commune.longitude)
        points = []
        for route in self.routes.values():
            for k in range(int(route.length_m // 100) + 1):
                p = route.point_at(k * 100.0)
                if distance_m(p, centre) <= commune.radius_km * 1000:
                    points.append(p)
        return points

    def signals(self) -> None:
        rng = self.rng
        shares = apportion(self.counts[AssetClass.TRAFFIC_SIGNAL], [c.population for c in COMMUNES])
        for commune, n in zip(COMMUNES, shares, strict=True):
            on_lines = self._line_points(commune) if n else []
            centre = (commune.latitude, commune.longitude)
            for _ in range(n):
                if on_lines and rng.random() < SIGNALS_ON_LINES:
                    point = rng.choice(on_lines)
                else:
                    point = _scatter(rng, centre, commune.radius_km * 1000, 0.4)
                behaviour = TrafficSignal(
                    offset_s=rng.uniform(0, 100), night_flashing=rng.random() < 0.3
                )
                group = area_group(AssetClass.TRAFFIC_SIGNAL, commune)
                self.specs.append(
                    _Spec(AssetClass.TRAFFIC_SIGNAL, group, commune.name, point, behaviour)
                )

    def bollards(self) -> None:
        # At the old town's street entries, on a ring around the secteur sauvegardé.
        rng = self.rng
        group = area_group(AssetClass.BOLLARD, dijon.DIJON)
        for _ in range(self.counts[AssetClass.BOLLARD]):
            r = dijon.OLD_TOWN_RADIUS_M * rng.uniform(0.85, 1.05)
            a = rng.uniform(0, 2 * math.pi)
            point = offset(dijon.OLD_TOWN_CENTRE, r * math.cos(a), r * math.sin(a))
            self.specs.append(_Spec(AssetClass.BOLLARD, group, dijon.DIJON.name, point, Bollard()))

    def buses(self) -> None:
        shares = apportion(self.counts[AssetClass.BUS], [line.weight for line in dijon.LINES])
        for line, n in zip(dijon.LINES, shares, strict=True):
            route = self.routes[line.code]
            line_route = LineRoute(line.number, route, line.commercial_speed_kmh)
            home = nearest_commune(route.points[0])
            for j in range(n):
                # Even headways round the cycle, a little irregular.
                phase = (j + self.rng.uniform(-0.2, 0.2)) / n * line_route.cycle_s
                self.specs.append(
                    _Spec(
                        AssetClass.BUS,
                        line.code,
                        home.name,
                        route.points[0],
                        Bus(line_route, phase),
                    )
                )

    def cars(self) -> None:
        places = places_from(
            [((c.latitude, c.longitude), c.radius_km * 1000, c.population) for c in COMMUNES]
        )
        shares = apportion(self.counts[AssetClass.COMPANY_CAR], [d.cars for d in dijon.DEPARTMENTS])
        for dept, n in zip(dijon.DEPARTMENTS, shares, strict=True):
            for _ in range(n):
                car = CompanyCar(dept.name, dept.depot, places)
                self.specs.append(
                    _Spec(AssetClass.COMPANY_CAR, dept.name, dept.depot_commune, dept.depot, car)
                )

    def build(self) -> City:
        for step in (
            self.lamps,
            self.signals,
            self.bollards,
            self.water_meters,
            self.parking,
            self.air_and_road,
            self.cameras,
            self.buses,
            self.cars,
        ):
            step()
        return self._devices()

    def _euis(self, n: int) -> Iterator[str]:
        seen: set[str] = set()
        while len(seen) < n:
            eui = f"{self.rng.getrandbits(64):016x}"
            if eui not in seen:
                seen.add(eui)
                yield eui

    def _devices(self) -> City:
        by_key: dict[tuple[ClassId, str], list[_Spec]] = {}
        for spec in self.specs:
            by_key.setdefault((spec.asset_class, spec.base_group), []).append(spec)
        euis = self._euis(len(self.specs))
        out: list[SimDevice] = []
        for (cls, base), specs in by_key.items():
            name = assets_pb2.AssetClass.Name(cls).lower()
            groups = split_groups(base, len(specs), self.city.max_group_size)
            app = application_id(self.city.name, cls)
            ip = cls in IP_CLASSES
            for k, (spec, group) in enumerate(zip(specs, groups, strict=True)):
                device = Device(
                    dev_eui=next(euis),
                    name=f"{name}-{base}-{k + 1:05d}",
                    asset_class=cls,
                    group=group,
                    commune=spec.commune,
                    latitude=round(spec.point[0], 6),
                    longitude=round(spec.point[1], 6),
                    transport=Transport.IP if ip else Transport.LORAWAN,
                    application_id=app,
                    report_interval_s=spec.behaviour.interval_s,
                )
                radio = (
                    None if ip else radio_link(spec.point, _EXTRA_LOSS_DB.get(cls, 0.0), self.rng)
                )
                out.append(SimDevice(device, spec.behaviour, radio))
        return City(self.city.name, DeviceRegistry(d.device for d in out), tuple(out))


def build_city(city: CityConfig) -> City:
    """The simulated city for this config: registry, behaviours and radio links."""
    return _Builder(city).build()
