"""ChirpStack v4's multicast API over real gRPC: the simulated network server's side,
checked with the raw `chirpstack_api` stubs, and the downlink gate's client against it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from chirpstack_api.api import (
    device_pb2,
    device_pb2_grpc,
    multicast_group_pb2,
    multicast_group_pb2_grpc,
)
from chirpstack_api.common import common_pb2
from google.protobuf import timestamp_pb2

from bridges.multicast_client import GroupSpec, MulticastClient, multicast_group_name
from citypost.errors import ConfigError, InfrastructureError, InvalidArgumentError, NotFoundError
from cluster.ports import free_port
from fleet.multicast_service import (
    GroupSettings,
    MulticastGroupView,
    MulticastService,
    QueueItemView,
    serve,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKEN = "s3cret-api-key"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
OTHER_APP = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
KNOWN = {f"00000000000000{n:02x}" for n in range(1, 9)}
EUI_1, EUI_2, EUI_3, EUI_4 = sorted(KNOWN)[:4]
RX2_HZ = 869_525_000
LAMPS = multicast_group_name("street_lamp", "dijon-centre")
BOLLARDS = multicast_group_name("bollard", "old-town")


@dataclass
class Radio:
    """Stands for the simulated network server's side of `on_enqueue`."""

    enqueued: list[tuple[MulticastGroupView, QueueItemView]] = field(default_factory=list)
    broken: bool = False

    def on_enqueue(self, group: MulticastGroupView, item: QueueItemView) -> None:
        self.enqueued.append((group, item))
        if self.broken:
            raise RuntimeError("the radio is on fire")


@dataclass
class NetworkServer:
    service: MulticastService
    target: str
    radio: Radio


@pytest.fixture
async def network_server() -> AsyncIterator[NetworkServer]:
    radio = Radio()
    service = MulticastService(
        known_device=KNOWN.__contains__, on_enqueue=radio.on_enqueue, api_token=TOKEN
    )
    server, port = serve(service)
    try:
        yield NetworkServer(service, f"127.0.0.1:{port}", radio)
    finally:
        server.stop(None).wait(5)


