"""The downlink gate as the demo and the drills run it: next to the network
server, learning each new leader's epoch from etcd the moment it is elected
(the leader watch), and confirming with etcd, when the gate asks, the epoch of
a command above what the watch told so far (`confirm_epoch`: a new leader's
first command may beat the watch by a few milliseconds; a frame's own epoch is
never trusted, see bridges/downlink_gate.py), putting the devices in their
declared fail-safe states when no leader could be confirmed for
`failover.failsafe_after_s` (see bridges/failsafe.py), and enqueueing group
commands on the network server's multicast groups: one per (class C asset
class, group) of the registry, created or brought in step at start
(`radio.network_server_api`).

Without etcd endpoints the city has one post and no election: the gate then
confirms only that post's epoch (`sole_post_epoch`).
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
from bridges.downlink_gate import DownlinkGate, EpochConfirmer, GateStats, sole_post_epoch
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
# One read of the leader key, the gate's MQTT thread waiting (no other command moves
# meanwhile): a local quorum answers in milliseconds; an etcd without a leader may not
# within an election, and the command is then left for the broker to deliver again.
CONFIRM_TIMEOUT_S = 2.0
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
        self._client: aetcd.Client | None = None  # the etcd client, on the runner's loop
        self._multicast: MulticastClient | None = None
        # (application id, group) -> the network server's multicast group id
        self._group_ids: dict[tuple[str, str], str] = {}
        multicast = self if config.radio.network_server_api else None
        # The network server's window: a plan on another window predicts another radio.
        book = AirtimeBook(window_s=config.radio.duty_cycle_window_s)
        self.planner = AirtimePlanner(rx2_dr=config.radio.rx2_dr, book=book)
        unicast, groups = plan_routes(self._city_model)
        confirm: EpochConfirmer = self.confirm_epoch if self._endpoints else sole_post_epoch
        self.gate = DownlinkGate(
            config=config,
            multicast=multicast,
            planner=self.planner,
            routes=unicast,
            multicast_routes=groups,
            clock=SimClock.of(config.sim),
            confirm=confirm,
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
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._started.set()  # a start() still waiting must not wait for nothing
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
        if self._endpoints:
            # Before the gate takes commands: the first may need its epoch confirmed.
            self._client = etcd_client(self._endpoints, tls=self._identity)
        self._started.set()
        try:
            if self._client is not None:
                await self._follow(self._client)
            else:
                await asyncio.Event().wait()  # serve the multicast calls until cancelled
        finally:
            if self._client is not None:
                client, self._client = self._client, None
                await client.close()
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

    def confirm_epoch(self) -> int | None:
        """The gate's EpochConfirmer: the leader key's epoch read from etcd now, None
        when no leader holds the key; InfrastructureError when etcd did not answer
        within CONFIRM_TIMEOUT_S. From any thread but the runner's loop.

        A linearizable read (aetcd's default): a leader commands only once its key is
        committed, so the read gives its epoch, or a later one or none if it was deposed
        since; never an older one.
        """
        loop, client = self._loop, self._client
        if loop is None or client is None:
            raise InfrastructureError("the gate runner has no etcd client (not started)")
        try:
            future = asyncio.run_coroutine_threadsafe(self._leader_epoch(client), loop)
        except RuntimeError as exc:  # the loop is closed: the runner stopped
            raise InfrastructureError(f"the gate runner's loop is gone: {exc}") from exc
        try:
            return future.result(CONFIRM_TIMEOUT_S + 0.5)  # the read times out first
        except TimeoutError as exc:
            future.cancel()
            raise InfrastructureError(
                f"etcd did not give the leader key within {CONFIRM_TIMEOUT_S} s"
            ) from exc
        except Exception as exc:  # aetcd's errors, a cancelled read: etcd did not say
            raise InfrastructureError(
                f"cannot read the leader key: {type(exc).__name__}: {exc}"
            ) from exc

    async def _leader_epoch(self, client: aetcd.Client) -> int | None:
        got = await asyncio.wait_for(client.get(leader_key(self._city)), CONFIRM_TIMEOUT_S)
        return None if got is None else int(got.create_revision)

    async def _follow(self, client: aetcd.Client) -> None:
        check = asyncio.create_task(self._check_loop(client))
        try:
            async for seen in watch_leader(client, self._city):
                if seen.leader is not None:
                    await self._raise(seen.leader.epoch)
        finally:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)

    async def _raise(self, epoch: int) -> None:
        try:
            await asyncio.to_thread(self.gate.raise_epoch, epoch)
        except Exception:  # in memory the mark rose; the next command persists it first
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

    def stop(self, *, end_session: bool = False) -> None:
        """Stop following etcd, then the gate (`DownlinkGate.stop`: its broker session,
        and what it left unacknowledged, stay unless end_session)."""
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10.0)
        self.gate.stop(end_session=end_session)
