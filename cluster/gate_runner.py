"""The downlink gate as the demo and the drills run it: next to the network
server, learning each new leader's epoch from etcd the moment it is elected
(not only from the new leader's first command).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from bridges.downlink_gate import DownlinkGate, GateStats
from cluster.config import Config
from cluster.etcd_local import etcd_client
from failover.election import watch_leader

log = logging.getLogger(__name__)


class GateRunner:
    def __init__(self, config: Config) -> None:
        self.gate = DownlinkGate(config=config)
        self._city = config.city.name
        self._endpoints = list(config.etcd.endpoints)
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
            self._loop.close()

    async def _follow(self) -> None:
        client = etcd_client(self._endpoints)
        try:
            async for seen in watch_leader(client, self._city):
                if seen.leader is not None:
                    try:
                        await asyncio.to_thread(self.gate.raise_epoch, seen.leader.epoch)
                    except Exception:  # the gate still fences on commands' own epochs
                        log.exception("gate: cannot record epoch %d", seen.leader.epoch)
        finally:
            await client.close()

    def stats(self) -> GateStats:
        return self.gate.stats()

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10.0)
        self.gate.stop()