@contextlib.asynccontextmanager
async def stubs(target: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield multicast_group_pb2_grpc.MulticastGroupServiceStub(channel)


def group_message(**changes: Any) -> Any:
    fields: dict[str, Any] = {
        "name": "test-mg",
        "application_id": APP,
        "region": common_pb2.Region.EU868,
        "mc_addr": "01020304",
        "mc_nwk_s_key": "01020304050607080102030405060708",
        "mc_app_s_key": "02020304050607080102030405060708",
        "f_cnt": 20,
        "group_type": multicast_group_pb2.MulticastGroupType.CLASS_C,
        "dr": 3,
        "frequency": 868_300_000,
        "class_c_scheduling_type": multicast_group_pb2.MulticastGroupSchedulingType.DELAY,
    }
    fields.update(changes)
    return multicast_group_pb2.MulticastGroup(**fields)


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


# --- the server, through the raw chirpstack_api stubs -------------------------------------


async def test_raw_stubs_create_add_enqueue_list_flush(network_server: NetworkServer) -> None:
    async with stubs(network_server.target) as stub:
        created = await stub.Create(
            multicast_group_pb2.CreateMulticastGroupRequest(multicast_group=group_message()),
            metadata=AUTH,
        )
        got = await stub.Get(
            multicast_group_pb2.GetMulticastGroupRequest(id=created.id), metadata=AUTH
        )
        assert got.multicast_group == group_message(id=created.id)
        assert got.HasField("created_at") and got.HasField("updated_at")

        await stub.AddDevice(
            multicast_group_pb2.AddDeviceToMulticastGroupRequest(
                multicast_group_id=created.id, dev_eui=EUI_1.upper()
            ),
            metadata=AUTH,
        )
        expires = timestamp_pb2.Timestamp(seconds=4_000_000_000, nanos=500_000_000)
        f_cnts = []
        for data, expires_at in ((b"\x01\x02\x03", None), (b"\x04", expires)):
            item = multicast_group_pb2.MulticastGroupQueueItem(
                multicast_group_id=created.id,
                f_port=10,
                data=data,
                f_cnt=999,
                expires_at=expires_at,
            )
            reply = await stub.Enqueue(
                multicast_group_pb2.EnqueueMulticastGroupQueueItemRequest(queue_item=item),
                metadata=AUTH,
            )
            f_cnts.append(reply.f_cnt)
        assert f_cnts == [20, 21]  # the group's counter, not the request's

        queue = await stub.ListQueue(
            multicast_group_pb2.ListMulticastGroupQueueRequest(multicast_group_id=created.id),
            metadata=AUTH,
        )
        assert list(queue.items) == [
            multicast_group_pb2.MulticastGroupQueueItem(
                multicast_group_id=created.id, f_cnt=20, f_port=10, data=b"\x01\x02\x03"
            ),
            multicast_group_pb2.MulticastGroupQueueItem(
                multicast_group_id=created.id, f_cnt=21, f_port=10, data=b"\x04", expires_at=expires
            ),
        ]

        await stub.FlushQueue(
            multicast_group_pb2.FlushMulticastGroupQueueRequest(multicast_group_id=created.id),
            metadata=AUTH,
        )
        queue = await stub.ListQueue(
            multicast_group_pb2.ListMulticastGroupQueueRequest(multicast_group_id=created.id),
            metadata=AUTH,
        )
        assert list(queue.items) == []

        listed = await stub.List(
            multicast_group_pb2.ListMulticastGroupsRequest(
                limit=10, application_id=APP, dev_eui=EUI_1, search="TEST"
            ),
            metadata=AUTH,
        )
        assert listed.total_count == 1
        assert [(g.id, g.name, g.application_id) for g in listed.result] == [
            (created.id, "test-mg", APP)
        ]

    view = network_server.service.group(created.id)
    assert view is not None and view.dev_euis == {EUI_1} and view.f_cnt == 22


async def test_raw_stubs_update_gateways_delete_and_members(network_server: NetworkServer) -> None:
    async with grpc.aio.insecure_channel(network_server.target) as channel:
        stub = multicast_group_pb2_grpc.MulticastGroupServiceStub(channel)
        devices = device_pb2_grpc.DeviceServiceStub(channel)
        created = await stub.Create(
            multicast_group_pb2.CreateMulticastGroupRequest(multicast_group=group_message()),
            metadata=AUTH,
        )
        await stub.Update(
            multicast_group_pb2.UpdateMulticastGroupRequest(
                multicast_group=group_message(id=created.id, name="renamed", dr=5, f_cnt=30)
            ),
            metadata=AUTH,
        )
        got = await stub.Get(
            multicast_group_pb2.GetMulticastGroupRequest(id=created.id), metadata=AUTH
        )
        assert (got.multicast_group.name, got.multicast_group.dr, got.multicast_group.f_cnt) == (
            "renamed",
            5,
            30,
        )
        await stub.AddGateway(
            multicast_group_pb2.AddGatewayToMulticastGroupRequest(
                multicast_group_id=created.id, gateway_id="0807063604030201"
            ),
            metadata=AUTH,
        )
        await stub.RemoveGateway(
            multicast_group_pb2.RemoveGatewayFromMulticastGroupRequest(
                multicast_group_id=created.id, gateway_id="0807063604030201"
            ),
            metadata=AUTH,
        )
        for eui in (EUI_2, EUI_1):
            await stub.AddDevice(
                multicast_group_pb2.AddDeviceToMulticastGroupRequest(
                    multicast_group_id=created.id, dev_eui=eui
                ),
                metadata=AUTH,
            )
        members = await devices.List(
            device_pb2.ListDevicesRequest(
                limit=10, application_id=APP, multicast_group_id=created.id
            ),
            metadata=AUTH,
        )
        assert members.total_count == 2
        assert [d.dev_eui for d in members.result] == [EUI_1, EUI_2]
        code, _ = await code_of(
            devices.List(device_pb2.ListDevicesRequest(limit=10, application_id=APP), metadata=AUTH)
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED

        await stub.Delete(
            multicast_group_pb2.DeleteMulticastGroupRequest(id=created.id), metadata=AUTH
        )
        code, _ = await code_of(
            stub.Delete(
                multicast_group_pb2.DeleteMulticastGroupRequest(id=created.id), metadata=AUTH
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND


async def test_raw_stubs_get_chirpstacks_codes(network_server: NetworkServer) -> None:
    async with stubs(network_server.target) as stub:
        created = await stub.Create(
            multicast_group_pb2.CreateMulticastGroupRequest(multicast_group=group_message(dr=0)),
            metadata=AUTH,
        )

        def enqueue(group_id: str, f_port: int, data: bytes) -> Any:
            item = multicast_group_pb2.MulticastGroupQueueItem(
                multicast_group_id=group_id, f_port=f_port, data=data
            )
            return stub.Enqueue(
                multicast_group_pb2.EnqueueMulticastGroupQueueItemRequest(queue_item=item),
                metadata=AUTH,
            )

        refusals = {
            "bad uuid": (
                stub.Get(multicast_group_pb2.GetMulticastGroupRequest(id="nope"), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "id must be a UUID",
            ),
            "missing group": (
                stub.Get(multicast_group_pb2.GetMulticastGroupRequest(id=OTHER_APP), metadata=AUTH),
                grpc.StatusCode.NOT_FOUND,
                OTHER_APP,
            ),
            "no group in create": (
                stub.Create(multicast_group_pb2.CreateMulticastGroupRequest(), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "multicast_group is missing",
            ),
            "bad mc_addr": (
                stub.Create(
                    multicast_group_pb2.CreateMulticastGroupRequest(
                        multicast_group=group_message(mc_addr="123")
                    ),
                    metadata=AUTH,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "mc_addr",
            ),
            "bad dev_eui": (
                stub.AddDevice(
                    multicast_group_pb2.AddDeviceToMulticastGroupRequest(
                        multicast_group_id=created.id, dev_eui="xyz"
                    ),
                    metadata=AUTH,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "dev_eui",
            ),
            "unknown device": (
                stub.AddDevice(
                    multicast_group_pb2.AddDeviceToMulticastGroupRequest(
                        multicast_group_id=created.id, dev_eui="ffffffffffffffff"
                    ),
                    metadata=AUTH,
                ),
                grpc.StatusCode.NOT_FOUND,
                "ffffffffffffffff",
            ),
            "f_port 0": (enqueue(created.id, 0, b"x"), grpc.StatusCode.INVALID_ARGUMENT, "f_port"),
            "oversized at DR0": (
                enqueue(created.id, 5, bytes(52)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "at most 51",
            ),
            "enqueue to nothing": (enqueue(OTHER_APP, 5, b"x"), grpc.StatusCode.NOT_FOUND, ""),
            "no item": (
                stub.Enqueue(
                    multicast_group_pb2.EnqueueMulticastGroupQueueItemRequest(), metadata=AUTH
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "queue_item is missing",
            ),
        }
        for what, (call, expected, words) in refusals.items():
            code, details = await code_of(call)
            assert (what, code) == (what, expected)
            assert words in details, (what, details)
        assert network_server.radio.enqueued == []  # nothing refused reached the radio


async def test_tokens_are_checked(network_server: NetworkServer) -> None:
    async with stubs(network_server.target) as stub:
        request = multicast_group_pb2.ListMulticastGroupsRequest(limit=10)
        for metadata, words in [
            (None, "no authorization provided"),
            ((("authorization", TOKEN),), "'Bearer <TOKEN>'"),
            ((("authorization", "Bearer wrong"),), "invalid API token"),
        ]:
            code, details = await code_of(stub.List(request, metadata=metadata))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert words in details
        assert (await stub.List(request, metadata=AUTH)).total_count == 0


# --- the gate's client --------------------------------------------------------------------


def lamp_spec(*euis: str) -> GroupSpec:
    return GroupSpec(APP, frozenset(euis), dr=3, frequency_hz=RX2_HZ)


async def test_sync_groups_is_idempotent_and_follows_members(network_server: NetworkServer) -> None:
    store = network_server.service.store
    async with MulticastClient(network_server.target, api_token=TOKEN) as client:
        wanted = {
            LAMPS: lamp_spec(EUI_1, EUI_2),
            BOLLARDS: GroupSpec(OTHER_APP, frozenset({EUI_3}), dr=5, frequency_hz=RX2_HZ),
        }
        first = await client.sync_groups(wanted)
        assert set(first) == {LAMPS, BOLLARDS}
        lamps = store.get(first[LAMPS])
        assert (lamps.name, lamps.application_id, lamps.dr, lamps.frequency) == (
            LAMPS,
            APP,
            3,
            RX2_HZ,
        )
        assert (lamps.group_type, lamps.class_c_scheduling_type, lamps.region) == (
            "CLASS_C",
            "DELAY",
            "EU868",
        )
        assert lamps.dev_euis == {EUI_1, EUI_2}
        assert store.get(first[BOLLARDS]).dev_euis == {EUI_3}

        # A group nobody asks for, with a name that contains a wanted one, is left alone.
        bystander = store.create(_settings_like(lamps, LAMPS + "-x"))
        second = await client.sync_groups(wanted)
        assert second == first
        assert store.list_groups(limit=100).total_count == 3  # no new group

        # The wanted set changes: one device departs, another joins.
        third = await client.sync_groups({LAMPS: lamp_spec(EUI_2, EUI_4.upper())})
        assert third == {LAMPS: first[LAMPS]}
        assert store.get(first[LAMPS]).dev_euis == {EUI_2, EUI_4}
        assert store.get(first[BOLLARDS]).dev_euis == {EUI_3}  # not named: untouched
        assert store.get(bystander.id).dev_euis == frozenset()

        # New radio settings are applied to the existing group, counter kept.
        await client.enqueue(first[LAMPS], 10, b"\x01")
        moved = await client.sync_groups({LAMPS: GroupSpec(APP, frozenset({EUI_2}), 5, RX2_HZ)})
        assert moved == {LAMPS: first[LAMPS]}
        after = store.get(first[LAMPS])
        assert (after.dr, after.f_cnt, after.dev_euis) == (5, 1, {EUI_2})


async def test_sync_pages_through_many_groups(network_server: NetworkServer) -> None:
    wanted = {
        multicast_group_name("street_lamp", f"sector-{n:03d}"): lamp_spec() for n in range(130)
    }
    async with MulticastClient(network_server.target, api_token=TOKEN) as client:
        first = await client.sync_groups(wanted)
        assert await client.sync_groups(wanted) == first
    assert len(set(first.values())) == 130
    assert network_server.service.store.list_groups(limit=1).total_count == 130


async def test_enqueue_queue_flush_and_on_enqueue(
    network_server: NetworkServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with MulticastClient(network_server.target, api_token=TOKEN) as client:
        group_id = (await client.sync_groups({LAMPS: lamp_spec(EUI_1)}))[LAMPS]
        assert await client.enqueue(group_id, 10, b"\x01\x02") == 0
        assert len(network_server.radio.enqueued) == 1
        group, item = network_server.radio.enqueued[0]
        assert (group.id, group.name, group.dev_euis, group.dr, group.frequency) == (
            group_id,
            LAMPS,
            {EUI_1},
            3,
            RX2_HZ,
        )
        assert item == QueueItemView(group_id, 0, 10, b"\x01\x02", None)

        network_server.radio.broken = True  # the network server's bug is not the caller's
        with caplog.at_level(logging.ERROR, logger="fleet.multicast_service"):
            assert await client.enqueue(group_id, 10, b"\x03") == 1
        assert len(network_server.radio.enqueued) == 2
        assert "on_enqueue failed" in caplog.text and "the radio is on fire" in caplog.text

        queued = await client.queue(group_id)
        assert [(q.group_id, q.f_cnt, q.f_port, q.data) for q in queued] == [
            (group_id, 0, 10, b"\x01\x02"),
            (group_id, 1, 10, b"\x03"),
        ]
        assert network_server.service.pop_queue(group_id) == [
            QueueItemView(group_id, 0, 10, b"\x01\x02", None),
            QueueItemView(group_id, 1, 10, b"\x03", None),
        ]
        await client.enqueue(group_id, 10, b"\x04")
        await client.flush(group_id)
        assert await client.queue(group_id) == []


async def test_client_errors_are_typed(network_server: NetworkServer) -> None:
    async with MulticastClient(network_server.target, api_token=TOKEN) as client:
        group_id = (await client.sync_groups({LAMPS: lamp_spec()}))[LAMPS]
        with pytest.raises(NotFoundError):
            await client.enqueue(OTHER_APP, 10, b"x")
        with pytest.raises(InvalidArgumentError, match="f_port"):
            await client.enqueue(group_id, 0, b"x")
        with pytest.raises(InvalidArgumentError, match="at most 115"):
            await client.enqueue(group_id, 10, bytes(116))
        with pytest.raises(InvalidArgumentError, match="multicast_group_id must be a UUID"):
            await client.queue("not-a-uuid")
        with pytest.raises(NotFoundError):
            await client.sync_groups({LAMPS: lamp_spec("ffffffffffffffff")})

    for token in (None, "wrong"):
        async with MulticastClient(network_server.target, api_token=token) as refused:
            with pytest.raises(ConfigError, match="UNAUTHENTICATED"):
                await refused.sync_groups({LAMPS: lamp_spec()})
    assert network_server.service.store.list_groups(limit=10).total_count == 1


async def test_unreachable_server_is_infrastructure_after_retries() -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with MulticastClient(target, timeout_s=1.0, attempts=3, first_wait_s=0.01) as client:
        with pytest.raises(InfrastructureError, match="UNAVAILABLE"):
            await client.queue(APP)
        with pytest.raises(InfrastructureError):
            await client.enqueue(APP, 10, b"x")


def _settings_like(view: MulticastGroupView, name: str) -> GroupSettings:
    return GroupSettings(
        name=name,
        application_id=view.application_id,
        region=view.region,
        mc_addr=view.mc_addr,
        mc_nwk_s_key=view.mc_nwk_s_key,
        mc_app_s_key=view.mc_app_s_key,
        f_cnt=0,
        group_type=view.group_type,
        dr=view.dr,
        frequency=view.frequency,
        class_b_ping_slot_periodicity=0,
        class_c_scheduling_type=view.class_c_scheduling_type,
    )


async def test_retries_reach_a_server_that_comes_back() -> None:
    port = free_port()
    async with MulticastClient(f"127.0.0.1:{port}", attempts=6, first_wait_s=0.1) as client:
        call = asyncio.ensure_future(client.queue(APP))
        await asyncio.sleep(0.3)  # the first attempts are refused
        server, _ = serve(MulticastService(), port=port)
        try:
            with pytest.raises(NotFoundError):  # an answer: the server was reached
                await call
        finally:
            server.stop(None).wait(5)
