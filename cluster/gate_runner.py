"""The downlink gate as the demo and the drills run it: next to the network
server, learning each new leader's epoch from etcd the moment it is elected
(not only from the new leader's first command), putting the devices in their
declared fail-safe states when no leader could be confirmed for
`failover.failsafe_after_s` (see bridges/failsafe.py), and enqueueing group
commands on the network server's multicast groups: one per (class C asset
class, group) of the registry, created or brought in step at start
(`radio.network_server_api`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import aetcd

from bridges.airtime import RX2_FREQUENCY_HZ, AirtimeBook
from bridges.airtime_planner import AirtimePlanner, Route
from bridges.downlink_frame import COMMAND_F_PORT
from bridges.downlink_gate import DownlinkGate, GateStats
from bridges.downlinks import downlinks
from bridges.failsafe import FailsafeWatch, failsafe_commands
from bridges.multicast_client import GroupSpec, MulticastClient, multicast_group_name
from bridges.registry import DeviceRegistry, RadioClass, class_name, radio_class
from citypost.clock import SimClock
from citypost.config import Config
from citypost.errors import InfrastructureError, NotFoundError
from failover.election import leader_key, watch_leader
from failover.etcd_client import etcd_client
from fleet.network_server import device_link
from fleet.population import City, build_city
from security import identities
from security.pki import Kind

CHECK_INTERVAL_S = 0.5
MULTICAST_TIMEOUT_S = 5.0  # one enqueue, the gate's MQTT thread waiting
SYNC_TIMEOUT_S = 120.0  # bringing every group in step at start (thousands of members)

log = logging.getLogger(__name__)


def multicast_groups(
    registry: DeviceRegistry, dr: int
) -> dict[tuple[str, str], tuple[str, GroupSpec]]:
    """The network server's multicast groups the city needs, by (application id, group):
    their name and spec, one per group of every class C asset class, on RX2's frequency
    at the class C data rate."""
    wanted: dict[tuple[str, str], tuple[str, GroupSpec]] = {}
    for (asset_class, group), members in sorted(registry.groups().items()):
        if radio_class(asset_class) is not RadioClass.C:
            continue
        name = multicast_group_name(class_name(asset_class), group)
        app = members[0].application_id
        euis = frozenset(d.dev_eui for d in members)
        wanted[app, group] = (name, GroupSpec(app, euis, dr, RX2_FREQUENCY_HZ))
    return wanted


def plan_routes(city: City) -> tuple[dict[str, Route], dict[tuple[str, str], Route]]:
    """Each device's route (its class and gateways, best first), and each class C group's
    (every gateway that is some member's best): what the airtime plan reasons on."""
    unicast: dict[str, Route] = {}
    serving: dict[tuple[str, str], set[str]] = {}
    for sim_device in city.devices:
        device = sim_device.device
        link = device_link(sim_device)  # as the network server reaches it
        unicast[device.dev_eui] = Route(link.radio_class, link.gateways)
        if link.radio_class is RadioClass.C:
            serving.setdefault((device.application_id, device.group), set()).add(link.gateways[0])
    groups = {key: Route(RadioClass.C, tuple(sorted(g))) for key, g in serving.items()}
    return unicast, groups


class GateRunner:
    def __init__(self, config: Config) -> None:
        self._city = config.city.name
        self._endpoints = list(config.etcd.endpoints)
        self._radio = config.radio
        self._identity = identities.tls_identity(config, Kind.GATE, identities.GATE)
        # The registry and the devices' radio links come from the city model, as the posts'
        # registry does; with a real ChirpStack they would come from its device list and
        # the gateways of each device's last uplinks.
        self._city_model = build_city(config.city)
        self._registry = self._city_model.registry
        self.failsafe = FailsafeWatch(config.failover.failsafe_after_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._multicast: MulticastClient | None = None
        # (application id, group) -> the network server's multicast group id
        self._group_ids: dict[tuple[str, str], str] = {}
        multicast = self if config.radio.network_server_api else None
        # The network server's window: a plan on another window predicts another radio.
        book = AirtimeBook(window_s=config.radio.duty_cycle_window_s)
        self.planner = AirtimePlanner(rx2_dr=config.radio.rx2_dr, book=book)
        unicast, groups = plan_routes(self._city_model)
        self.gate = DownlinkGate(
            config=config,
            multicast=multicast,
            planner=self.planner,
            routes=unicast,
            multicast_routes=groups,
            clock=SimClock.of(config.sim),
        )

    def start(self) -> GateRunner:
        self._thread = threading.Thread(target=self._run, name="gate-runner", daemon=True)
        self._thread.start()
        self._started.wait(10.0)
        if self._radio.network_server_api:
            # Before the gate takes commands: a group command must find its group.
            self._call(self._sync_groups(), SYNC_TIMEOUT_S)
        self.gate.start()
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self._main())
            self._started.set()
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            # The leader watch is an async generator: finalize it on its own loop.
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        if self._radio.network_server_api:
            self._multicast = MulticastClient(
                self._radio.network_server_api,
                api_token=self._radio.network_server_api_token,
                identity=self._identity,
            )
        try:
            if self._endpoints:
                await self._follow()
            else:
                await asyncio.Event().wait()  # serve the multicast calls until cancelled
        finally:
            if self._multicast is not None:
                await self._multicast.close()

    def _call(self, coroutine: Any, timeout_s: float) -> Any:
        if self._loop is None:
            raise InfrastructureError("the gate runner's loop is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _sync_groups(self) -> None:
        assert self._multicast is not None
        wanted = multicast_groups(self._registry, self._radio.rx2_dr)
        ids = await self._multicast.sync_groups(dict(wanted.values()))
        self._group_ids = {key: ids[name] for key, (name, _) in wanted.items()}
        log.info("gate: %d multicast group(s) in step with the registry", len(ids))

    def enqueue(self, application_id: str, group: str, frame: bytes) -> None:
        """The gate's MulticastSink: one frame on the group's multicast group."""
        group_id = self._group_ids.get((application_id, group))
        if group_id is None or self._multicast is None:
            raise NotFoundError(f"no multicast group for {group!r} of application {application_id}")
        try:
            self._call(
                self._multicast.enqueue(group_id, COMMAND_F_PORT, frame), MULTICAST_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise InfrastructureError(
                f"the network server did not take the multicast within {MULTICAST_TIMEOUT_S} s"
            ) from exc

    async def _follow(self) -> None:
        client = etcd_client(self._endpoints, tls=self._identity)
        check = asyncio.create_task(self._check_loop(client))
        try:
            async for seen in watch_leader(client, self._city):
                if seen.leader is not None:
                    await self._raise(seen.leader.epoch)
        finally:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
            await client.close()

    async def _raise(self, epoch: int) -> None:
        try:
            await asyncio.to_thread(self.gate.raise_epoch, epoch)
        except Exception:  # the gate still fences on commands' own epochs
            log.exception("gate: cannot record epoch %d", epoch)

    async def _check_loop(self, client: aetcd.Client) -> None:
        """Is a leader confirmed in etcd (a quorum read)? If not for too long: fail-safe."""
        key = leader_key(self._city)
        while True:
            now = time.monotonic()
            try:
                got = await asyncio.wait_for(client.get(key), CHECK_INTERVAL_S * 2)
            except Exception:
                got = None  # no quorum, no member: nobody can be confirmed leading
            if got is not None:
                await self._raise(int(got.create_revision))
                if self.failsafe.leader_confirmed(now):
                    log.warning("gate: a leader is back; the fail-safe ends")
            elif self.failsafe.due(now):
                await asyncio.to_thread(self._apply_failsafe)
            await asyncio.sleep(CHECK_INTERVAL_S)

    def _apply_failsafe(self) -> None:
        epoch = self.gate.stats().highest_epoch
        commands = failsafe_commands(self._registry, epoch=epoch, now_ms=time.time_ns() // 10**6)
        sends = [(d.topic, d.payload) for c in commands for d in downlinks(c, self._registry)]
        log.error(
            "gate: no leader for over %.0f s: %d group(s), %d device(s) to their fail-safe state",
            self.failsafe.bound_s,
            len(commands),
            len(sends),
        )
        self.gate.send_own(sends)

    def stats(self) -> GateStats:
        return self.gate.stats()

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10.0)
        self.gate.stop()
