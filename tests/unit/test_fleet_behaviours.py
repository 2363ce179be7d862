import random
import statistics
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bridges.downlink_frame import DeviceCommand, LampProfile
from bridges.layouts import decode_reading, encode_reading, layout_of
from bridges.lpp import LppType
from citypost.config import CityConfig
from fleet import dijon
from fleet import environment as env
from fleet.behaviours import (
    FACTORY_PROFILE,
    Bollard,
    Bus,
    Camera,
    LineRoute,
    ParkingSpot,
    RoadWeatherStation,
    StreetLamp,
    TrafficSignal,
    WaterMeter,
)
from fleet.geo import Route
from fleet.population import build_city
from protos.citypost.v1 import telemetry_pb2

pytestmark = pytest.mark.unit

# Wire resolution of one LPP step, per type.
_STEP = {
    LppType.ANALOG_INPUT: 0.01,
    LppType.ANALOG_OUTPUT: 0.01,
    LppType.TEMPERATURE: 0.1,
    LppType.HUMIDITY: 0.5,
    LppType.ILLUMINANCE: 1.0,
    LppType.PRESENCE: 1.0,
    LppType.DIGITAL_INPUT: 1.0,
    LppType.GPS: 0.0001,
}
WINTER = datetime(2024, 1, 15, tzinfo=UTC)
SUMMER = datetime(2024, 6, 21, tzinfo=UTC)


def _cmd(action: str, value: float, epoch: int = 1) -> DeviceCommand:
    return DeviceCommand(epoch, str(uuid.uuid4()), action, value)


