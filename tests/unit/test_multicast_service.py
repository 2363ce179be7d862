"""The simulated multicast store: ChirpStack's numbering, validation and paging, no server."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from chirpstack_api.api import multicast_group_pb2
from chirpstack_api.common import common_pb2

from bridges.airtime import max_app_payload
from bridges.multicast_client import GroupSpec, _checked_spec, multicast_group_name
from citypost.errors import CitypostError, InvalidArgumentError, NotFoundError
from fleet.multicast_service import (
    CLASS_C,
    DELAY,
    GroupSettings,
    MulticastService,
    MulticastStore,
    group_settings,
    parse_eui,
    parse_uuid,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
OTHER_APP = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
EUI_A = "0102030405060708"
EUI_B = "0102030405060709"


def message(**changes: Any) -> Any:
    fields: dict[str, Any] = {
        "name": "citypost/street_lamp/dijon-centre",
        "application_id": APP,
        "region": common_pb2.Region.EU868,
        "mc_addr": "01020304",
        "mc_nwk_s_key": "01020304050607080102030405060708",
        "mc_app_s_key": "02020304050607080102030405060708",
        "f_cnt": 20,
        "group_type": multicast_group_pb2.MulticastGroupType.CLASS_C,
        "dr": 3,
        "frequency": 869_525_000,
        "class_c_scheduling_type": multicast_group_pb2.MulticastGroupSchedulingType.DELAY,
    }
    fields.update(changes)
    return multicast_group_pb2.MulticastGroup(**fields)


def settings(**changes: Any) -> GroupSettings:
    return group_settings(message(**changes))


class Clock:
    def __init__(self) -> None:
        self.t = 1_750_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def store() -> MulticastStore:
    return MulticastStore(now=Clock())


# --- validation ---------------------------------------------------------------------------


def test_settings_from_a_chirpstack_message() -> None:
    parsed = settings(mc_addr="0A0B0C0D", mc_nwk_s_key="AA" * 16)
    assert parsed.mc_addr == "0a0b0c0d"  # hex is lowered, as ChirpStack prints it
    assert parsed.mc_nwk_s_key == "aa" * 16
    assert parsed.group_type == CLASS_C
    assert parsed.class_c_scheduling_type == DELAY
    assert parsed.region == "EU868"
    assert parsed.f_cnt == 20


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"application_id": "not-a-uuid"}, "application_id"),
        ({"application_id": ""}, "application_id"),
        ({"mc_addr": "0102030"}, "mc_addr"),
        ({"mc_addr": "0102030g"}, "mc_addr"),
        ({"mc_addr": ""}, "mc_addr"),
        ({"mc_nwk_s_key": "01" * 15}, "mc_nwk_s_key"),
        ({"mc_app_s_key": "zz" * 16}, "mc_app_s_key"),
        ({"region": common_pb2.Region.US915}, "region"),
        ({"dr": 8}, "dr"),
        ({"frequency": 0}, "frequency"),
        ({"frequency": 915_000_000}, "frequency"),
        ({"group_type": 7}, "group_type"),
        ({"class_c_scheduling_type": 9}, "class_c_scheduling_type"),
        ({"class_b_ping_slot_periodicity": 8}, "class_b_ping_slot_periodicity"),
    ],
)
def test_bad_settings_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        settings(**changes)


def test_ids_and_euis_are_checked_and_canonical() -> None:
    assert parse_uuid(APP.upper(), "id") == APP
    assert parse_uuid(APP.replace("-", ""), "id") == APP
    assert parse_eui("0102030405060A0B", "dev_eui") == "0102030405060a0b"
    for bad in ("", "x", APP[:-1]):
        with pytest.raises(InvalidArgumentError, match="multicast_group_id must be a UUID"):
            parse_uuid(bad, "multicast_group_id")
    for bad in ("", "01020304050607", "010203040506070g", "01020304050607080"):
        with pytest.raises(InvalidArgumentError, match="dev_eui must be 16 hex digits"):
            parse_eui(bad, "dev_eui")


def test_eu868_payload_sizes() -> None:
    assert [max_app_payload(dr) for dr in range(8)] == [51, 51, 51, 115, 242, 242, 242, 242]


# --- groups -------------------------------------------------------------------------------


def test_create_get_update_delete(store: MulticastStore) -> None:
    created = store.create(settings())
    assert parse_uuid(created.id, "id") == created.id
    assert store.get(created.id) == created
    assert created.dev_euis == frozenset() and created.gateway_ids == frozenset()
    assert created.created_at == created.updated_at

    updated = store.update(
        created.id, settings(name="renamed", application_id=OTHER_APP, dr=5, f_cnt=7)
    )
    assert updated.name == "renamed" and updated.dr == 5 and updated.f_cnt == 7
    assert updated.application_id == APP  # Update never moves a group to another application
    assert updated.updated_at > updated.created_at

    store.delete(created.id)
    assert store.find(created.id) is None
    with pytest.raises(NotFoundError):
        store.get(created.id)
    with pytest.raises(NotFoundError):
        store.delete(created.id)
    with pytest.raises(NotFoundError):
        store.update(created.id, settings())


def test_views_are_snapshots(store: MulticastStore) -> None:
    group = store.create(settings())
    store.add_device(group.id, EUI_A)
    assert group.dev_euis == frozenset()  # the old view did not change
    assert store.get(group.id).dev_euis == {EUI_A}
    assert "mc_nwk_s_key" not in repr(group)  # keys stay out of logs


def test_members_and_gateways(store: MulticastStore) -> None:
    group = store.create(settings())
    store.add_device(group.id, EUI_B)
    store.add_device(group.id, EUI_A)
    assert store.members(group.id) == [EUI_A, EUI_B]
    with pytest.raises(CitypostError, match="already in multicast group") as refused:
        store.add_device(group.id, EUI_A)
    assert refused.value.grpc_status == "INTERNAL"  # ChirpStack's unique constraint
    store.remove_device(group.id, EUI_A)
    with pytest.raises(NotFoundError, match=EUI_A):
        store.remove_device(group.id, EUI_A)
    store.add_gateway(group.id, "aa555a0000000001")
    assert store.get(group.id).gateway_ids == {"aa555a0000000001"}
    store.remove_gateway(group.id, "aa555a0000000001")
    with pytest.raises(NotFoundError):
        store.remove_gateway(group.id, "aa555a0000000001")
    with pytest.raises(NotFoundError):
        store.add_device(APP, EUI_A)


def test_list_filters_orders_and_pages(store: MulticastStore) -> None:
    names = [f"citypost/street_lamp/sector-{n:02d}" for n in range(7)]
    for name in reversed(names):
        store.create(settings(name=name))
    other = store.create(settings(name="citypost/bollard/old-town", application_id=OTHER_APP))
    store.add_device(other.id, EUI_A)

    page = store.list_groups(limit=3, offset=0, application_id=APP)
    assert page.total_count == 7
    assert [g.name for g in page.groups] == names[:3]
    assert [g.name for g in store.list_groups(limit=3, offset=6, application_id=APP).groups] == [
        names[6]
    ]
    assert store.list_groups(limit=3, offset=9, application_id=APP).groups == []
    zero = store.list_groups(limit=0, application_id=APP)  # SQL LIMIT 0: no rows, a count
    assert zero.total_count == 7 and zero.groups == []

    assert store.list_groups(limit=10, search="SECTOR-0").total_count == 7  # case-insensitive
    assert store.list_groups(limit=10, search="sector-05").total_count == 1
    assert [g.id for g in store.list_groups(limit=10, dev_eui=EUI_A).groups] == [other.id]
    assert store.list_groups(limit=100).total_count == 8


# --- the queue ----------------------------------------------------------------------------


def test_enqueue_numbers_like_chirpstack(store: MulticastStore) -> None:
    group = store.create(settings(f_cnt=20))
    after, first = store.enqueue(group.id, 10, b"\x01\x02\x03")
    assert first.f_cnt == 20  # the counter before the increment
    assert after.f_cnt == 21
    _, second = store.enqueue(group.id, 10, b"\x04", expires_at=1_750_000_100.5)
    assert second.f_cnt == 21 and second.expires_at == 1_750_000_100.5
    assert store.queue(group.id) == [first, second]

    store.update(group.id, settings(f_cnt=30))  # Update sets the counter, as in ChirpStack
    assert store.enqueue(group.id, 10, b"")[1].f_cnt == 30

    assert store.flush(group.id) == 3
    assert store.queue(group.id) == []
    assert store.get(group.id).f_cnt == 31  # flushing keeps the counter


def test_counter_wraps_at_32_bits(store: MulticastStore) -> None:
    group = store.create(settings(f_cnt=0xFFFF_FFFF))
    after, item = store.enqueue(group.id, 1, b"")
    assert item.f_cnt == 0xFFFF_FFFF and after.f_cnt == 0


@pytest.mark.parametrize("f_port", [0, 256, -1])
def test_f_port_outside_1_to_255_is_refused(store: MulticastStore, f_port: int) -> None:
    group = store.create(settings())
    with pytest.raises(InvalidArgumentError, match="f_port"):
        store.enqueue(group.id, f_port, b"x")
    assert store.get(group.id).f_cnt == 20  # a refused item takes no counter


@pytest.mark.parametrize(("dr", "limit"), [(0, 51), (2, 51), (3, 115), (4, 242), (7, 242)])
def test_payload_must_fit_the_groups_data_rate(store: MulticastStore, dr: int, limit: int) -> None:
    group = store.create(settings(dr=dr))
    store.enqueue(group.id, 5, bytes(limit))
    with pytest.raises(InvalidArgumentError, match=f"DR{dr}.*at most {limit}"):
        store.enqueue(group.id, 5, bytes(limit + 1))


def test_enqueue_to_a_missing_group(store: MulticastStore) -> None:
    with pytest.raises(NotFoundError):
        store.enqueue(APP, 5, b"x")
    with pytest.raises(NotFoundError):
        store.queue(APP)
    with pytest.raises(NotFoundError):
        store.flush(APP)
    assert store.pop_queue(APP) == []


def test_pop_takes_the_queue_and_delete_drops_it(store: MulticastStore) -> None:
    group = store.create(settings())
    items = [store.enqueue(group.id, 5, bytes([n]))[1] for n in range(3)]
    assert store.pop_queue(group.id) == items
    assert store.pop_queue(group.id) == []
    store.enqueue(group.id, 5, b"x")
    store.delete(group.id)
    assert store.pop_queue(group.id) == []


@pytest.mark.timeout(30)
def test_concurrent_enqueues_get_distinct_consecutive_counters(store: MulticastStore) -> None:
    group = store.create(settings(f_cnt=0))
    got: list[int] = []
    got_lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            f_cnt = store.enqueue(group.id, 5, b"x")[1].f_cnt
            with got_lock:
                got.append(f_cnt)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(1600))
    assert [item.f_cnt for item in store.queue(group.id)] == sorted(got)


# --- the servicer's in-process side and the client's pure helpers -------------------------


def test_service_exposes_group_and_pop_queue() -> None:
    service = MulticastService()
    view = service.store.create(settings())
    service.store.enqueue(view.id, 5, b"x")
    assert service.group(view.id) == service.store.get(view.id)
    assert [item.data for item in service.pop_queue(view.id)] == [b"x"]
    assert service.group(APP) is None


def test_group_names_and_specs() -> None:
    assert multicast_group_name("street_lamp", "dijon-centre") == (
        "citypost/street_lamp/dijon-centre"
    )
    for bad in [("", "g"), ("street_lamp", ""), ("a/b", "g"), ("street_lamp", "x/y")]:
        with pytest.raises(InvalidArgumentError):
            multicast_group_name(*bad)
    spec = _checked_spec("n", GroupSpec(APP.upper(), frozenset({"0102030405060A0B"}), 3, 1))
    assert spec.application_id == APP and spec.dev_euis == {"0102030405060a0b"}
    with pytest.raises(InvalidArgumentError, match="application_id"):
        _checked_spec("n", GroupSpec("nope", frozenset(), 3, 1))
    with pytest.raises(InvalidArgumentError, match="dev_euis"):
        _checked_spec("n", GroupSpec(APP, frozenset({"0102"}), 3, 1))
