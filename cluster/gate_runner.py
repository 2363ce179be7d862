"""The downlink gate as the demo and the drills run it: next to the network
server, learning each new leader's epoch from etcd the moment it is elected
(not only from the new leader's first command), and putting the devices in
their declared fail-safe states when no leader could be confirmed for
`failover.failsafe_after_s` (see bridges/failsafe.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import aetcd

from bridges.downlink_gate import DownlinkGate, GateStats
from bridges.downlinks import downlinks
from bridges.failsafe import FailsafeWatch, failsafe_commands
from citypost.config import Config
from failover.election import leader_key, watch_leader
from failover.etcd_client import etcd_client
from fleet.population import build_city

CHECK_INTERVAL_S = 0.5

log = logging.getLogger(__name__)


class GateRunner:
    def __init__(self, config: Config) -> None:
        self.gate = DownlinkGate(config=config)
        self._city = config.city.name
        self._endpoints = list(config.etcd.endpoints)
        # The registry comes from the city model, as the posts' does.
        self._registry = build_city(config.city).registry
        self.failsafe = FailsafeWatch(config.failover.failsafe_after_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def start(self) -> GateRunner:
        self.gate.start()
        if self._endpoints:
            self._thread = threading.Thread(target=self._run, name="gate-leader", daemon=True)
            self._thread.start()
            self._started.wait(10.0)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self._follow())
            self._started.set()
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            # The leader watch is an async generator: finalize it on its own loop.
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _follow(self) -> None:
        client = etcd_client(self._endpoints)
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
