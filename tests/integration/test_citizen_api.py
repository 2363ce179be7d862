"""CitizenService on a real gRPC server: traffic, reports (validated, rate-limited, idempotent), parking.

The post around it is the real dispatcher over the in-memory control state; telemetry is
fed by hand into the edge's latest-value sink; the rate limiter runs on a fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from api.citizen import CitizenService, citizen_service, default_report_limiter
from api.server import start_server
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.sinks import MemorySink
from cluster.ports import free_port
from failover.control_state import INCIDENTS, TASKS, InMemoryControlState, incident_key
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    citizen_pb2,
    citizen_pb2_grpc,
    operations_pb2,
    telemetry_pb2,
)

pytestmark = pytest.mark.integration

AC = assets_pb2.AssetClass
DIJON_CENTRE = (47.3220, 5.0415)
TALANT_CENTRE = (47.3372, 5.0058)


def _device(
    n: int, asset_class: int, group: str, commune: str, where: tuple[float, float]
) -> Device:
    return Device(
        dev_eui=f"{asset_class:02x}{n:014x}",
        name=f"{group}-{n}",
        asset_class=asset_class,  # type: ignore[arg-type]
        group=group,
        commune=commune,
        latitude=where[0],
        longitude=where[1],
        transport=assets_pb2.LORAWAN,
        application_id=application_id("dijon", asset_class),  # type: ignore[arg-type]
    )


SIGNALS = [
    _device(1, AC.TRAFFIC_SIGNAL, "signals-dijon", "Dijon", DIJON_CENTRE),
    _device(2, AC.TRAFFIC_SIGNAL, "signals-dijon", "Dijon", (47.3200, 5.0400)),
    _device(3, AC.TRAFFIC_SIGNAL, "signals-talant", "Talant", TALANT_CENTRE),
    _device(4, AC.TRAFFIC_SIGNAL, "signals-talant", "Talant", (47.3380, 5.0060)),  # never heard
]
BUSES = [_device(n, AC.BUS, "line-3", "Dijon", DIJON_CENTRE) for n in range(1, 5)]
# Zone "centre": spots 10 m, 40 m, 80 m north of the point asked; zone "gare": 20 m, 60 m east.
ASKED = DIJON_CENTRE
CENTRE = [
    _device(n, AC.PARKING_SPOT, "centre", "Dijon", (ASKED[0] + m / 111_195, ASKED[1]))
    for n, m in ((1, 10), (2, 40), (3, 80), (4, 120))
]
GARE = [
    _device(n, AC.PARKING_SPOT, "gare", "Dijon", (ASKED[0], ASKED[1] + m / 75_300))
    for n, m in ((11, 20), (12, 60), (13, 90))
]
LAMP = _device(1, AC.STREET_LAMP, "lamps-dijon", "Dijon", DIJON_CENTRE)


class WallClock:
    def __init__(self) -> None:
        self.now_ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now_ms


class Monotonic:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@dataclass
class City:
    stub: citizen_pb2_grpc.CitizenServiceAsyncStub
    state: InMemoryControlState
    sink: MemorySink
    monotonic: Monotonic
    wall: WallClock

    async def incidents(self) -> list[operations_pb2.Incident]:
        page = await self.state.list(INCIDENTS, operations_pb2.Incident, limit=1000)
        return [entry.value for entry in page.entries]

    async def tasks(self) -> list[operations_pb2.Task]:
        page = await self.state.list(TASKS, operations_pb2.Task, limit=1000)
        return [entry.value for entry in page.entries]


@pytest.fixture
async def city() -> AsyncIterator[City]:
    registry = DeviceRegistry([*SIGNALS, *BUSES, *CENTRE, *GARE, LAMP])
    state = InMemoryControlState(epoch=1)
    wall = WallClock()
    sent: list[tuple[str, bytes]] = []
    dispatcher = Dispatcher(
        state=state,
        registry=registry,
        publish=lambda d: sent.append((d.topic, d.payload)),
        epoch=lambda: 1,
        wall_ms=wall,
    )
    await dispatcher.load()
    sink = MemorySink()
    monotonic = Monotonic()
    servicer = CitizenService(
        dispatcher,
        registry,
        sink.latest,
        state=state,
        limiter=default_report_limiter(monotonic=monotonic),
        wall_ms=wall,
    )
    port = free_port()
    server, _ = await start_server([citizen_service(servicer)], port=port, deadline_s=5.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = citizen_pb2_grpc.CitizenServiceStub(channel)
            yield City(stub, state, sink, monotonic, wall)
    finally:
        await server.stop(grace=None)


def _signal(device: Device, queue: int) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=device.dev_eui,
        asset_class=device.asset_class,
        group=device.group,
        traffic_signal=telemetry_pb2.TrafficSignalReading(queue_length=queue),
    )


def _bus(device: Device, where: tuple[float, float], delay_s: float) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=device.dev_eui,
        asset_class=device.asset_class,
        group=device.group,
        vehicle=telemetry_pb2.VehicleReading(
            latitude=where[0], longitude=where[1], line=3, delay_s=delay_s
        ),
    )


def _spot(device: Device, occupied: bool) -> telemetry_pb2.Telemetry:
    return telemetry_pb2.Telemetry(
        dev_eui=device.dev_eui,
        asset_class=device.asset_class,
        group=device.group,
        parking=telemetry_pb2.ParkingReading(occupied=occupied),
    )


def _report(
    reporter: str,
    key: str,
    *,
    kind: int = operations_pb2.INCIDENT_ACCIDENT,
    where: tuple[float, float] = DIJON_CENTRE,
    text: str = "two cars collided at the crossing",
) -> citizen_pb2.ReportIncidentRequest:
    return citizen_pb2.ReportIncidentRequest(
        reporter_id=reporter,
        idempotency_key=key,
        kind=kind,  # type: ignore[arg-type]
        location=operations_pb2.GeoPoint(latitude=where[0], longitude=where[1]),
        text=text,
    )


async def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.timeout(30)
async def test_traffic_by_commune_from_signals_buses_and_open_incidents(city: City) -> None:
    city.sink.submit(
        [
            _signal(SIGNALS[0], 2),
            _signal(SIGNALS[1], 6),  # Dijon: mean 4 -> DENSE
            _signal(SIGNALS[2], 9),  # Talant: 9 -> CONGESTED (SIGNALS[3] never heard)
            _bus(BUSES[0], DIJON_CENTRE, 120.0),
            _bus(BUSES[1], (47.3210, 5.0400), 60.0),  # Dijon: mean 90 s
            _bus(BUSES[2], TALANT_CENTRE, 30.0),  # registered in Dijon, but now in Talant
            _bus(BUSES[3], (0.0, 0.0), 999.0),  # no fix: in no commune
            telemetry_pb2.Telemetry(dev_eui=LAMP.dev_eui, lamp=telemetry_pb2.LampReading()),
        ]
    )
    await city.stub.ReportIncident(_report("alice", "k1"))  # an open incident in Dijon
    closed = operations_pb2.Incident(
        incident_id="old", kind=operations_pb2.INCIDENT_FAULT, commune="Dijon", closed=True
    )
    await city.state.put(incident_key("old"), closed, epoch=1)

    whole = await city.stub.GetTrafficConditions(citizen_pb2.TrafficConditionsRequest())
    assert whole.as_of_ms == city.wall.now_ms
    areas = {a.commune: a for a in whole.areas}
    assert len(areas) == 24
    dijon, talant = areas["Dijon"], areas["Talant"]
    assert (dijon.level, dijon.mean_queue_length) == (citizen_pb2.DENSE, pytest.approx(4.0))
    assert dijon.mean_bus_delay_s == pytest.approx(90.0)
    assert dijon.open_incidents == 1  # the closed one is not counted
    assert (talant.level, talant.mean_queue_length) == (citizen_pb2.CONGESTED, 9.0)
    assert (talant.mean_bus_delay_s, talant.open_incidents) == (30.0, 0)
    quiet = areas["Ahuy"]  # no signal heard: unknown, not fluid
    assert (quiet.level, quiet.mean_queue_length, quiet.open_incidents) == (
        citizen_pb2.TRAFFIC_LEVEL_UNSPECIFIED,
        0.0,
        0,
    )

    city.sink.submit([_signal(SIGNALS[0], 0), _signal(SIGNALS[1], 1)])  # the latest counts
    one = await city.stub.GetTrafficConditions(
        citizen_pb2.TrafficConditionsRequest(commune="dijon")
    )
    assert [(a.commune, a.level) for a in one.areas] == [("Dijon", citizen_pb2.FLUID)]
    accents = await city.stub.GetTrafficConditions(
        citizen_pb2.TrafficConditionsRequest(commune="fontaine les dijon")
    )
    assert [a.commune for a in accents.areas] == ["Fontaine-lès-Dijon"]


@pytest.mark.timeout(30)
async def test_unknown_commune_is_not_found_with_a_hint(city: City) -> None:
    code, details = await _status(
        city.stub.GetTrafficConditions(citizen_pb2.TrafficConditionsRequest(commune="Talantt"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'Talantt'" in details
    assert "did you mean Talant" in details
    assert "Chevigny-Saint-Sauveur" in details  # the valid names are listed


@pytest.mark.timeout(30)
async def test_report_becomes_an_incident_with_tasks_and_is_idempotent(city: City) -> None:
    first = await city.stub.ReportIncident(_report("alice", "k1"))
    assert first.incident_id
    (incident,) = await city.incidents()
    assert incident.incident_id == first.incident_id
    assert incident.source == operations_pb2.CITIZEN
    assert incident.kind == operations_pb2.INCIDENT_ACCIDENT
    assert incident.commune == "Dijon"
    assert incident.reported_by.startswith("alice#")
    assert "k1" not in incident.reported_by  # the key itself is not stored
    departments = {t.department for t in await city.tasks()}
    assert departments == {operations_pb2.POLICE, operations_pb2.ROADS}

    again = await city.stub.ReportIncident(_report("alice", "k1"))
    assert again.incident_id == first.incident_id
    assert len(await city.incidents()) == 1

    # Another key of the same reporter, in the same millisecond: a second incident.
    other = await city.stub.ReportIncident(
        _report("alice", "k2", kind=operations_pb2.INCIDENT_FIRE)
    )
    # The same key from another reporter is another report.
    bob = await city.stub.ReportIncident(_report("bob", "k1"))
    ids = {first.incident_id, other.incident_id, bob.incident_id}
    assert len(ids) == 3
    assert {i.incident_id for i in await city.incidents()} == ids


@pytest.mark.timeout(30)
async def test_a_burst_of_reports_is_rate_limited_per_reporter(city: City) -> None:
    ids = [
        (await city.stub.ReportIncident(_report("alice", f"b{i}"))).incident_id for i in range(3)
    ]
    code, details = await _status(city.stub.ReportIncident(_report("alice", "b3")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 120 s" in details  # 5 per 10 minutes: one token every 120 s
    assert len(await city.incidents()) == 3  # the refused report opened nothing

    assert (await city.stub.ReportIncident(_report("bob", "b0"))).incident_id  # not limited
    # A retry of an answered report is answered, limited or not.
    assert (await city.stub.ReportIncident(_report("alice", "b1"))).incident_id == ids[1]

    city.monotonic.now_s += 60
    code, details = await _status(city.stub.ReportIncident(_report("alice", "b3")))
    assert (code, "retry in 60 s" in details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, True)
    city.monotonic.now_s += 60
    assert (await city.stub.ReportIncident(_report("alice", "b3"))).incident_id
    assert len(await city.incidents()) == 5


@pytest.mark.timeout(30)
async def test_bad_reports_are_invalid_argument_naming_the_field(city: City) -> None:
    no_location = _report("carol", "x")
    no_location.ClearField("location")
    cases = {
        "reporter_id: required": _report("", "x"),
        "reporter_id: 65 characters": _report("r" * 65, "x"),
        "reporter_id: printable": _report("carol smith", "x"),
        "idempotency_key: required": _report("carol", ""),
        "idempotency_key: 129 characters": _report("carol", "k" * 129),
        "kind:": _report("carol", "x", kind=operations_pb2.INCIDENT_KIND_UNSPECIFIED),
        "location: required": no_location,
        "location.latitude: 48.8566 is outside": _report("carol", "x", where=(48.8566, 5.04)),
        "location.longitude: 2.3522 is outside": _report("carol", "x", where=(47.32, 2.3522)),
        "text: must not be empty": _report("carol", "x", text="   "),
        "text: 501 characters": _report("carol", "x", text="a" * 501),
        "text: must not contain control": _report("carol", "x", text="fire\x00"),
    }
    for words, request in cases.items():
        code, details = await _status(city.stub.ReportIncident(request))
        assert (code, details.startswith(words)) == (grpc.StatusCode.INVALID_ARGUMENT, True), (
            words,
            details,
        )
    assert await city.incidents() == []
    # Invalid requests took no token: the reporter still has a full burst.
    for i in range(3):
        await city.stub.ReportIncident(_report("carol", f"ok{i}"))


@pytest.mark.timeout(30)
async def test_find_parking_nearest_free_spaces_and_free_in_zone(city: City) -> None:
    city.sink.submit(
        [
            _spot(CENTRE[0], occupied=True),  # the nearest is taken
            _spot(CENTRE[1], occupied=False),
            _spot(CENTRE[2], occupied=False),
            _spot(CENTRE[3], occupied=False),
            _spot(GARE[0], occupied=False),  # 20 m: the nearest free one
            _spot(GARE[1], occupied=False),
            # GARE[2] never heard: unknown, not free
        ]
    )
    near = operations_pb2.GeoPoint(latitude=ASKED[0], longitude=ASKED[1])
    found = await city.stub.FindParking(citizen_pb2.FindParkingRequest(near=near))
    assert [s.spot_id for s in found.spaces] == [
        GARE[0].dev_eui,
        CENTRE[1].dev_eui,
        GARE[1].dev_eui,
        CENTRE[2].dev_eui,
        CENTRE[3].dev_eui,
    ]  # five by default, nearest first
    assert [round(s.distance_m) for s in found.spaces] == [20, 40, 60, 80, 120]
    assert found.spaces[0].zone == "gare"
    assert found.free_in_zone == 2
    assert found.spaces[1].location.latitude == pytest.approx(CENTRE[1].latitude)

    city.sink.submit([_spot(GARE[0], occupied=True)])  # taken meanwhile
    two = await city.stub.FindParking(citizen_pb2.FindParkingRequest(near=near, limit=2))
    assert [(s.spot_id, s.zone) for s in two.spaces] == [
        (CENTRE[1].dev_eui, "centre"),
        (GARE[1].dev_eui, "gare"),
    ]
    assert two.free_in_zone == 3


@pytest.mark.timeout(30)
async def test_bad_parking_requests_are_invalid_argument_naming_the_field(city: City) -> None:
    near = operations_pb2.GeoPoint(latitude=ASKED[0], longitude=ASKED[1])
    cases = {
        "limit: must be between 1 and 50": citizen_pb2.FindParkingRequest(near=near, limit=51),
        "limit: must be between": citizen_pb2.FindParkingRequest(near=near, limit=-1),
        "near: required": citizen_pb2.FindParkingRequest(limit=3),
        "near.latitude: 47.5 is outside": citizen_pb2.FindParkingRequest(
            near=operations_pb2.GeoPoint(latitude=47.5, longitude=5.04)
        ),
        "near.longitude: must be a finite number": citizen_pb2.FindParkingRequest(
            near=operations_pb2.GeoPoint(latitude=47.32, longitude=float("nan"))
        ),
    }
    for words, request in cases.items():
        code, details = await _status(city.stub.FindParking(request))
        assert (code, details.startswith(words)) == (grpc.StatusCode.INVALID_ARGUMENT, True), (
            words,
            details,
        )
    empty = await city.stub.FindParking(citizen_pb2.FindParkingRequest(near=near))
    assert (list(empty.spaces), empty.free_in_zone) == ([], 0)  # nothing heard yet


@pytest.mark.timeout(30)
async def test_a_report_the_control_state_refused_gets_no_incident_id(city: City) -> None:
    city.state.set_epoch(2)  # another post leads: this post's writes are fenced
    code, details = await _status(city.stub.ReportIncident(_report("dave", "k1")))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "retry with the same idempotency_key" in details
    assert await city.incidents() == []
