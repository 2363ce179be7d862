"""The drill's collectors: the I/O that gathers `Evidence` while a drill runs.

- `LeaderTrail` follows the leader key in etcd (its own watch, straight to
  etcd, not through any post) and dates each change on the drill's clock.
- `CounterSampler` reads every post's uplink counters once a second
  (PostAdmin.GetStatus), for the telemetry gaps and the steady state.
- `read_ledger` reads the command ledger straight from etcd (the steady
  state's unfinished commands, and after the drill what is present); the executions come from the network server's log.

Both threads run their own loop or channel and stop on `stop()`; a failing
read is recorded as silence, never raised into the drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from chaos.evidence import CommandStatus, LeaderTerm, LedgerEntry
from chaos.trails import CounterSample, TermBook
from failover.control_state import LEDGER, ledger_key, list_all
from failover.election import watch_leader
from failover.etcd_client import etcd_client
from failover.etcd_control_state import EtcdControlState
from protos.citypost.v1 import admin_pb2, admin_pb2_grpc, command_pb2, control_state_pb2
from security.pki_store import Identity


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LeaderTrail:
    """The leader key's history while the drill runs (a `TermBook`)."""

    def __init__(self, endpoints: Sequence[str], city: str, *, tls: Identity | None = None) -> None:
        self._endpoints = list(endpoints)
        self._tls = tls
        self._city = city
        self.book = TermBook()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="leader-trail", daemon=True)

    def start(self, timeout_s: float = 10.0) -> LeaderTrail:
        self._thread.start()
        self._ready.wait(timeout_s)  # the first read; later ones may come after etcd returns
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10.0)

    def terms(self) -> tuple[LeaderTerm, ...]:
        with self._lock:
            return self.book.terms()

    def current(self) -> LeaderTerm | None:
        with self._lock:
            return self.book.current()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._follow())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        # The watch is an async generator: finalize it on this loop, not at interpreter exit.
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _follow(self) -> None:
        client = etcd_client(self._endpoints, timeout=2.0, tls=self._tls)
        try:
            async for seen in watch_leader(client, self._city, max_backoff_s=0.5):
                leader = seen.leader
                with self._lock:
                    if leader is None:
                        self.book.observe(now_ms(), None)
                    else:
                        self.book.observe(now_ms(), leader.epoch, leader.holder)
                self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                await client.close()


class CounterSampler:
    """Every post's GetStatus once per `interval_s`: uplink counters for the evidence,
    and the last answer of each post for the steady state."""

    def __init__(
        self,
        addresses: dict[str, str],
        interval_s: float = 1.0,
        *,
        channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    ) -> None:
        self._addresses = addresses  # post name -> address (the system's, kept current)
        self._channel_factory = channel_factory
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[CounterSample] = []
        self._latest: dict[str, tuple[int, admin_pb2.PostStatus]] = {}
        self._thread = threading.Thread(target=self._run, name="counter-sampler", daemon=True)

    def start(self) -> CounterSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def samples(self, since_ms: int = 0) -> list[CounterSample]:
        with self._lock:
            return [s for s in self._samples if s.at_ms >= since_ms]

    def latest(self, post: str, fresh_ms: int) -> admin_pb2.PostStatus | None:
        """The post's last answer, if it came within `fresh_ms`."""
        with self._lock:
            got = self._latest.get(post)
        if got is None or now_ms() - got[0] > fresh_ms:
            return None
        return got[1]

    def _run(self) -> None:
        channels: dict[str, grpc.Channel] = {}
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                calls = []
                for post, address in list(self._addresses.items()):
                    channel = channels.get(address)
                    if channel is None:
                        channel = channels[address] = self._channel_factory(address)
                    stub = admin_pb2_grpc.PostAdminStub(channel)
                    request = admin_pb2.GetStatusRequest()
                    calls.append((post, stub.GetStatus.future(request, timeout=2.0)))
                for post, future in calls:
                    try:
                        status = future.result()
                    except grpc.RpcError:
                        continue  # crashed, frozen or restarting: silence
                    at = now_ms()
                    with self._lock:
                        self._samples.append(CounterSample(at, post, dict(status.uplinks_by_class)))
                        self._latest[post] = (at, status)
                self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))
        finally:
            for channel in channels.values():
                channel.close()


# --- the control state, read after the drill ------------------------------------------------


def ledger_entry(record: control_state_pb2.CommandRecord) -> LedgerEntry:
    try:  # a status number this version does not know (a newer writer) is UNSPECIFIED
        status = CommandStatus(command_pb2.CommandStatus.Name(record.status))
    except ValueError:
        status = CommandStatus.UNSPECIFIED
    return LedgerEntry(
        command_id=record.command.command_id,
        status=status,
        issued_at_ms=record.created_at_ms,
        ttl_ms=record.deadline_ms - record.created_at_ms,
        finished_at_ms=record.finished_at_ms or None,
    )


def read_ledger(
    endpoints: Sequence[str], city: str, *, tls: Identity | None = None
) -> list[LedgerEntry]:
    """Every command ledger entry, read straight from etcd (its own client and loop)."""

    async def read() -> list[LedgerEntry]:
        client = etcd_client(endpoints, timeout=5.0, tls=tls)
        try:
            state = EtcdControlState(client, city)
            entries = await list_all(state, LEDGER, control_state_pb2.CommandRecord)
            return [ledger_entry(e.value) for e in entries]
        finally:
            await client.close()

    return asyncio.run(read())


def present_keys(entries: Sequence[LedgerEntry]) -> frozenset[str]:
    """The control-state keys of these ledger entries (what "present afterwards" checks)."""
    return frozenset(ledger_key(e.command_id) for e in entries)


def live_during(entries: Sequence[LedgerEntry], from_ms: int) -> list[LedgerEntry]:
    """The entries a drill that watched from `from_ms` answers for: not finished before."""
    return [
        e
        for e in entries
        if e.issued_at_ms >= from_ms or e.finished_at_ms is None or e.finished_at_ms >= from_ms
    ]