def _day(start: datetime, step_s: float) -> list[datetime]:
    return [start + timedelta(seconds=k * step_s) for k in range(int(86400 // step_s))]


def _local(day: datetime, hour: float) -> datetime:
    """A UTC instant at `hour` Paris time on that day (CET in winter, CEST in summer)."""
    offset = 1 if day.month in (1, 2, 3, 11, 12) else 2
    return day + timedelta(hours=hour - offset)


@pytest.mark.timeout(60)
def test_every_reading_round_trips_through_its_layout() -> None:
    city = build_city(CityConfig(scale=0.01, seed=3))
    rng = random.Random(1)
    for when in (_local(WINTER, 3), _local(WINTER, 8), _local(SUMMER, 13), _local(SUMMER, 22)):
        for sd in city.devices:
            layout = layout_of(sd.device.asset_class)
            reading = sd.behaviour.reading(when, rng)
            expected = {name for f in layout.fields for name in f.names}
            assert set(reading) == expected, sd.device.name
            back = decode_reading(layout, encode_reading(layout, reading))
            for f in layout.fields:
                for name in f.names:
                    if f.kind == "float":
                        step = 0.01 if name == "altitude_m" else _STEP[f.lpp_type] * f.scale
                        assert abs(back[name] - reading[name]) <= step / 2 + 1e-9, (name, reading)
                    else:
                        assert back[name] == reading[name], (name, reading)


def test_lamp_factory_profile_dark_by_day_lit_at_night() -> None:
    lamp = StreetLamp(rated_w=60.0, density=1.0)
    rng = random.Random(2)
    by_hour: dict[int, list[float]] = {}
    for when in _day(_local(WINTER, 0), 900):
        r = lamp.reading(when, rng)
        assert r["profile_id"] == FACTORY_PROFILE.profile_id == 1
        by_hour.setdefault(env.local_time(when.timestamp()).hour.__int__(), []).append(
            float(r["brightness_pct"])
        )
        assert r["power_w"] == pytest.approx(
            60 * float(r["brightness_pct"]) / 100 + 0.5 * (r["brightness_pct"] > 0), abs=0.01
        )
    for hour in (10, 12, 14):
        assert by_hour[hour] == [0.0] * 4  # January sun is up from ~08:10 to ~17:10
    night, boost = FACTORY_PROFILE.night_pct, FACTORY_PROFILE.boost_pct
    for hour in (18, 20, 22, 1, 2, 3, 4):
        assert set(by_hour[hour]) <= {night, boost}  # its night level, or boosted for passers-by
    assert boost in by_hour[19]  # a busy evening
    assert night in by_hour[3]  # an empty street before dawn


def _profile_cmd(profile: LampProfile, value: int | None = None) -> DeviceCommand:
    pid = profile.profile_id if value is None else value
    return DeviceCommand(1, str(uuid.uuid4()), "set_lamp_profile", pid, profile)


def test_lamp_runs_its_profile_through_an_evening_by_itself() -> None:
    lamp = StreetLamp(rated_w=60.0, density=0.0)  # nobody passes unless the test says so
    rng = random.Random(7)
    # Dusk: it lights by itself, at its night level, once the sun is 2 degrees down.
    lit_at = None
    for when in [_local(WINTER, 16) + timedelta(minutes=m) for m in range(180)]:
        r = lamp.reading(when, rng)
        if r["brightness_pct"] > 0:
            lit_at = when
            assert r["brightness_pct"] == FACTORY_PROFILE.night_pct
            assert r["power_w"] == pytest.approx(60 * 0.6 + 0.5)
            break
        assert r["power_w"] == 0.0
    assert lit_at is not None
    assert env.sun_elevation_deg(lit_at.timestamp()) < -2.0
    assert env.sun_elevation_deg((lit_at - timedelta(minutes=1)).timestamp()) >= -2.0

    # Its own sensor sees passers-by between 19:59 and 20:00: full until 5 minutes after.
    lamp.reading(_local(WINTER, 19) + timedelta(minutes=59), rng)
    lamp.density = 500.0
    seen = lamp.reading(_local(WINTER, 20), rng)
    assert int(seen["presence_count"]) > 0
    assert seen["brightness_pct"] == 100.0 and seen["power_w"] == pytest.approx(60.5)
    lamp.density = 0.0
    held = lamp.reading(_local(WINTER, 20) + timedelta(minutes=3, seconds=59), rng)
    assert held["presence_count"] == 0 and held["brightness_pct"] == 100.0
    after = lamp.reading(_local(WINTER, 20) + timedelta(minutes=5, seconds=1), rng)
    assert after["brightness_pct"] == FACTORY_PROFILE.night_pct

    # An operator's fixed level: kept day and night, presence or not, reported as profile 0.
    assert lamp.apply(_cmd("set_brightness", 30), _local(WINTER, 20.2))
    lamp.density = 500.0
    for hour in (20.5, 23.0, 36.0):  # 36: noon the next day
        r = lamp.reading(_local(WINTER, hour), rng)
        assert (r["brightness_pct"], r["profile_id"]) == (30.0, 0)
        assert r["power_w"] == pytest.approx(60 * 0.3 + 0.5)
    lamp.density = 0.0

    # A new profile: profile mode again, with the new levels, hold and id.
    deep = LampProfile(
        4242, on_below_elevation_deg=-0.83, night_pct=20.0, boost_pct=80.0, boost_hold_s=60
    )
    next_night = WINTER + timedelta(days=1)
    assert lamp.apply(_profile_cmd(deep), _local(next_night, 21))
    r = lamp.reading(_local(next_night, 21), rng)
    assert (r["brightness_pct"], r["profile_id"]) == (20.0, 4242)
    lamp.density = 500.0
    r = lamp.reading(_local(next_night, 21) + timedelta(minutes=1), rng)
    assert (r["brightness_pct"], r["profile_id"]) == (80.0, 4242)
    lamp.density = 0.0
    r = lamp.reading(_local(next_night, 21) + timedelta(minutes=2, seconds=1), rng)
    assert r["brightness_pct"] == 20.0  # a 60 s hold
    assert lamp.reading(_local(next_night, 36), rng)["brightness_pct"] == 0.0  # day: off


def test_a_lamp_with_a_higher_threshold_lights_earlier() -> None:
    early = StreetLamp(rated_w=60.0, density=0.0)
    profile = LampProfile(
        9, on_below_elevation_deg=8.0, night_pct=50.0, boost_pct=50.0, boost_hold_s=0
    )
    assert early.apply(_profile_cmd(profile), WINTER)
    factory = StreetLamp(rated_w=60.0, density=0.0)
    rng = random.Random(8)
    times = [_local(WINTER, 14) + timedelta(minutes=m) for m in range(240)]
    first_early = next(t for t in times if early.reading(t, rng)["brightness_pct"] > 0)
    first_factory = next(t for t in times if factory.reading(t, rng)["brightness_pct"] > 0)
    assert first_factory - first_early > timedelta(minutes=45)


def test_lamp_accepts_only_profiles_in_range() -> None:
    lamp = StreetLamp(rated_w=60.0, density=1.0)
    good = LampProfile(2, -0.83, 30.0, 100.0, 300)
    assert lamp.accepts(_profile_cmd(good))
    assert not lamp.accepts(_profile_cmd(good, value=3))  # the value is the profile id
    assert not lamp.accepts(DeviceCommand(1, str(uuid.uuid4()), "set_lamp_profile", 2))
    for bad in (
        LampProfile(0, -0.83, 30.0, 100.0, 300),
        LampProfile(2, -11.0, 30.0, 100.0, 300),
        LampProfile(2, -0.83, 30.0, 20.0, 300),
        LampProfile(2, -0.83, 30.0, 100.0, 4000),
    ):
        assert not lamp.accepts(_profile_cmd(bad))
        assert not lamp.apply(_profile_cmd(bad), WINTER)
    assert lamp.profile == FACTORY_PROFILE


def test_lamp_ambient_light_follows_the_sun() -> None:
    lamp = StreetLamp(rated_w=60.0, density=1.0)
    rng = random.Random(3)
    noon = lamp.reading(_local(SUMMER, 13.5), rng)["ambient_lux"]
    night = lamp.reading(_local(SUMMER, 1.0), rng)["ambient_lux"]
    assert float(noon) > 10_000 and float(night) < 5


def test_lamp_keeps_the_commanded_brightness_and_reports_no_profile() -> None:
    lamp = StreetLamp(rated_w=90.0, density=1.0)
    rng = random.Random(4)
    assert lamp.accepts(_cmd("set_brightness", 30))
    assert not lamp.accepts(_cmd("set_brightness", 130))
    assert not lamp.accepts(_cmd("set_bollard_position", 1))
    assert not lamp.apply(_cmd("set_bollard_position", 1), WINTER)
    assert lamp.apply(_cmd("set_brightness", 30), WINTER)
    for when in _day(_local(WINTER, 0), 3600):
        r = lamp.reading(when, rng)
        assert r["brightness_pct"] == 30.0 and r["profile_id"] == 0
        assert r["power_w"] == pytest.approx(90 * 0.3 + 0.5)


def test_lamp_presence_is_busier_in_the_evening_than_before_dawn() -> None:
    rng = random.Random(5)
    lamps = [StreetLamp(45.0, 1.0) for _ in range(50)]
    evening = sum(int(lp.reading(_local(WINTER, 19), rng)["presence_count"]) for lp in lamps)
    dawn = sum(int(lp.reading(_local(WINTER, 4), rng)["presence_count"]) for lp in lamps)
    assert evening > 5 * max(dawn, 1)


def test_lamp_faults_persist() -> None:
    lamp = StreetLamp(60.0, 1.0)
    lamp.fault = True
    r = lamp.reading(_local(WINTER, 20), random.Random(0))
    assert r["fault"] is True and r["power_w"] == 0.0
    assert lamp.reading(_local(WINTER, 21), random.Random(0))["fault"] is True


def test_water_meter_has_night_gaps_and_daytime_use() -> None:
    rng = random.Random(6)
    meters = [WaterMeter(usage=1.0, battery_pct=90.0) for _ in range(40)]
    night: list[float] = []
    day: list[float] = []
    daily: list[float] = []
    other: list[float] = []
    for meter in meters:
        total = 0.0
        for when in _day(_local(WINTER, 0), 3600):
            litres = float(meter.reading(when, rng)["litres_since_last"])
            total += litres
            hour = int(env.local_time(when.timestamp()).hour)
            (night if 1 <= hour <= 4 else day if 7 <= hour <= 20 else other).append(litres)
        daily.append(total)
    assert sum(1 for v in night if v == 0) / len(night) > 0.8
    assert sum(1 for v in day if v > 0) / len(day) > 0.5
    assert 50 < statistics.median(daily) < 300  # litres a day for an elderly household


def test_a_volunteer_with_a_welfare_episode_draws_nothing_for_many_hours() -> None:
    rng = random.Random(7)
    meter = WaterMeter(usage=1.0, battery_pct=90.0, episodes=[(30 * 3600, 18 * 3600)])
    longest = run = 0
    start = _local(WINTER, 0)
    for k in range(24 * 4):  # four days of hourly uplinks, the episode on the second
        litres = meter.reading(start + timedelta(hours=k), rng)["litres_since_last"]
        run = run + 1 if litres == 0 else 0
        longest = max(longest, run)
    assert longest >= 10


def test_parking_churns_more_full_by_day_than_at_night() -> None:
    rng = random.Random(8)
    spots = [ParkingSpot(occupied=False, battery_pct=80.0) for _ in range(200)]
    monday = datetime(2024, 3, 4, tzinfo=UTC)
    occupancy: dict[float, float] = {}
    t = _local(monday, 0)
    for hour in (4.0, 10.0):
        end = _local(monday, hour)
        while t < end:  # run every spot through the hours before
            t += timedelta(minutes=10)
            for s in spots:
                s.reading(t, rng)
        occupancy[hour] = sum(1 for s in spots if s.occupied) / len(spots)
    assert occupancy[10.0] > occupancy[4.0] + 0.15
    spot = spots[0]
    assert 1.0 <= spot.next_delay_s(t) <= spot.interval_s


def test_bus_stays_on_its_line_and_runs_late_in_rush_hour() -> None:
    line = dijon.LINES[0]
    route = Route.of(line.stops)
    bus = Bus(LineRoute(line.number, route, line.commercial_speed_kmh), phase_s=123.0)
    rng = random.Random(9)
    positions = set()
    for when in _day(_local(datetime(2024, 3, 4, tzinfo=UTC), 0), 15):
        r = bus.reading(when, rng)
        point = (float(r["latitude"]), float(r["longitude"]))
        assert route.distance_to(point) < 20
        assert r["line"] == 1 and 0 <= float(r["heading_deg"]) < 360
        positions.add(point)
    assert len(positions) > 100  # it moves


def test_road_is_colder_at_night_and_near_freezing_on_winter_nights() -> None:
    station = RoadWeatherStation(exposure=1.0)
    rng = random.Random(10)
    nights, afternoons = [], []
    for day in range(10):
        base = WINTER + timedelta(days=day)
        nights.append(float(station.reading(_local(base, 5), rng)["road_temperature_c"]))
        afternoons.append(float(station.reading(_local(base, 14), rng)["road_temperature_c"]))
    assert statistics.mean(nights) < statistics.mean(afternoons) - 3
    assert -8 < statistics.mean(nights) < 3
    summer = [
        float(station.reading(_local(SUMMER + timedelta(days=d), 5), rng)["road_temperature_c"])
        for d in range(10)
    ]
    assert statistics.mean(summer) > statistics.mean(nights) + 8


def test_camera_counts_follow_the_day() -> None:
    rng = random.Random(11)
    cams = [Camera(people_scale=40.0, vehicle_scale=20.0) for _ in range(20)]
    noon = sum(int(c.reading(_local(SUMMER, 12.5), rng)["people_count"]) for c in cams)
    night = sum(int(c.reading(_local(SUMMER, 4), rng)["people_count"]) for c in cams)
    assert noon > 5 * max(night, 1)


def test_traffic_signal_priority_and_modes() -> None:
    signal = TrafficSignal(offset_s=0.0, night_flashing=False)
    rng = random.Random(12)
    now = _local(datetime(2024, 3, 4, tzinfo=UTC), 8)
    phases = {signal.reading(now + timedelta(seconds=s), rng)["phase"] for s in range(0, 200, 7)}
    assert {telemetry_pb2.RED, telemetry_pb2.GREEN} <= phases
    assert signal.reading(now, rng)["bus_priority_active"] is False
    assert not signal.accepts(_cmd("signal_priority", 0))
    assert signal.apply(_cmd("signal_priority", 20.0), now)
    r = signal.reading(now + timedelta(seconds=5), rng)
    assert r["bus_priority_active"] is True and r["phase"] == telemetry_pb2.GREEN
    assert signal.apply(_cmd("set_signal_mode", telemetry_pb2.FLASHING_AMBER), now)
    later = now + timedelta(minutes=5)
    assert signal.reading(later, rng)["phase"] == telemetry_pb2.FLASHING_AMBER
    assert signal.apply(_cmd("set_signal_mode", 0), later)
    assert signal.reading(later, rng)["phase"] != telemetry_pb2.FLASHING_AMBER
    assert not signal.apply(_cmd("set_brightness", 50), later)


def test_bollard_holds_the_commanded_position() -> None:
    bollard = Bollard()
    rng = random.Random(13)
    now = _local(WINTER, 10)
    assert bollard.reading(now, rng)["position"] == telemetry_pb2.RAISED
    assert not bollard.accepts(_cmd("set_bollard_position", telemetry_pb2.MOVING))
    assert bollard.apply(_cmd("set_bollard_position", telemetry_pb2.LOWERED), now)
    assert bollard.reading(now + timedelta(seconds=2), rng)["position"] == telemetry_pb2.MOVING
    for minutes in (1, 60, 600):
        r = bollard.reading(now + timedelta(minutes=minutes), rng)
        assert r["position"] == telemetry_pb2.LOWERED


def test_air_quality_peaks_at_rush_hour() -> None:
    city = build_city(CityConfig(scale=0.25, seed=5))
    stations = [sd.behaviour for sd in city.devices if sd.device.asset_class == 6]
    rng = random.Random(14)
    monday = datetime(2024, 3, 4, tzinfo=UTC)
    rush = [float(s.reading(_local(monday, 8), rng)["no2_ugm3"]) for s in stations]
    night = [float(s.reading(_local(monday, 3), rng)["no2_ugm3"]) for s in stations]
    assert statistics.mean(rush) > 2 * statistics.mean(night)


def test_sun_and_local_time() -> None:
    assert env.sun_elevation_deg(_local(SUMMER, 13.7).timestamp()) > 60
    assert env.sun_elevation_deg(_local(WINTER, 0).timestamp()) < -50
    assert env.local_time(datetime(2024, 7, 1, 10, tzinfo=UTC).timestamp()).hour == 12.0
