"""The citizen listener of a post with TLS, on real gRPC servers started in-process the
way the post starts them (cluster.post_main.start_listeners) with a temporary PKI.

A phone trusts the city's CA and has no certificate: it reaches the citizen port with
the app's credential, and only with it; a flood of reports with made-up reporter ids
from one address is refused past the address's limit; duplicate reports are one
incident; the operators' port (mutual TLS) does not serve the citizens' service.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.citizen import CitizenService, RecentReports, default_report_limiter
from api.citizen_guard import APP_METADATA, RefusalAudit, ReportLimits
from bridges.registry import Device, DeviceRegistry, application_id
from citypost.config import Config, load_config
from cluster.ports import free_port
from cluster.post_main import Listeners, start_listeners
from failover.control_state import INCIDENTS, InMemoryControlState, incident_key
from post.dispatcher import Dispatcher
from protos.citypost.v1 import (
    assets_pb2,
    citizen_pb2,
    citizen_pb2_grpc,
    control_state_pb2,
    operations_pb2,
    operator_pb2,
    operator_pb2_grpc,
)
from security.apps import AppBook, AppCredential, apps_path
from security.grpc_tls import aio_channel
from security.pki import Kind, Principal
from security.pki_store import Identity, PkiStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DIJON_CENTRE = (47.3220, 5.0415)
M_PER_DEG_LAT = 111_195.0
LAMP = Device(
    dev_eui="0100000000000001",
    name="lamp-1",
    asset_class=assets_pb2.STREET_LAMP,
    group="lamps-dijon",
    commune="Dijon",
    latitude=DIJON_CENTRE[0],
    longitude=DIJON_CENTRE[1],
    transport=assets_pb2.LORAWAN,
    application_id=application_id("dijon", assets_pb2.STREET_LAMP),
)


@dataclass
class Post:
    listeners: Listeners
    state: InMemoryControlState
    audited: list[control_state_pb2.AuditEntry]
    trust: bytes  # the city's CA bundle: all a phone knows of the city
    app: AppCredential
    observer: Identity | None  # a machine certificate of the city (the chaos tools')
    wall_ms: list[int]

    def citizen_stub(
        self,
    ) -> tuple[grpc.aio.Channel, citizen_pb2_grpc.CitizenServiceAsyncStub]:
        channel = grpc.aio.secure_channel(
            self.listeners.citizen_address,
            grpc.ssl_channel_credentials(root_certificates=self.trust),
        )
        return channel, citizen_pb2_grpc.CitizenServiceStub(channel)

    @property
    def credential(self) -> tuple[tuple[str, str]]:
        return ((APP_METADATA, self.app.header),)

    async def incidents(self) -> list[operations_pb2.Incident]:
        page = await self.state.list(INCIDENTS, operations_pb2.Incident, limit=1000)
        return [entry.value for entry in page.entries]


def _config(run_dir: Path, *, tls: bool) -> Config:
    return load_config(
        overrides={"run_dir": str(run_dir), "city.name": "dijon", "security.tls": tls}
    )


async def _post(run_dir: Path, *, tls: bool) -> tuple[Post, CitizenService]:
    config = _config(run_dir, tls=tls)
    post_tls: Identity | None = None
    trust = b""
    observer = None
    if tls:
        store = PkiStore(config.pki_dir, "dijon")
        store.init()
        post_tls = store.ensure(Principal("dijon", Kind.POST, "primary"))
        observer = store.ensure(Principal("dijon", Kind.CHAOS, "chaos"))
        trust = post_tls.read().trust
    app = AppBook(apps_path(config)).add("citizen-app", now=time.time())
    state = InMemoryControlState(epoch=1)
    wall = [1_800_000_000_000]
    registry = DeviceRegistry([LAMP])
    dispatcher = Dispatcher(
        state=state,
        registry=registry,
        publish=lambda d: None,
        epoch=lambda: 1,
        wall_ms=lambda: wall[0],
    )
    await dispatcher.load()
    audited: list[control_state_pb2.AuditEntry] = []
    refusals = RefusalAudit(audited.append)
    citizen = CitizenService(
        dispatcher,
        registry,
        {},
        state=state,
        limiter=default_report_limiter(),
        wall_ms=lambda: wall[0],
        limits=ReportLimits(),  # the post's own: 10 at once per address
        duplicates=RecentReports(),
        refusals=refusals,
        audit=audited.append,
    )
    listeners = await start_listeners(
        config,
        [],
        citizen,
        post_tls,
        audit=audited.append,
        refusals=refusals,
        port=free_port(),
        citizen_port=free_port(),
    )
    post = Post(listeners, state, audited, trust, app, observer, wall)
    return post, citizen


@pytest.fixture
async def post(tmp_path: Path) -> AsyncIterator[Post]:
    found, _ = await _post(tmp_path, tls=True)
    try:
        yield found
    finally:
        await found.listeners.stop()


def _report(
    reporter: str,
    key: str,
    *,
    north_m: float = 0.0,
    kind: int = operations_pb2.INCIDENT_ACCIDENT,
) -> citizen_pb2.ReportIncidentRequest:
    return citizen_pb2.ReportIncidentRequest(
        reporter_id=reporter,
        idempotency_key=key,
        kind=kind,  # type: ignore[arg-type]
        location=operations_pb2.GeoPoint(
            latitude=DIJON_CENTRE[0] + north_m / M_PER_DEG_LAT, longitude=DIJON_CENTRE[1]
        ),
        text="two cars collided at the crossing",
    )


async def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


async def test_a_phone_with_only_the_citys_trust_reaches_the_citizen_port(post: Post) -> None:
    assert post.listeners.citizen_address != post.listeners.address
    channel, stub = post.citizen_stub()
    async with channel:
        traffic = await stub.GetTrafficConditions(
            citizen_pb2.TrafficConditionsRequest(), metadata=post.credential
        )
        assert len(traffic.areas) == 24
        answer = await stub.ReportIncident(_report("alice", "k1"), metadata=post.credential)
        assert (bool(answer.incident_id), answer.merged) == (True, False)
        (incident,) = await post.incidents()
        assert incident.reported_by.startswith("citizen-app/alice#")
        # A load balancer's health check needs no credential.
        health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs know no asyncio
        checked = await health.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_without_the_app_credential_unauthenticated_and_audited(post: Post) -> None:
    channel, stub = post.citizen_stub()
    async with channel:
        code, details = await _status(stub.ReportIncident(_report("mallory", "k1")))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "no app credential" in details and APP_METADATA in details
        wrong = ((APP_METADATA, "citizen-app:" + "A" * 43),)
        code, details = await _status(
            stub.GetTrafficConditions(citizen_pb2.TrafficConditionsRequest(), metadata=wrong)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "app credential refused" in details
    assert await post.incidents() == []
    refused = [e for e in post.audited if e.action == "rpc.refused"]
    assert [e.target for e in refused] == [
        "/citypost.v1.CitizenService/ReportIncident",
        "/citypost.v1.CitizenService/GetTrafficConditions",
    ]
    assert refused[0].actor == "peer:127.0.0.1"
    assert "wrong secret for app 'citizen-app'" in refused[1].detail


async def test_a_flood_with_rotating_reporter_ids_is_refused_past_the_address_limit(
    post: Post,
) -> None:
    channel, stub = post.citizen_stub()
    outcomes: list[str] = []
    async with channel:
        for n in range(15):
            # A new made-up reporter each time, and places 200 m apart (no duplicates).
            request = _report(f"made-up-{n}", f"k{n}", north_m=200.0 * n)
            try:
                await stub.ReportIncident(request, metadata=post.credential)
                outcomes.append("ok")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = error.details() or ""
                assert details.startswith(
                    "too many reports from this address (127.0.0.1) with app citizen-app "
                    "(at most 3 a minute, 10 at once); retry in "
                ), details
                outcomes.append("refused")
    assert outcomes == ["ok"] * 10 + ["refused"] * 5
    assert len(await post.incidents()) == 10  # fewer incidents than reports
    refusals = [e for e in post.audited if e.action == "rpc.refused"]
    assert refusals and all("ResourceExhaustedError" in e.detail for e in refusals)
    assert refusals[0].actor == "app:citizen-app@127.0.0.1"


async def test_duplicate_reports_are_merged_into_one_incident(post: Post) -> None:
    channel, stub = post.citizen_stub()
    async with channel:

        async def report(request: citizen_pb2.ReportIncidentRequest) -> tuple[str, bool]:
            answer = await stub.ReportIncident(request, metadata=post.credential)
            return answer.incident_id, answer.merged

        first, merged = await report(_report("alice", "a1"))
        assert not merged
        post.wall_ms[0] += 5 * 60_000
        assert await report(_report("bob", "b1", north_m=60)) == (first, True)
        post.wall_ms[0] += 10 * 60_000
        assert await report(_report("carol", "c1", north_m=-120)) == (first, True)
        assert await report(_report("bob", "b1", north_m=60)) == (first, True)  # a retry
        # Another kind at the same place, or the same kind 300 m away: other incidents.
        fire, merged = await report(_report("dave", "d1", kind=operations_pb2.INCIDENT_FIRE))
        assert (fire != first, merged) == (True, False)
        far, merged = await report(_report("erin", "e1", north_m=300))
        assert (far not in (first, fire), merged) == (True, False)
        assert len(await post.incidents()) == 3
        merges = [e for e in post.audited if e.action == "citizen.report.merged"]
        assert [e.target for e in merges] == [f"incident/{first}"] * 2
        assert "60 m and 300 s from the report that opened it" in merges[0].detail
        # Closed by the room: the next report of it is news again.
        closed = next(i for i in await post.incidents() if i.incident_id == first)
        closed.closed = True
        await post.state.put(incident_key(first), closed, epoch=1)
        again, merged = await report(_report("frank", "f1", north_m=10))
        assert (again != first, merged) == (True, False)
        # Past the window (30 minutes from the first report): a new incident too.
        post.wall_ms[0] += 31 * 60_000
        late, merged = await report(_report("gina", "g1", north_m=20))
        assert (late != again, merged) == (True, False)


async def test_the_operators_port_does_not_serve_the_citizens_service(post: Post) -> None:
    # The city's machine certificate (mutual TLS), as an observer with a role.
    assert post.observer is not None
    async with aio_channel(post.listeners.address, post.observer) as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        code, _ = await _status(
            stub.GetTrafficConditions(
                citizen_pb2.TrafficConditionsRequest(), metadata=post.credential
            )
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED
    # A phone (no client certificate) does not get through the operators' handshake.
    phone = grpc.aio.secure_channel(
        post.listeners.address, grpc.ssl_channel_credentials(root_certificates=post.trust)
    )
    async with phone:
        code, _ = await _status(
            citizen_pb2_grpc.CitizenServiceStub(phone).GetTrafficConditions(
                citizen_pb2.TrafficConditionsRequest(), metadata=post.credential, timeout=5
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    # Nor does the citizen port serve anything of the operators', credential or not.
    channel, _ = post.citizen_stub()
    async with channel:
        code, _ = await _status(
            operator_pb2_grpc.OperatorServiceStub(channel).ListAlarms(
                operator_pb2.ListAlarmsRequest(), metadata=post.credential
            )
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED
    assert await post.incidents() == []


async def test_without_tls_the_citizens_share_the_one_plaintext_port(tmp_path: Path) -> None:
    found, _ = await _post(tmp_path, tls=False)
    try:
        assert found.listeners.citizens is None
        assert found.listeners.citizen_address == found.listeners.address
        async with grpc.aio.insecure_channel(found.listeners.address) as channel:
            stub = citizen_pb2_grpc.CitizenServiceStub(channel)
            traffic = await stub.GetTrafficConditions(citizen_pb2.TrafficConditionsRequest())
            assert len(traffic.areas) == 24
            first = await stub.ReportIncident(_report("alice", "k1"))
            second = await stub.ReportIncident(_report("bob", "k1", north_m=30))
            assert (second.incident_id, second.merged) == (first.incident_id, True)
    finally:
        await found.listeners.stop()
