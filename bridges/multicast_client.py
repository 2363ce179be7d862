"""The downlink gate's client of ChirpStack v4's multicast API (`api.MulticastGroupService`).

It speaks through the `chirpstack-api` stubs only, so the simulated network
server (fleet/multicast_service.py) and a real ChirpStack are the same target
to it: an address and an API token (`authorization: Bearer <token>` metadata).

`sync_groups` makes the network server's groups match the post's (class × group)
actors and is safe to repeat: a group is found by its exact name within its
application, created when missing, and its members are brought to the wanted
set. ChirpStack's multicast service cannot list a group's members; its
`api.DeviceService.List` with `multicast_group_id` does, and is used here.

Errors come out as the project's kinds. UNAVAILABLE and DEADLINE_EXCEEDED are
InfrastructureError, after a few retries with exponential backoff (tenacity).
Calls that are not idempotent (Create, AddDevice, RemoveDevice, Enqueue) are
retried on UNAVAILABLE only: after DEADLINE_EXCEEDED the server may have
applied the call, and a retried Enqueue would send the frame twice under two
frame counters. A refused token is ConfigError: the gate's configuration is
wrong and retrying will not help (citypost has no authentication error kind).

Given an identity of the city's PKI, the channel is mutual TLS (the gate's
certificate, read when the client is made: make a new client after a rotation);
without one it is plaintext (loopback, the benchmark baseline).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Final, NamedTuple, Self, TypeVar

import grpc
from chirpstack_api.api import (
    device_pb2,
    device_pb2_grpc,
    multicast_group_pb2,
    multicast_group_pb2_grpc,
)
from chirpstack_api.common import common_pb2
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from citypost.errors import (
    CitypostError,
    ConfigError,
    FailedPreconditionError,
    InfrastructureError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnimplementedError,
)
from security.grpc_tls import aio_channel
from security.pki_store import Identity

log = logging.getLogger(__name__)

T = TypeVar("T")

NAME_PREFIX: Final = "citypost"
PAGE_SIZE: Final = 100  # groups or devices per List call
MEMBER_CALLS_IN_FLIGHT: Final = 16  # AddDevice / RemoveDevice calls at once during a sync

_TRANSIENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_NOT_SENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE})
_HEX: Final = "0123456789abcdef"


class GroupSpec(NamedTuple):
    """One multicast group the post wants: its devices and how it is transmitted."""

    application_id: str
    dev_euis: frozenset[str]
    dr: int
    frequency_hz: int


class QueuedFrame(NamedTuple):
    """One frame in a group's queue, as ListQueue reports it."""

    group_id: str
    f_cnt: int
    f_port: int
    data: bytes
    expires_at: float | None  # epoch seconds


def multicast_group_name(asset_class_name: str, group: str) -> str:
    """`street_lamp`, `dijon-centre` -> `citypost/street_lamp/dijon-centre`."""
    for what, part in (("asset_class_name", asset_class_name), ("group", group)):
        if not isinstance(part, str) or not part or "/" in part:
            raise InvalidArgumentError(f"{what} must be a non-empty name without '/', got {part!r}")
    return f"{NAME_PREFIX}/{asset_class_name}/{group}"


