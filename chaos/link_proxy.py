"""A TCP proxy between a post and etcd that the drills cut (partition) and slow (degrade).

The posts take the proxy's `endpoints` as their etcd endpoints; the drill owns the
proxy and calls `partition()`, `degrade(latency_ms, loss)` and `heal()` from any
thread. The proxy forwards bytes (etcd's gRPC over HTTP/2, plain TCP) and never
parses them. It runs on its own thread with its own asyncio loop.

Partition: packets are dropped both ways, so nothing is closed and nothing is
lost. The proxy stops reading both sockets of every connection (the kernel buffers
fill, the senders block as on a dead link) and writes nothing it already holds.
Connections opened during the partition are accepted (the kernel does that anyway)
but get no answer: their upstream connection is made only after the heal. The
clients' own timeouts fire, as they would on a real cut. On `heal()` everything
held is delivered in order, as TCP retransmission delivers it after a short outage.
(A connection the client gave up on meanwhile gets its close forwarded then too,
and a request that timed out during the cut still reaches etcd after the heal and
may be applied, as on a real network: fencing, not the proxy, must make it harmless.)
Closing the connections instead would be a different fault, a reset, that gRPC
notices at once and reconnects from.

Degrade: every chunk read in either direction is delivered `latency_ms` later (one
way), in order per direction. Loss on TCP shows up as retransmission delay, not as
missing bytes: each chunk, with probability `loss`, waits an extra retransmission
timeout (200 ms, the Linux minimum RTO, doubling while the coin keeps failing,
capped). A chunk is what one read returned, not a packet, and a late chunk holds up
the ones behind it (head-of-line blocking, as in TCP).

The decisions (link settings, the delay of a chunk, the in-order schedule) are the
pure part at the top of this module; `LinkProxy` only applies them to sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import cast

from citypost.errors import (
    CitypostError,
    FailedPreconditionError,
    InfrastructureError,
    InvalidArgumentError,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
RTO_MIN_MS = 200  # Linux TCP_RTO_MIN
RTO_MAX_MS = 120_000  # Linux TCP_RTO_MAX
MAX_RETRANSMISSIONS = 15  # Linux tcp_retries2: TCP would give up there; we deliver
_CONTROL_TIMEOUT_S = 10.0
# Per direction of one connection: stop reading the source past HIGH bytes held, resume
# at LOW (a slow link must push back on the sender, not grow our memory).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


# --- the pure part -------------------------------------------------------------------


class LinkState(StrEnum):
    OPEN = "open"  # plain forwarding
    PARTITIONED = "partitioned"  # nothing forwarded either way, everything held
    DEGRADED = "degraded"  # latency and loss added


@dataclass(frozen=True)
class LinkSettings:
    """What the link does now. Each control call replaces the whole settings: `heal()`
    after a partition or a degradation is OPEN, `degrade()` during a partition ends it."""

    state: LinkState = LinkState.OPEN
    latency_ms: int = 0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise InvalidArgumentError(f"latency_ms must be >= 0, got {self.latency_ms}")
        # `not (a <= x < b)` also refuses NaN. Loss 1 would never deliver: use partition().
        if not 0.0 <= self.loss < 1.0:
            raise InvalidArgumentError(f"loss must be in [0, 1), got {self.loss}")
        if self.state is not LinkState.DEGRADED and (self.latency_ms or self.loss):
            raise InvalidArgumentError(f"a {self.state.value} link has no latency or loss")

    @classmethod
    def open(cls) -> LinkSettings:
        return cls()

    @classmethod
    def partitioned(cls) -> LinkSettings:
        return cls(state=LinkState.PARTITIONED)

    @classmethod
    def degraded(cls, latency_ms: int, loss: float = 0.0) -> LinkSettings:
        return cls(state=LinkState.DEGRADED, latency_ms=latency_ms, loss=loss)

    @property
    def forwarding(self) -> bool:
        return self.state is not LinkState.PARTITIONED

    def chunk_delay_ms(self, rng: random.Random) -> int:
        """How much later than its arrival a chunk read now is delivered."""
        if self.state is not LinkState.DEGRADED:
            return 0
        return self.latency_ms + retransmission_delay_ms(self.loss, rng)


def retransmission_delay_ms(
    loss: float,
    rng: random.Random,
    *,
    rto_min_ms: int = RTO_MIN_MS,
    rto_max_ms: int = RTO_MAX_MS,
    max_retransmissions: int = MAX_RETRANSMISSIONS,
) -> int:
    """The extra delay of one chunk on a link that loses `loss` of its packets: each lost
    transmission costs one retransmission timeout, which doubles up to `rto_max_ms`."""
    if loss <= 0.0:
        return 0
    delay = 0
    rto = rto_min_ms
    for _ in range(max_retransmissions):
        if rng.random() >= loss:  # this transmission got through
            break
        delay += rto
        rto = min(rto * 2, rto_max_ms)
    return delay


class InOrderSchedule:
    """Due times of one direction's chunks: a chunk is due `delay` after its arrival but
    never before the chunk ahead of it, so a later chunk never overtakes an earlier one."""

    def __init__(self) -> None:
        self._last_due = -math.inf

    def due(self, now: float, delay_s: float) -> float:
        due = max(now + delay_s, self._last_due)
        self._last_due = due
        return due


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """("host", port) of "host:port" (an IPv6 host in brackets: "[::1]:2379")."""
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"upstreams: {endpoint!r} is not host:port")
    return host, int(port)


@dataclass(frozen=True)
class LinkStats:
    connections_open: int
    connections_total: int
    bytes_to_upstream: int  # forwarded from the posts to etcd
    bytes_from_upstream: int  # forwarded from etcd to the posts
    chunks_delayed: int  # chunks given a delay by a degraded link


# --- the I/O part --------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the post's, or etcd's)."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.Event()  # connected
        self.writable = asyncio.Event()  # its write buffer is below asyncio's high water
        self.writable.set()
        self.reading_paused = False
        self.backlogged = False  # what it sent us waits past _HIGH_WATER
        self.eof = False  # it sent EOF or its connection was lost
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set()
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.received(self, data)

    def eof_received(self) -> bool:
        self.conn.received(self, None)
        return True  # keep our half open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable.set()  # wake a writer waiting on it; it finds the side lost
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class _Pipe:
    """One direction of one connection: chunks (None: EOF) in arrival order with due times."""

    def __init__(self, source: _Side, target: _Side, *, to_upstream: bool) -> None:
        self.source = source
        self.target = target
        self.to_upstream = to_upstream
        self.items: deque[tuple[float, bytes | None]] = deque()
        self.queued_bytes = 0
        self.arrived = asyncio.Event()
        self.schedule = InOrderSchedule()
        self.eof_queued = False
        self.done = False  # EOF delivered


class _Connection:
    def __init__(self, proxy: LinkProxy, upstream: tuple[str, int]) -> None:
        self.proxy = proxy
        self.upstream_address = upstream
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.up = _Pipe(self.client, self.upstream, to_upstream=True)
        self.down = _Pipe(self.upstream, self.client, to_upstream=False)
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.up if side is self.client else self.down

    # Protocol callbacks.

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self.proxy._register(self)
            self.tasks = [
                asyncio.create_task(self._connect_upstream()),
                asyncio.create_task(self._deliver(self.up)),
                asyncio.create_task(self._deliver(self.down)),
            ]
        self.apply_reading(side)

    def received(self, side: _Side, data: bytes | None) -> None:
        pipe = self.pipe_from(side)
        if pipe.eof_queued:
            return
        loop = asyncio.get_running_loop()
        # An EOF (a FIN) crosses the link like data: delayed alike, after the data ahead.
        due = pipe.schedule.due(loop.time(), self.proxy._chunk_delay_ms() / 1000)
        if data is None:
            side.eof = True
            pipe.eof_queued = True
        else:
            pipe.queued_bytes += len(data)
        pipe.items.append((due, data))
        pipe.arrived.set()
        self.apply_reading(side)

    def side_lost(self, side: _Side) -> None:
        if not self.pipe_from(side).eof_queued:
            self.received(side, None)
        if side is self.client and not self.upstream.ready.is_set():
            self.close()  # the post left before etcd was reached: nothing to tell etcd
        self._maybe_finish()

    # Tasks.

    async def _connect_upstream(self) -> None:
        # A partition drops the handshake too: reach etcd only once the link forwards.
        await self.proxy._forwarding_event().wait()
        host, port = self.upstream_address
        try:
            await asyncio.get_running_loop().create_connection(lambda: self.upstream, host, port)
        except OSError as exc:
            log.warning("link proxy %s: cannot reach %s:%d: %s", self.proxy.name, host, port, exc)
            self.close()

    async def _deliver(self, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        forwarding = self.proxy._forwarding_event()
        target = pipe.target
        while True:
            while not pipe.items:
                pipe.arrived.clear()
                await pipe.arrived.wait()
            due, data = pipe.items[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            # Check every condition with no await between the last check and the write,
            # so a partition applied meanwhile holds this chunk.
            while True:
                if not forwarding.is_set():
                    await forwarding.wait()
                elif not target.ready.is_set():
                    await target.ready.wait()
                elif not target.writable.is_set():
                    await target.writable.wait()
                else:
                    break
            pipe.items.popleft()
            if target.lost or target.transport is None or target.transport.is_closing():
                # Nobody to hand it to; the other direction may still carry the lost
                # side's last bytes, so finish once that one is delivered.
                pipe.items.clear()
                pipe.queued_bytes = 0
                pipe.done = True
                self._maybe_finish()
                return
            if data is None:
                if target.transport.can_write_eof():
                    target.transport.write_eof()
                pipe.done = True
                self._maybe_finish()
                return
            pipe.queued_bytes -= len(data)
            target.transport.write(data)
            self.proxy._count_forwarded(len(data), to_upstream=pipe.to_upstream)
            self.apply_reading(pipe.source)

    # Decisions on the sockets.

    def apply_reading(self, side: _Side) -> None:
        """Read from `side` unless the link is partitioned or its data backs up."""
        transport = side.transport
        if transport is None or transport.is_closing() or side.eof:
            return  # after EOF a resumed transport would report the EOF again
        pipe = self.pipe_from(side)
        if pipe.queued_bytes > _HIGH_WATER:
            side.backlogged = True
        elif pipe.queued_bytes <= _LOW_WATER:
            side.backlogged = False
        pause = side.backlogged or not self.proxy._forwarding_event().is_set()
        if pause and not side.reading_paused:
            transport.pause_reading()
        elif not pause and side.reading_paused:
            transport.resume_reading()
        side.reading_paused = pause

    def _maybe_finish(self) -> None:
        both_done = self.up.done and self.down.done
        # A lost side's last bytes and EOF reached the other side: nothing more can flow.
        lost_and_told = (self.client.lost and self.up.done) or (
            self.upstream.lost and self.down.done
        )
        if both_done or lost_and_told:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()  # flushes what was written
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy._unregister(self)


class LinkProxy:
    """One loopback listener per etcd endpoint, forwarding to it through a link the
    drill controls. `start()` binds ephemeral ports; `endpoints` lists them in the
    order of `upstreams`. Control methods are thread-safe and take effect before
    they return."""

    def __init__(self, upstreams: Sequence[str], *, name: str = "link", seed: int | None = None):
        if isinstance(upstreams, str) or not upstreams:
            raise InvalidArgumentError("upstreams: a list of at least one host:port is needed")
        self.name = name
        self._upstreams = [parse_endpoint(u) for u in upstreams]
        self._rng = random.Random(seed)  # used on the loop thread only
        self._lock = threading.Lock()
        self._settings = LinkSettings.open()
        self._connections_total = 0
        self._bytes_to_upstream = 0
        self._bytes_from_upstream = 0
        self._chunks_delayed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._endpoints: list[str] = []
        # Loop-thread state, created by _open.
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._forwarding: asyncio.Event | None = None

    # Life cycle.

    def start(self) -> LinkProxy:
        with self._lock:
            if self._thread is not None or self._stopped:
                raise FailedPreconditionError(f"link proxy {self.name} was already started")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run, args=(loop,), name=f"link-proxy-{self.name}", daemon=True
            )
            self._loop, self._thread = loop, thread
        thread.start()
        try:
            endpoints = asyncio.run_coroutine_threadsafe(self._open(), loop).result(
                _CONTROL_TIMEOUT_S
            )
        except BaseException as exc:
            self.stop()
            if isinstance(exc, CitypostError):
                raise
            raise InfrastructureError(f"link proxy {self.name}: cannot listen: {exc}") from exc
        with self._lock:
            self._endpoints = endpoints
        log.info("link proxy %s: %s -> %s", self.name, endpoints, self._upstreams)
        return self

    def stop(self) -> None:
        """Close the listeners and every connection; safe twice and after a failed start."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            raise FailedPreconditionError("LinkProxy.stop() cannot run on the proxy's own loop")
        if thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(_CONTROL_TIMEOUT_S)
            except Exception:  # stop the loop anyway
                log.exception("link proxy %s: closing failed", self.name)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CONTROL_TIMEOUT_S)
        if thread.is_alive():
            raise InfrastructureError(f"link proxy {self.name}: its thread did not stop")

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[str]:
        """ "127.0.0.1:PORT" of each listener, in the order of the upstreams."""
        with self._lock:
            if not self._endpoints:
                raise FailedPreconditionError(f"link proxy {self.name} is not started")
            return list(self._endpoints)

    # Control.

    def partition(self) -> None:
        self._set(LinkSettings.partitioned())

    def degrade(self, latency_ms: int, loss: float) -> None:
        self._set(LinkSettings.degraded(latency_ms, loss))

    def heal(self) -> None:
        self._set(LinkSettings.open())

    @property
    def state(self) -> LinkState:
        return self._settings.state

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    def stats(self) -> LinkStats:
        with self._lock:
            return LinkStats(
                connections_open=len(self._connections),
                connections_total=self._connections_total,
                bytes_to_upstream=self._bytes_to_upstream,
                bytes_from_upstream=self._bytes_from_upstream,
                chunks_delayed=self._chunks_delayed,
            )

    def _set(self, settings: LinkSettings) -> None:
        with self._lock:
            self._settings = settings
            loop, thread, stopped = self._loop, self._thread, self._stopped
        if loop is None or thread is None or stopped or not thread.is_alive():
            return  # applied by _open when it starts
        if thread is threading.current_thread():
            self._apply()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._apply_async(), loop).result(_CONTROL_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            if not self._stopped:  # a stop() that raced us explains it; nothing else does
                raise

    # On the loop thread.

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _open(self) -> list[str]:
        self._forwarding = asyncio.Event()
        self._apply()
        loop = asyncio.get_running_loop()
        endpoints = []
        for upstream in self._upstreams:
            server = await loop.create_server(self._accept(upstream), LOOPBACK, 0)
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            endpoints.append(f"{LOOPBACK}:{port}")
        return endpoints

    def _accept(self, upstream: tuple[str, int]) -> Callable[[], asyncio.Protocol]:
        def protocol() -> asyncio.Protocol:
            return _Connection(self, upstream).client

        return protocol

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.close(abort=True)
        await asyncio.gather(*(t for c in connections for t in c.tasks), return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _apply_async(self) -> None:
        self._apply()

    def _apply(self) -> None:
        forwarding = self._forwarding
        if forwarding is None:
            return  # not open yet: _open applies the settings
        if self._settings.forwarding:
            forwarding.set()
        else:
            forwarding.clear()
        for conn in list(self._connections):
            conn.apply_reading(conn.client)
            conn.apply_reading(conn.upstream)

    def _forwarding_event(self) -> asyncio.Event:
        if self._forwarding is None:
            raise FailedPreconditionError(f"link proxy {self.name} is not started")
        return self._forwarding

    def _chunk_delay_ms(self) -> int:
        delay = self._settings.chunk_delay_ms(self._rng)
        if delay > 0:
            with self._lock:
                self._chunks_delayed += 1
        return delay

    def _count_forwarded(self, n: int, *, to_upstream: bool) -> None:
        with self._lock:
            if to_upstream:
                self._bytes_to_upstream += n
            else:
                self._bytes_from_upstream += n

    def _register(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.add(conn)
            self._connections_total += 1

    def _unregister(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
