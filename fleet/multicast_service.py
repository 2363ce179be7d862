"""ChirpStack v4's multicast API for the simulated network server: `api.MulticastGroupService`.

The downlink gate drives multicast through ChirpStack's own gRPC API (the
`chirpstack-api` stubs), so the simulated city serves that API with the same
messages, codes and numbering; pointing the gate at a real ChirpStack is then a
change of address and token. Behaviour follows ChirpStack v4's
`chirpstack/src/api/multicast.rs` and `src/storage/multicast.rs`:

- Create ignores the request's `id` and returns a new UUID; the group keeps the
  request's `f_cnt` as the next frame counter. Update rewrites every field but
  `application_id` (also `f_cnt`); Delete takes the group's members and queue.
- Enqueue gives the item the group's current `f_cnt`, increments the group's
  counter and returns the counter the item got; the request's `f_cnt` is ignored.
- ListQueue lists the items in enqueue order (ChirpStack keeps one row per
  gateway and lists each `f_cnt` once; this store keeps one item per enqueue).
- List filters by application, by member device and by a case-insensitive
  substring of the name, orders by name, pages with limit/offset (`limit` 0
  gives no rows, as SQL's LIMIT 0 does) and counts every match in `total_count`.
- The API token comes as `authorization: Bearer <token>` metadata; a missing or
  wrong one is UNAUTHENTICATED (ChirpStack answers UNAUTHENTICATED also for a
  key that may not touch the group).

Where ChirpStack is loose this store is strict, so a client that works here
works there: bad EUIs, DevAddr and keys are INVALID_ARGUMENT naming the field
(ChirpStack: INTERNAL from its parser; it also takes an empty one as zeros); a
missing group is NOT_FOUND for every call (ChirpStack: INTERNAL from Enqueue, an
empty answer from ListQueue/FlushQueue); an f_port outside 1..255 is
INVALID_ARGUMENT (ChirpStack: INTERNAL, its validation error passing through
`anyhow`); a payload too large for the group's data rate is INVALID_ARGUMENT at
Enqueue (ChirpStack takes it, spends the f_cnt, and drops it when scheduling).
Only EU868 is simulated (DR0..7, the 863-870 MHz band). A device already in the
group is refused with INTERNAL, as ChirpStack's unique constraint does.
Gateways are not checked against a registry (any EUI is taken), and an enqueue
is stored even when no gateway covers the group (ChirpStack then stores none).
The token is checked before anything else (ChirpStack parses the ids first).

ChirpStack lists a group's members through `api.DeviceService.List` with
`multicast_group_id`; `serve` answers that one form of it too (other
DeviceService calls are UNIMPLEMENTED), so a client can find departed members.

The store is thread-safe (one lock, held only for in-memory work). The network
server learns of a new item through `on_enqueue`, called after the item is
stored, outside the lock, on the server's event loop (so it must be quick), and
takes items with `pop_queue` once it has transmitted them; an item's
`expires_at` is for it to judge, as ChirpStack's scheduler does.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

import grpc
from chirpstack_api.api import (
    device_pb2,
    device_pb2_grpc,
    multicast_group_pb2,
    multicast_group_pb2_grpc,
)
from chirpstack_api.common import common_pb2
from google.protobuf import empty_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridges.airtime import max_app_payload
from citypost.errors import CitypostError, ConfigError, InvalidArgumentError, NotFoundError
from security.grpc_tls import peer_principal
from security.pki import Kind

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "api.MulticastGroupService"
DEVICE_SERVICE_NAME: Final = "api.DeviceService"
AUTHORIZATION_METADATA: Final = "authorization"

CLASS_C: Final = "CLASS_C"
CLASS_B: Final = "CLASS_B"
DELAY: Final = "DELAY"
GPS_TIME: Final = "GPS_TIME"
EU868: Final = "EU868"

MIN_F_PORT: Final = 1
MAX_F_PORT: Final = 255  # ChirpStack's rule for multicast queue items
MAX_EU868_DR: Final = 7  # DR8..11 are LR-FHSS, uplink only
EU868_BAND_HZ: Final = (863_000_000, 870_000_000)
MAX_PING_SLOT_PERIODICITY: Final = 7
UINT32_MAX: Final = 0xFFFF_FFFF


# --- what callers see ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MulticastGroupView:
    """One multicast group as it is now (a copy: later changes do not show in it)."""

    id: str
    name: str
    application_id: str
    dr: int
    frequency: int  # Hz
    group_type: str  # CLASS_C or CLASS_B
    mc_addr: str  # 8 lowercase hex digits
    dev_euis: frozenset[str]  # 16 lowercase hex digits each
    gateway_ids: frozenset[str]
    f_cnt: int = 0  # the frame counter the next enqueued item gets
    region: str = EU868
    class_c_scheduling_type: str = DELAY
    class_b_ping_slot_periodicity: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    mc_nwk_s_key: str = field(default="", repr=False)
    mc_app_s_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class QueueItemView:
    """One enqueued multicast frame."""

    group_id: str
    f_cnt: int
    f_port: int
    data: bytes
    expires_at: float | None  # epoch seconds; None: never expires


class GroupSettings(NamedTuple):
    """What Create sets and Update rewrites (Update keeps the application)."""

    name: str
    application_id: str
    region: str
    mc_addr: str
    mc_nwk_s_key: str
    mc_app_s_key: str
    f_cnt: int
    group_type: str
    dr: int
    frequency: int
    class_b_ping_slot_periodicity: int
    class_c_scheduling_type: str


class GroupPage(NamedTuple):
    total_count: int
    groups: list[MulticastGroupView]


# --- validation, as the servicer applies it -----------------------------------------------


def parse_uuid(value: object, name: str) -> str:
    """A UUID in any form Python (and Rust's uuid crate) reads -> canonical lowercase."""
    if isinstance(value, str) and value:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidArgumentError(f"{name} must be a UUID, got {value!r}")


def parse_hex(value: object, digits: int, name: str, what: str) -> str:
    """Exactly `digits` hex digits (either case) -> lowercase."""
    if isinstance(value, str) and len(value) == digits:
        lowered = value.lower()
        if not lowered.strip("0123456789abcdef"):
            return lowered
    raise InvalidArgumentError(f"{name} must be {digits} hex digits ({what}), got {value!r}")


def parse_eui(value: object, name: str) -> str:
    return parse_hex(value, 16, name, "an EUI-64")


def group_settings(group: Any, *, application_id: str | None = None) -> GroupSettings:
    """A `MulticastGroup` message -> GroupSettings; InvalidArgumentError names the field.

    `application_id` given (Update) replaces the message's, which Update ignores.
    """
    name = group.name
    if not name:
        raise InvalidArgumentError("name is not set")
    app = application_id or parse_uuid(group.application_id, "application_id")
    region = _enum_name(common_pb2.Region, group.region, "region")
    if region != EU868:
        raise InvalidArgumentError(
            f"region: the simulated network server covers EU868 only, got {region}"
        )
    group_type = _enum_name(multicast_group_pb2.MulticastGroupType, group.group_type, "group_type")
    scheduling = _enum_name(
        multicast_group_pb2.MulticastGroupSchedulingType,
        group.class_c_scheduling_type,
        "class_c_scheduling_type",
    )
    if not 0 <= group.dr <= MAX_EU868_DR:
        raise InvalidArgumentError(f"dr must be 0..{MAX_EU868_DR} in EU868, got {group.dr}")
    low, high = EU868_BAND_HZ
    if not low <= group.frequency <= high:
        raise InvalidArgumentError(
            f"frequency must be within the EU868 band {low}..{high} Hz, got {group.frequency}"
        )
    if not 0 <= group.class_b_ping_slot_periodicity <= MAX_PING_SLOT_PERIODICITY:
        raise InvalidArgumentError(
            f"class_b_ping_slot_periodicity must be 0..{MAX_PING_SLOT_PERIODICITY}, "
            f"got {group.class_b_ping_slot_periodicity}"
        )
    return GroupSettings(
        name=name,
        application_id=app,
        region=region,
        mc_addr=parse_hex(group.mc_addr, 8, "mc_addr", "a DevAddr"),
        mc_nwk_s_key=parse_hex(group.mc_nwk_s_key, 32, "mc_nwk_s_key", "an AES-128 key"),
        mc_app_s_key=parse_hex(group.mc_app_s_key, 32, "mc_app_s_key", "an AES-128 key"),
        f_cnt=group.f_cnt,
        group_type=group_type,
        dr=group.dr,
        frequency=group.frequency,
        class_b_ping_slot_periodicity=group.class_b_ping_slot_periodicity,
        class_c_scheduling_type=scheduling,
    )


def _enum_name(enum: Any, value: int, name: str) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgumentError(f"{name} has no value {value}") from None


# --- the store ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    view: MulticastGroupView  # members and counter included; replaced on every change
    queue: list[QueueItemView] = field(default_factory=list)


class MulticastStore:
    """The groups, their members and queues, in memory; every method is thread-safe.

    Methods take checked values (see `group_settings`, `parse_uuid`, `parse_eui`) and
    raise NotFoundError for a missing group or member, InvalidArgumentError for an
    item the group cannot carry.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._now = now
        self._new_id = new_id
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}

    def create(self, settings: GroupSettings) -> MulticastGroupView:
        now = self._now()
        view = MulticastGroupView(
            id=self._new_id(),
            name=settings.name,
            application_id=settings.application_id,
            dr=settings.dr,
            frequency=settings.frequency,
            group_type=settings.group_type,
            mc_addr=settings.mc_addr,
            dev_euis=frozenset(),
            gateway_ids=frozenset(),
            f_cnt=settings.f_cnt,
            region=settings.region,
            class_c_scheduling_type=settings.class_c_scheduling_type,
            class_b_ping_slot_periodicity=settings.class_b_ping_slot_periodicity,
            created_at=now,
            updated_at=now,
            mc_nwk_s_key=settings.mc_nwk_s_key,
            mc_app_s_key=settings.mc_app_s_key,
        )
        with self._lock:
            if view.id in self._groups:
                raise CitypostError(f"multicast group {view.id} already exists")
            self._groups[view.id] = _Group(view)
        return view

    def update(self, group_id: str, settings: GroupSettings) -> MulticastGroupView:
        """Rewrite every setting but the application (ChirpStack keeps it), f_cnt included."""
        now = self._now()
        with self._lock:
            group = self._get(group_id)
            group.view = replace(
                group.view,
                name=settings.name,
                region=settings.region,
                mc_addr=settings.mc_addr,
                mc_nwk_s_key=settings.mc_nwk_s_key,
                mc_app_s_key=settings.mc_app_s_key,
                f_cnt=settings.f_cnt,
                group_type=settings.group_type,
                dr=settings.dr,
                frequency=settings.frequency,
                class_b_ping_slot_periodicity=settings.class_b_ping_slot_periodicity,
                class_c_scheduling_type=settings.class_c_scheduling_type,
                updated_at=now,
            )
            return group.view

    def delete(self, group_id: str) -> None:
        with self._lock:
            self._get(group_id)
            del self._groups[group_id]

    def get(self, group_id: str) -> MulticastGroupView:
        with self._lock:
            return self._get(group_id).view

    def find(self, group_id: str) -> MulticastGroupView | None:
        with self._lock:
            group = self._groups.get(group_id)
            return None if group is None else group.view

    def list_groups(
        self,
        *,
        limit: int,
        offset: int = 0,
        application_id: str | None = None,
        search: str = "",
        dev_eui: str | None = None,
    ) -> GroupPage:
        """Matching groups ordered by name (then id), `limit` from `offset`, and their count."""
        needle = search.casefold()
        with self._lock:
            matches = [
                g.view
                for g in self._groups.values()
                if (application_id is None or g.view.application_id == application_id)
                and (dev_eui is None or dev_eui in g.view.dev_euis)
                and needle in g.view.name.casefold()
            ]
        matches.sort(key=lambda v: (v.name, v.id))
        return GroupPage(len(matches), matches[offset : offset + max(limit, 0)])

    def add_device(self, group_id: str, dev_eui: str) -> None:
        with self._lock:
            group = self._get(group_id)
            if dev_eui in group.view.dev_euis:
                # ChirpStack's unique constraint answers INTERNAL too.
                raise CitypostError(f"device {dev_eui} is already in multicast group {group_id}")
            group.view = replace(group.view, dev_euis=group.view.dev_euis | {dev_eui})

    def remove_device(self, group_id: str, dev_eui: str) -> None:
        with self._lock:
            group = self._get(group_id)
            if dev_eui not in group.view.dev_euis:
                raise NotFoundError(
                    f"object does not exist (multicast-group: {group_id}, device: {dev_eui})"
                )
            group.view = replace(group.view, dev_euis=group.view.dev_euis - {dev_eui})

    def add_gateway(self, group_id: str, gateway_id: str) -> None:
        with self._lock:
            group = self._get(group_id)
            if gateway_id in group.view.gateway_ids:
                raise CitypostError(
                    f"gateway {gateway_id} is already in multicast group {group_id}"
                )
            group.view = replace(group.view, gateway_ids=group.view.gateway_ids | {gateway_id})

    def remove_gateway(self, group_id: str, gateway_id: str) -> None:
        with self._lock:
            group = self._get(group_id)
            if gateway_id not in group.view.gateway_ids:
                raise NotFoundError(
                    f"object does not exist (multicast-group: {group_id}, gateway: {gateway_id})"
                )
            group.view = replace(group.view, gateway_ids=group.view.gateway_ids - {gateway_id})

    def members(self, group_id: str) -> list[str]:
        """The group's devEuis, sorted."""
        with self._lock:
            return sorted(self._get(group_id).view.dev_euis)

    def enqueue(
        self, group_id: str, f_port: int, data: bytes, expires_at: float | None = None
    ) -> tuple[MulticastGroupView, QueueItemView]:
        """Store a frame under the group's next f_cnt; returns the group (counter already
        advanced) and the item."""
        if not MIN_F_PORT <= f_port <= MAX_F_PORT:
            raise InvalidArgumentError(
                f"f_port must be between {MIN_F_PORT} and {MAX_F_PORT}, got {f_port}"
            )
        with self._lock:
            group = self._get(group_id)
            limit = max_app_payload(group.view.dr)
            if len(data) > limit:
                raise InvalidArgumentError(
                    f"data is {len(data)} bytes; DR{group.view.dr} of multicast group "
                    f"{group_id} carries at most {limit}"
                )
            item = QueueItemView(group_id, group.view.f_cnt, f_port, bytes(data), expires_at)
            group.queue.append(item)
            group.view = replace(group.view, f_cnt=(group.view.f_cnt + 1) & UINT32_MAX)
            return group.view, item

    def queue(self, group_id: str) -> list[QueueItemView]:
        with self._lock:
            return list(self._get(group_id).queue)

    def flush(self, group_id: str) -> int:
        """Drop the group's queue; how many items were dropped."""
        with self._lock:
            group = self._get(group_id)
            dropped = len(group.queue)
            group.queue.clear()
            return dropped

    def pop_queue(self, group_id: str) -> list[QueueItemView]:
        """Take the group's queued items, oldest first (none when the group is gone)."""
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                return []
            items, group.queue = group.queue, []
            return items

    def _get(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            raise NotFoundError(f"object does not exist (multicast group id: {group_id})")
        return group


# --- the gRPC servicers -------------------------------------------------------------------

# Called with the group as it is after the enqueue (its f_cnt is already the next one;
# the item carries its own) and the stored item.
OnEnqueue = Callable[[MulticastGroupView, QueueItemView], None]


class MulticastService(multicast_group_pb2_grpc.MulticastGroupServiceServicer):
    """`api.MulticastGroupService` over a MulticastStore, for a (thread-pool) grpc server."""

    def __init__(
        self,
        *,
        known_device: Callable[[str], bool] | None = None,
        on_enqueue: OnEnqueue | None = None,
        api_token: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if api_token == "":
            raise ConfigError("api_token: give a token, or None for no authentication")
        self.store = MulticastStore(now=now)
        self._known_device = known_device
        self._on_enqueue = on_enqueue
        self._expected = None if api_token is None else f"Bearer {api_token}".encode()

    # in-process use, by the simulated network server

    def group(self, group_id: str) -> MulticastGroupView | None:
        return self.store.find(group_id)

    def pop_queue(self, group_id: str) -> list[QueueItemView]:
        return self.store.pop_queue(group_id)

    # the RPCs

    def Create(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            if not request.HasField("multicast_group"):
                raise InvalidArgumentError("multicast_group is missing")
            view = self.store.create(group_settings(request.multicast_group))
        return multicast_group_pb2.CreateMulticastGroupResponse(id=view.id)

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            view = self.store.get(parse_uuid(request.id, "id"))
        return multicast_group_pb2.GetMulticastGroupResponse(
            multicast_group=_group_message(view),
            created_at=_timestamp(view.created_at),
            updated_at=_timestamp(view.updated_at),
        )

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            if not request.HasField("multicast_group"):
                raise InvalidArgumentError("multicast_group is missing")
            group_id = parse_uuid(request.multicast_group.id, "multicast_group.id")
            current = self.store.get(group_id)
            settings = group_settings(
                request.multicast_group, application_id=current.application_id
            )
            self.store.update(group_id, settings)
        return empty_pb2.Empty()

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            self.store.delete(parse_uuid(request.id, "id"))
        return empty_pb2.Empty()

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            if request.tenant_id:  # checked, as ChirpStack does; there is one tenant here
                parse_uuid(request.tenant_id, "tenant_id")
            page = self.store.list_groups(
                limit=request.limit,
                offset=request.offset,
                application_id=(
                    parse_uuid(request.application_id, "application_id")
                    if request.application_id
                    else None
                ),
                search=request.search,
                dev_eui=parse_eui(request.dev_eui, "dev_eui") if request.dev_eui else None,
            )
        return multicast_group_pb2.ListMulticastGroupsResponse(
            total_count=page.total_count,
            result=[
                multicast_group_pb2.MulticastGroupListItem(
                    id=view.id,
                    created_at=_timestamp(view.created_at),
                    updated_at=_timestamp(view.updated_at),
                    name=view.name,
                    region=common_pb2.Region.Value(view.region),
                    group_type=multicast_group_pb2.MulticastGroupType.Value(view.group_type),
                    application_id=view.application_id,
                )
                for view in page.groups
            ],
        )

    def AddDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            group_id = parse_uuid(request.multicast_group_id, "multicast_group_id")
            dev_eui = parse_eui(request.dev_eui, "dev_eui")
            self.store.get(group_id)  # a missing group first, as ChirpStack reports it
            # Asked outside the store's lock: it is the network server's own lookup.
            if self._known_device is not None and not self._known_device(dev_eui):
                raise NotFoundError(f"object does not exist (dev_eui: {dev_eui})")
            self.store.add_device(group_id, dev_eui)
        return empty_pb2.Empty()

    def RemoveDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            self.store.remove_device(
                parse_uuid(request.multicast_group_id, "multicast_group_id"),
                parse_eui(request.dev_eui, "dev_eui"),
            )
        return empty_pb2.Empty()

    def AddGateway(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            self.store.add_gateway(
                parse_uuid(request.multicast_group_id, "multicast_group_id"),
                parse_eui(request.gateway_id, "gateway_id"),
            )
        return empty_pb2.Empty()

    def RemoveGateway(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            self.store.remove_gateway(
                parse_uuid(request.multicast_group_id, "multicast_group_id"),
                parse_eui(request.gateway_id, "gateway_id"),
            )
        return empty_pb2.Empty()

    def Enqueue(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            if not request.HasField("queue_item"):
                raise InvalidArgumentError("queue_item is missing")
            queued = request.queue_item
            group, item = self.store.enqueue(
                parse_uuid(queued.multicast_group_id, "queue_item.multicast_group_id"),
                queued.f_port,
                queued.data,
                _seconds(queued.expires_at) if queued.HasField("expires_at") else None,
            )
        self._announce(group, item)
        return multicast_group_pb2.EnqueueMulticastGroupQueueItemResponse(f_cnt=item.f_cnt)

    def FlushQueue(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            self.store.flush(parse_uuid(request.multicast_group_id, "multicast_group_id"))
        return empty_pb2.Empty()

    def ListQueue(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rpc(context):
            items = self.store.queue(parse_uuid(request.multicast_group_id, "multicast_group_id"))
        return multicast_group_pb2.ListMulticastGroupQueueResponse(
            items=[
                multicast_group_pb2.MulticastGroupQueueItem(
                    multicast_group_id=item.group_id,
                    f_cnt=item.f_cnt,
                    f_port=item.f_port,
                    data=item.data,
                    expires_at=None if item.expires_at is None else _timestamp(item.expires_at),
                )
                for item in items
            ]
        )

    # plumbing

    @contextlib.contextmanager
    def rpc(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Check the token, then run the body; a CitypostError becomes its gRPC status."""
        if self._expected is not None:
            self._authenticate(context, self._expected)
        try:
            yield
        except CitypostError as error:
            code = getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)
            context.abort(code, error.message)

    @staticmethod
    def _authenticate(context: grpc.ServicerContext, expected: bytes) -> None:
        values = [v for k, v in context.invocation_metadata() or () if k == AUTHORIZATION_METADATA]
        if not values:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authorization provided")
        given = values[0]
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if not given_bytes.startswith(b"Bearer "):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization metadata must be in format 'Bearer <TOKEN>'",
            )
        if not hmac.compare_digest(given_bytes, expected):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API token")

    def _announce(self, group: MulticastGroupView, item: QueueItemView) -> None:
        if self._on_enqueue is None:
            return
        try:
            self._on_enqueue(group, item)
        except Exception:
            # The item is stored and the caller has its f_cnt: the RPC succeeded.
            log.exception(
                "on_enqueue failed for multicast group %s, f_cnt %d", group.id, item.f_cnt
            )


class MulticastMembersService(device_pb2_grpc.DeviceServiceServicer):
    """`api.DeviceService.List` with `multicast_group_id`: the one way ChirpStack lists
    a group's members. Other DeviceService calls stay UNIMPLEMENTED."""

    def __init__(self, multicast: MulticastService) -> None:
        self._multicast = multicast

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._multicast.rpc(context):
            application_id = parse_uuid(request.application_id, "application_id")
            if not request.multicast_group_id:
                context.abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "the simulated network server lists devices by multicast_group_id only",
                )
            group_id = parse_uuid(request.multicast_group_id, "multicast_group_id")
            # Like ChirpStack's filter: a missing group, or one of another application,
            # has no devices of this application.
            group = self._multicast.store.find(group_id)
            members: list[str] = []
            if group is not None and group.application_id == application_id:
                members = sorted(group.dev_euis)
        offset = request.offset
        return device_pb2.ListDevicesResponse(
            total_count=len(members),
            result=[
                device_pb2.DeviceListItem(dev_eui=eui)
                for eui in members[offset : offset + request.limit]
            ],
        )


# --- serving ------------------------------------------------------------------------------


def serve(
    service: MulticastService,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    credentials: grpc.ServerCredentials | None = None,
    callers: frozenset[Kind] = frozenset({Kind.GATE}),
) -> tuple[grpc.Server, int]:
    """Start a grpc server with the multicast API (and the members listing, health) on a
    loopback address; returns it and the bound port. Stop it with `server.stop`.
    With `credentials` (security.grpc_tls.server_credentials) it speaks mutual TLS only,
    and only to `callers`' certificates (the downlink gate: the one path of a command to
    the air), besides health checks; anyone else is refused PERMISSION_DENIED.

    A thread-pool server, not grpc.aio: the process that runs the simulated network
    server also runs the downlink gate's grpc.aio clients on their own event loop, and
    grpc.aio on two loops in one process reports the closed one's events at shutdown."""
    if not _is_loopback(host):
        raise ConfigError(f"host: the simulated network server binds loopback only, got {host!r}")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fleet-api"),
        options=[("grpc.so_reuseport", 0)],
        interceptors=[] if credentials is None else [_OnlyCallers(callers)],
    )
    multicast_group_pb2_grpc.add_MulticastGroupServiceServicer_to_server(service, server)
    device_pb2_grpc.add_DeviceServiceServicer_to_server(MulticastMembersService(service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise ConfigError(f"cannot bind the multicast API to {host}:{port}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


class _OnlyCallers(grpc.ServerInterceptor):
    """Every unary method but health checks, only for certificates of `kinds`."""

    def __init__(self, kinds: frozenset[Kind]) -> None:
        self._kinds = kinds

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(_HEALTH):
            return handler
        inner, kinds = handler.unary_unary, self._kinds

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            who = peer_principal(context)
            if who is None or who.kind not in kinds:
                named = (
                    who.common_name if who is not None else "a caller without a city certificate"
                )
                allowed = ", ".join(sorted(k.value for k in kinds))
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} is for the {allowed} only; {named} may not call it",
                )
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


_HEALTH = "/grpc.health.v1.Health/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _group_message(view: MulticastGroupView) -> Any:
    return multicast_group_pb2.MulticastGroup(
        id=view.id,
        name=view.name,
        application_id=view.application_id,
        region=common_pb2.Region.Value(view.region),
        mc_addr=view.mc_addr,
        mc_nwk_s_key=view.mc_nwk_s_key,
        mc_app_s_key=view.mc_app_s_key,
        f_cnt=view.f_cnt,
        group_type=multicast_group_pb2.MulticastGroupType.Value(view.group_type),
        dr=view.dr,
        frequency=view.frequency,
        class_b_ping_slot_periodicity=view.class_b_ping_slot_periodicity,
        class_c_scheduling_type=multicast_group_pb2.MulticastGroupSchedulingType.Value(
            view.class_c_scheduling_type
        ),
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    whole = int(seconds // 1)
    stamp.seconds = whole
    stamp.nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return stamp


def _seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9