class MulticastClient:
    """An async client of one network server's multicast API; close it (or use `async with`)."""

    def __init__(
        self,
        target: str,
        *,
        api_token: str | None = None,
        timeout_s: float = 5.0,
        attempts: int = 4,
        first_wait_s: float = 0.1,
        identity: Identity | None = None,
    ) -> None:
        if not target:
            raise ConfigError("target: give the network server's API as HOST:PORT")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s}")
        if attempts < 1:
            raise ConfigError(f"attempts must be at least 1, got {attempts}")
        if api_token == "":
            raise ConfigError("api_token: give a token, or None to send none")
        self._target = target
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._first_wait_s = first_wait_s
        self._metadata: tuple[tuple[str, str], ...] | None = (
            None if api_token is None else (("authorization", f"Bearer {api_token}"),)
        )
        # gRPC waits about 1 s (growing) before reconnecting to a server it lost, and fails
        # calls fast meanwhile; reconnect sooner so the retries below can reach it again.
        self._channel = aio_channel(
            target,
            identity,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ],
        )
        self._groups = multicast_group_pb2_grpc.MulticastGroupServiceStub(self._channel)
        self._devices = device_pb2_grpc.DeviceServiceStub(self._channel)
        # A group's Get-then-Update rewrites its f_cnt: no Enqueue of this client runs between.
        self._counter_lock = asyncio.Lock()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- groups -------------------------------------------------------------------------

    async def sync_groups(self, wanted: Mapping[str, GroupSpec]) -> dict[str, str]:
        """Make each wanted group exist with exactly its devices; name -> group id.

        Groups not named in `wanted` are left alone. A group found with other radio
        settings (dr, frequency, class C, DELAY scheduling) is updated to the spec.
        """
        checked = {name: _checked_spec(name, spec) for name, spec in wanted.items()}
        ids: dict[str, str] = {}
        for name, spec in checked.items():
            group_id = await self._find_group(name, spec.application_id)
            if group_id is None:
                group_id = await self._create_group(name, spec)
                log.info("created multicast group %s (%s)", name, group_id)
            else:
                await self._align_settings(group_id, name, spec)
            await self._sync_members(group_id, spec)
            ids[name] = group_id
        return ids

    async def _find_group(self, name: str, application_id: str) -> str | None:
        """The id of the application's group named exactly `name`, paging through List."""
        found: list[Any] = []
        offset = 0
        while True:
            request = multicast_group_pb2.ListMulticastGroupsRequest(
                limit=PAGE_SIZE, offset=offset, search=name, application_id=application_id
            )
            reply = await self._call("List", self._groups.List, request)
            # ChirpStack's search is a case-insensitive substring (SQL ILIKE): keep exact ones.
            found += [g for g in reply.result if g.name == name]
            offset += len(reply.result)
            if not reply.result or offset >= reply.total_count:
                break
        if not found:
            return None
        found.sort(key=lambda g: (g.created_at.seconds, g.created_at.nanos, g.id))
        if len(found) > 1:
            log.warning(
                "%d multicast groups are named %s; using the oldest, %s",
                len(found),
                name,
                found[0].id,
            )
        return str(found[0].id)

    async def _create_group(self, name: str, spec: GroupSpec) -> str:
        # Random session keys and address: ChirpStack keeps them and the devices would
        # learn them through LoRaWAN Remote Multicast Setup (TS005 McGroupSetupReq), which
        # is out of scope here; the simulated devices do not decrypt.
        group = multicast_group_pb2.MulticastGroup(
            name=name,
            application_id=spec.application_id,
            region=common_pb2.Region.EU868,
            mc_addr=secrets.token_hex(4),
            mc_nwk_s_key=secrets.token_hex(16),
            mc_app_s_key=secrets.token_hex(16),
            f_cnt=0,
            group_type=multicast_group_pb2.MulticastGroupType.CLASS_C,
            dr=spec.dr,
            frequency=spec.frequency_hz,
            class_c_scheduling_type=multicast_group_pb2.MulticastGroupSchedulingType.DELAY,
        )
        reply = await self._call(
            "Create",
            self._groups.Create,
            multicast_group_pb2.CreateMulticastGroupRequest(multicast_group=group),
            idempotent=False,
        )
        return str(reply.id)

    async def _align_settings(self, group_id: str, name: str, spec: GroupSpec) -> None:
        async with self._counter_lock:
            reply = await self._call(
                "Get", self._groups.Get, multicast_group_pb2.GetMulticastGroupRequest(id=group_id)
            )
            group = reply.multicast_group
            if (
                group.dr == spec.dr
                and group.frequency == spec.frequency_hz
                and group.group_type == multicast_group_pb2.MulticastGroupType.CLASS_C
                and group.class_c_scheduling_type
                == multicast_group_pb2.MulticastGroupSchedulingType.DELAY
            ):
                return
            log.info(
                "multicast group %s (%s): DR%d %d Hz -> DR%d %d Hz, class C",
                name,
                group_id,
                group.dr,
                group.frequency,
                spec.dr,
                spec.frequency_hz,
            )
            group.dr = spec.dr
            group.frequency = spec.frequency_hz
            group.group_type = multicast_group_pb2.MulticastGroupType.CLASS_C
            group.class_c_scheduling_type = multicast_group_pb2.MulticastGroupSchedulingType.DELAY
            # Update rewrites every field, f_cnt too: the one just read, under the lock.
            await self._call(
                "Update",
                self._groups.Update,
                multicast_group_pb2.UpdateMulticastGroupRequest(multicast_group=group),
            )

    async def _sync_members(self, group_id: str, spec: GroupSpec) -> None:
        current = await self._members(group_id, spec.application_id)
        missing = sorted(spec.dev_euis - current)
        departed = sorted(current - spec.dev_euis)
        slots = asyncio.Semaphore(MEMBER_CALLS_IN_FLIGHT)

        async def add(dev_eui: str) -> None:
            async with slots:
                await self._call(
                    "AddDevice",
                    self._groups.AddDevice,
                    multicast_group_pb2.AddDeviceToMulticastGroupRequest(
                        multicast_group_id=group_id, dev_eui=dev_eui
                    ),
                    idempotent=False,
                )

        async def remove(dev_eui: str) -> None:
            async with slots:
                await self._call(
                    "RemoveDevice",
                    self._groups.RemoveDevice,
                    multicast_group_pb2.RemoveDeviceFromMulticastGroupRequest(
                        multicast_group_id=group_id, dev_eui=dev_eui
                    ),
                    idempotent=False,
                )

        try:
            async with asyncio.TaskGroup() as tasks:
                for eui in missing:
                    tasks.create_task(add(eui))
                for eui in departed:
                    tasks.create_task(remove(eui))
        except BaseExceptionGroup as failures:
            for failure in failures.exceptions:
                if isinstance(failure, CitypostError):
                    raise failure from None
            raise
        if missing or departed:
            log.info(
                "multicast group %s: %d devices added, %d removed",
                group_id,
                len(missing),
                len(departed),
            )

    async def _members(self, group_id: str, application_id: str) -> set[str]:
        members: set[str] = set()
        offset = 0
        while True:
            request = device_pb2.ListDevicesRequest(
                limit=PAGE_SIZE,
                offset=offset,
                application_id=application_id,
                multicast_group_id=group_id,
            )
            reply = await self._call("DeviceService.List", self._devices.List, request)
            members.update(d.dev_eui.lower() for d in reply.result)
            offset += len(reply.result)
            if not reply.result or offset >= reply.total_count:
                return members

    # --- the queue ----------------------------------------------------------------------

    async def enqueue(self, group_id: str, f_port: int, data: bytes) -> int:
        """Queue one frame for the group; the frame counter it will go out with."""
        item = multicast_group_pb2.MulticastGroupQueueItem(
            multicast_group_id=group_id, f_port=f_port, data=bytes(data)
        )
        async with self._counter_lock:
            reply = await self._call(
                "Enqueue",
                self._groups.Enqueue,
                multicast_group_pb2.EnqueueMulticastGroupQueueItemRequest(queue_item=item),
                idempotent=False,
            )
        return int(reply.f_cnt)

    async def queue(self, group_id: str) -> list[QueuedFrame]:
        """The group's pending frames, oldest first."""
        reply = await self._call(
            "ListQueue",
            self._groups.ListQueue,
            multicast_group_pb2.ListMulticastGroupQueueRequest(multicast_group_id=group_id),
        )
        return [
            QueuedFrame(
                group_id=item.multicast_group_id,
                f_cnt=item.f_cnt,
                f_port=item.f_port,
                data=bytes(item.data),
                expires_at=(
                    item.expires_at.seconds + item.expires_at.nanos / 1e9
                    if item.HasField("expires_at")
                    else None
                ),
            )
            for item in reply.items
        ]

    async def flush(self, group_id: str) -> None:
        """Drop every pending frame of the group."""
        await self._call(
            "FlushQueue",
            self._groups.FlushQueue,
            multicast_group_pb2.FlushMulticastGroupQueueRequest(multicast_group_id=group_id),
        )

    # --- plumbing -----------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        *,
        idempotent: bool = True,
    ) -> Any:
        """One unary call with the token and the timeout, retried while the server cannot
        be reached; a refusal becomes the project's error kind."""
        retried = _TRANSIENT if idempotent else _NOT_SENT
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._first_wait_s, max=2.0),
            retry=retry_if_exception(
                lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() in retried
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._error(what, exc) from None
        raise AssertionError("unreachable: tenacity returns or raises")

    def _error(self, what: str, exc: grpc.aio.AioRpcError) -> CitypostError:
        code = exc.code()
        text = f"{what} at {self._target}: {code.name}: {exc.details()}"
        if code in _TRANSIENT:
            return InfrastructureError(text)
        kind = _KINDS.get(code)
        if kind is not None:
            return kind(text)
        return CitypostError(text)


_KINDS: Final[Mapping[grpc.StatusCode, Callable[[str], CitypostError]]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: ConfigError,
    grpc.StatusCode.PERMISSION_DENIED: ConfigError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def _checked_spec(name: str, spec: GroupSpec) -> GroupSpec:
    """The spec with lowercase devEuis; InvalidArgumentError naming what is wrong."""
    if not name:
        raise InvalidArgumentError("a wanted multicast group has an empty name")
    try:
        application_id = str(uuid.UUID(spec.application_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgumentError(
            f"{name}: application_id must be a UUID, got {spec.application_id!r}"
        ) from None
    dev_euis: set[str] = set()
    for eui in spec.dev_euis:
        lowered = eui.lower() if isinstance(eui, str) else ""
        if len(lowered) != 16 or lowered.strip(_HEX):
            raise InvalidArgumentError(f"{name}: dev_euis must be 16 hex digits each, got {eui!r}")
        dev_euis.add(lowered)
    return GroupSpec(application_id, frozenset(dev_euis), spec.dr, spec.frequency_hz)
