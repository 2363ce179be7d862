"""Leader election of one post on etcd (aetcd, asyncio): the I/O shell around `leadership.decide`.

One `Election` per post. From `start()` on it holds an etcd lease of
`failover.lease_ttl_s` and keeps it alive every `keepalive_interval_s`, also
while standing by, so a campaign never waits for a grant. The leader key
`/citypost/<city>/leader` holds a `LeaderValue` (JSON: name, gRPC address),
is put under my lease by one transaction (`version == 0` → put), and its
`create_revision` is the epoch.

Three background tasks:
- keepalive: sends a keepalive every interval, without waiting for the last
  one's answer, records when the newest answered request was SENT (the
  self-fencing deadline counts from there), grants a new lease when etcd says
  the old one is gone;
- leader watch (`watch_leader`): reads the key, watches from the next revision,
  and on a dead watch (its etcd member died) re-reads and re-watches with
  tenacity, so no change is missed;
- role loop: re-decides on every change AND on a timer (at the lease deadline at
  the latest), because a leader that hears nothing from etcd must still demote
  itself; campaigns when the key is absent (unless `auto_campaign=False`).

Role changes reach the post through `role_changes()` (an async iterator, one
queue per caller). Before each command the post asks `may_command()` /
`command_epoch()`, which decide on the monotonic clock at that instant rather
than trusting the last published role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar

import aetcd
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from citypost.config import FailoverConfig
from citypost.errors import (
    ConfigError,
    FailedPreconditionError,
    InfrastructureError,
    InvalidArgumentError,
    NotLeaderError,
)
from failover.control_state import LEADER_KEY, city_root
from failover.etcd_client import etcd_client
from failover.leadership import (
    Action,
    Decision,
    EtcdView,
    LeaderRecord,
    LeaderValue,
    LeaseView,
    decide,
)
from security.pki_store import Identity

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors of a call that may succeed against another member or a little later.
_TRANSIENT = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, TimeoutError)
# Value shown when the leader key holds something that is not a LeaderValue.
_UNREADABLE = "(unreadable)"


async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
    # that arrives as the awaited call completes, and a loop would then never stop.
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for `event` at most `timeout_s`; a timeout is a normal outcome."""
    with contextlib.suppress(TimeoutError):
        await _within(event.wait(), timeout_s)


def leader_key(city: str) -> bytes:
    """The etcd key of a city's leader: /citypost/<city>/leader."""
    return (city_root(city) + LEADER_KEY).encode()


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


@dataclass(frozen=True)
class LeaderSeen:
    """The leader key at an etcd revision (leader None: the key is absent)."""

    leader: LeaderRecord | None
    revision: int


@dataclass(frozen=True)
class CampaignResult:
    """The outcome of one campaign: whether I lead, and who holds the key now."""

    won: bool
    leader: LeaderRecord

    @property
    def epoch(self) -> int:
        return self.leader.epoch


@dataclass(frozen=True)
class RoleChange:
    """A change of my role, or of who leads; `at` is the monotonic instant it was decided."""

    role: Role
    action: Action
    leader: LeaderValue | None
    epoch: int | None
    at: float


@dataclass(frozen=True)
class ElectionStatus:
    """What `citypost failover status` shows for one post.

    `lease_deadline` is the monotonic instant at which this post stops trusting
    its lease (safety margin included); `lease_remaining_s` is the time left
    until then (0 when past, None without an answered lease).
    """

    name: str
    role: Role
    action: Action
    leader: LeaderValue | None
    epoch: int | None
    lease_id: int | None
    lease_deadline: float | None
    lease_remaining_s: float | None


def _record_from_kv(kv: Any) -> LeaderRecord:
    try:
        value = LeaderValue.from_json(kv.value)
    except InvalidArgumentError:
        # Someone else's bytes: the key is still held, so we must not campaign.
        log.error("leader key holds %r, not a leader value; treating it as held", kv.value)
        value = LeaderValue(name=_UNREADABLE, address="")
    return LeaderRecord(value=value, epoch=int(kv.create_revision), lease_id=int(kv.lease))


async def _read_leader(client: aetcd.Client, key: bytes) -> LeaderSeen:
    # A range read of exactly [key, key\0): unlike get(), it carries the revision when absent.
    found = await client.get_range(key, key + b"\0")
    leader = _record_from_kv(found[0]) if len(found) else None
    return LeaderSeen(leader=leader, revision=int(found.header.revision))


async def _open_watch(client: aetcd.Client, key: bytes) -> tuple[LeaderSeen, Any]:
    seen = await _read_leader(client, key)
    # From the revision after the read: every later change arrives, none twice.
    watch = await client.watch(key, start_revision=seen.revision + 1)
    return seen, watch


async def watch_leader(
    client: aetcd.Client, city: str, *, max_backoff_s: float = 1.0
) -> AsyncIterator[LeaderSeen]:
    """The leader key now, then each change, forever; survives the loss of etcd members.

    An aetcd watch dies with the member it streams from: the key is then read
    again and a new watch opened from the revision after that read (tenacity,
    exponential backoff up to `max_backoff_s`). A change that happened during
    the gap shows up in the read, so the caller sees the latest state; only
    states that came and went within the gap are skipped. Needs no lease:
    the downlink gate and clients can follow the leader with it too.
    """
    key = leader_key(city)
    last: LeaderRecord | None = None
    first = True
    while True:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((aetcd.ClientError, TimeoutError)),
            wait=wait_exponential(multiplier=0.05, max=max_backoff_s),
            before_sleep=before_sleep_log(log, logging.INFO),
            reraise=True,
        )
        opened: tuple[LeaderSeen, Any] = await retrying(_open_watch, client, key)
        seen, watch = opened
        try:
            if first or seen.leader != last:
                first = False
                last = seen.leader
                yield seen
            async for event in watch:
                leader = _record_from_kv(event.kv) if event.kind == "PUT" else None
                last = leader
                yield LeaderSeen(leader=leader, revision=int(event.kv.mod_revision))
        except aetcd.ClientError as exc:
            log.info("leader watch on %s lost (%s); reading the key again", key.decode(), exc)
        finally:
            with contextlib.suppress(Exception):  # the stream may be dead already
                await _within(watch.cancel(), 1.0)


class Election:
    """Leader election of one post (see the module doc). Use `async with`, or `start()`/`close()`.

    Public API:
    - `await start()`: grant the lease (ConfigError if etcd grants another TTL),
      read the leader key, start the background tasks;
    - `await campaign() -> CampaignResult`: one transaction, key absent → mine;
    - `observe()`: async iterator of the leader record (None: nobody), now and on change;
    - `role_changes()`: async iterator of `RoleChange`, now and on change;
    - `may_command()`, `command_epoch()`: the self-fence, decided at call time;
    - `await resign(hold_off_s=None)`: revoke my lease; do not campaign for
      `hold_off_s` (default: the lease TTL) so the other post takes over;
    - `status() -> ElectionStatus`;
    - `await close(resign=True)`.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        city: str,
        name: str,
        address: str,
        config: FailoverConfig,
        auto_campaign: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rpc_timeout_s: float = 5.0,
        tls: Identity | None = None,
    ) -> None:
        self.name = name
        self.city = city
        self.config = config
        self.value = LeaderValue(name=name, address=address)
        self.auto_campaign = auto_campaign
        self._key = leader_key(city)
        self._clock = clock
        self._client = etcd_client(endpoints, timeout=rpc_timeout_s, tls=tls)
        self._ttl = int(config.lease_ttl_s)
        if self._ttl != config.lease_ttl_s or self._ttl < 1:
            raise ConfigError(
                f"failover.lease_ttl_s ({config.lease_ttl_s}) must be a whole number of "
                "seconds >= 1: etcd grants leases in whole seconds"
            )
        self._lease: LeaseView | None = None
        self._leader: LeaderRecord | None = None
        self._seen_revision = -1
        self._first_seen = asyncio.Event()
        self._wake = asyncio.Event()  # something changed: the role loop re-decides now
        self._kick = asyncio.Event()  # the keepalive loop acts now (lease lost or revoked)
        self._keepalives_paused = False
        self._hold_off_until = float("-inf")
        self._published: tuple[Role, LeaderValue | None, int | None] | None = None
        self._last_change: RoleChange | None = None
        self._role_queues: list[asyncio.Queue[RoleChange]] = []
        self._leader_queues: list[asyncio.Queue[LeaderRecord | None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self, *, first_read_timeout_s: float = 10.0) -> Election:
        """Grant the lease and start keepalive, watch and role loop; returns once the key was read."""
        try:
            self._lease = await self._grant(strict=True)
        except ConfigError:
            await self._client.close()
            raise
        except (aetcd.ClientError, TimeoutError) as exc:
            await self._client.close()
            raise InfrastructureError(f"etcd: cannot grant a lease: {exc}") from exc
        self._tasks = [
            asyncio.create_task(self._keepalive_loop(), name=f"election-keepalive-{self.name}"),
            asyncio.create_task(self._watch_loop(), name=f"election-watch-{self.name}"),
        ]
        try:
            await _within(self._first_seen.wait(), first_read_timeout_s)
        except TimeoutError:
            await self.close(resign=True)
            raise InfrastructureError(
                f"etcd: the leader key was not readable within {first_read_timeout_s} s"
            ) from None
        self._publish(self._decide(self._clock()))
        self._tasks.append(
            asyncio.create_task(self._role_loop(), name=f"election-role-{self.name}")
        )
        return self

    async def close(self, *, resign: bool = True) -> None:
        """Stop the tasks; by default revoke the lease so another post leads at once."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: the loops also stop on `_closed`, should a cancellation get lost.
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.lease_ttl_s * 2)
            for task in pending:
                log.error("post %s: task %s did not stop", self.name, task.get_name())
        if resign:
            with contextlib.suppress(aetcd.ClientError, TimeoutError):
                await self._revoke()
        self._lease = None
        self._publish(self._decide(self._clock()))
        await self._client.close()

    async def __aenter__(self) -> Election:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the decision, read at call time ----------------------------------------

    def view(self) -> EtcdView:
        return EtcdView(
            me=self.name,
            leader=self._leader,
            lease=self._lease,
            safety_margin_s=self.config.safety_margin_s,
        )

    def may_command(self) -> bool:
        """True only while I hold the leader key and my lease cannot have expired."""
        return self._decide(self._clock()).may_command

    def command_epoch(self) -> int:
        """The epoch to stamp on a command now; FailedPreconditionError if I may not command."""
        decision = self._decide(self._clock())
        if not decision.may_command or decision.epoch is None:
            leader = decision.leader
            if leader is not None and leader.name == self.name:
                # Fenced (my lease may have expired) while the key still names me: pointing
                # the caller back here would keep it from the post that takes over.
                leader = None
            where = f"{leader.name} leads at {leader.address}" if leader else "nobody leads now"
            raise NotLeaderError(
                f"post {self.name} does not lead ({decision.action.value}): {where}; "
                "send writes (and Resign) to the leader",
                leader_name=leader.name if leader else "",
                leader_address=leader.address if leader else "",
            )
        return decision.epoch

    def write_window_s(self) -> float:
        """Seconds until my lease may have expired and I fence myself (0: not leading)."""
        now = self._clock()
        decision = self._decide(now)
        if not decision.may_command or decision.deadline is None:
            return 0.0
        return max(0.0, decision.deadline - now)

    def status(self) -> ElectionStatus:
        now = self._clock()
        decision = self._decide(now)
        deadline = self.view().lease_deadline()
        return ElectionStatus(
            name=self.name,
            role=Role.LEADER if decision.may_command else Role.STANDBY,
            action=decision.action,
            leader=decision.leader,
            epoch=decision.epoch,
            lease_id=self._lease.lease_id if self._lease else None,
            lease_deadline=deadline,
            lease_remaining_s=None if deadline is None else max(0.0, deadline - now),
        )

    # -- campaign, resign ------------------------------------------------------

    async def campaign(self) -> CampaignResult:
        """One transaction: if the leader key is absent, put my value under my lease.

        Transient errors (a member dying) are retried for up to one lease TTL;
        a retry after a lost answer finds my own key and reports it won, since
        "won" means the key holds my name under my current lease.
        """
        lease = self._lease
        if lease is None:
            raise FailedPreconditionError(f"post {self.name} has no lease to campaign with")
        retrying = self._retrying()
        try:
            answer: tuple[LeaderRecord, int] = await retrying(self._campaign_txn, lease.lease_id)
            record, revision = answer
        except aetcd.ClientError as exc:
            if "lease not found" in str(exc):
                self._lease_lost(lease.lease_id)
                raise FailedPreconditionError(
                    f"post {self.name}: lease {lease.lease_id:x} expired before the campaign"
                ) from exc
            raise
        self._apply(LeaderSeen(leader=record, revision=revision))
        won = record.holder == self.name and record.lease_id == lease.lease_id
        if won:
            log.info("post %s leads with epoch %d", self.name, record.epoch)
        return CampaignResult(won=won, leader=record)

    async def _campaign_txn(self, lease_id: int) -> tuple[LeaderRecord, int]:
        tx = self._client.transactions
        _, responses = await self._client.transaction(
            compare=[tx.version(self._key) == 0],
            success=[tx.put(self._key, self.value.to_json(), lease=lease_id), tx.get(self._key)],
            failure=[tx.get(self._key)],
        )
        # The get is the last response of either branch: [(value, Get)], Get with the txn header.
        got = responses[-1]
        if not got:
            raise InfrastructureError("etcd: the leader key vanished within its own transaction")
        kv = got[0][1]
        return _record_from_kv(kv), int(kv.header.revision)

    async def resign(self, *, hold_off_s: float | None = None) -> None:
        """Stop leading now: revoke my lease (the key goes with it) and hold off campaigning.

        I stop commanding before the revoke is sent. The other post's campaign
        then succeeds within milliseconds; I campaign again only after
        `hold_off_s` (default: the lease TTL) if nobody took the key.
        """
        hold = self.config.lease_ttl_s if hold_off_s is None else hold_off_s
        self._hold_off_until = self._clock() + hold
        try:
            await self._revoke()
        finally:
            self._kick.set()  # a fresh lease for standing by
            self._wake.set()

    def _retrying(self) -> AsyncRetrying:
        """Transient etcd failures retried for at most a lease TTL."""
        return AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_delay(self.config.lease_ttl_s),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        )

    async def _revoke(self) -> None:
        lease, self._lease = self._lease, None
        self._wake.set()
        if lease is None:
            return
        retrying = self._retrying()
        try:
            await retrying(self._client.revoke_lease, lease.lease_id)
        except aetcd.ClientError as exc:
            if "lease not found" not in str(exc):
                raise  # already gone is what we wanted

    # -- observing -------------------------------------------------------------

    async def observe(self) -> AsyncIterator[LeaderRecord | None]:
        """The leader record now (None: nobody leads), then every change, until closed."""
        queue: asyncio.Queue[LeaderRecord | None] = asyncio.Queue()
        self._leader_queues.append(queue)
        try:
            yield self._leader
            while True:
                yield await queue.get()
        finally:
            self._leader_queues.remove(queue)

    async def role_changes(self) -> AsyncIterator[RoleChange]:
        """My role now, then every change of role, leader or epoch (one queue per caller)."""
        queue: asyncio.Queue[RoleChange] = asyncio.Queue()
        self._role_queues.append(queue)
        try:
            # The last published change, so the stream never repeats one the loop
            # publishes next; a newer decision follows within a loop turn.
            current = self._last_change
            if current is None:
                current = self._change(self._decide(self._clock()), self._clock())
            yield current
            while True:
                yield await queue.get()
        finally:
            self._role_queues.remove(queue)

    # -- fault injection (chaos drills, tests) ------------------------------------

    def pause_keepalives(self) -> None:
        """Stop sending keepalives, as a frozen process would; the role loop keeps deciding."""
        self._keepalives_paused = True

    def resume_keepalives(self) -> None:
        self._keepalives_paused = False
        self._kick.set()

    # -- internals -------------------------------------------------------------

    def _decide(self, now: float) -> Decision:
        return decide(self.view(), now)

    async def _grant(self, *, strict: bool) -> LeaseView:
        sent = self._clock()
        lease = await _within(self._client.lease(self._ttl), self.config.lease_ttl_s * 5)
        granted = int(lease.ttl)
        if granted != self._ttl:
            message = (
                f"etcd granted a {granted} s lease for the {self._ttl} s asked: set "
                f"failover.lease_ttl_s >= {granted} (TTL >= what etcd grants; etcd's minimum "
                "is 1.5 x its election timeout, rounded up to whole seconds) or run etcd "
                "with a shorter election timeout"
            )
            if strict:
                with contextlib.suppress(aetcd.ClientError, TimeoutError):
                    await self._client.revoke_lease(lease.id)
                raise ConfigError(message)
            log.error("%s; keeping it, the deadline uses the granted TTL", message)
        log.debug("post %s: lease %x granted (%d s)", self.name, lease.id, granted)
        return LeaseView(
            lease_id=int(lease.id), granted_ttl_s=float(granted), answered_sent_at=sent
        )

    def _lease_lost(self, lease_id: int) -> None:
        if self._lease is not None and self._lease.lease_id == lease_id:
            log.warning("post %s: lease %x is gone in etcd", self.name, lease_id)
            self._lease = None
            self._kick.set()
            self._wake.set()

    async def _keepalive_once(self, lease: LeaseView) -> None:
        sent = self._clock()
        try:
            # An answer later than the TTL is useless: its deadline has passed already.
            reply = await _within(
                self._client.refresh_lease(lease.lease_id), self.config.lease_ttl_s
            )
        except Exception as exc:  # the loop must outlive any etcd trouble
            log.warning("post %s: keepalive of lease %x failed: %r", self.name, lease.lease_id, exc)
            return
        current = self._lease
        if current is None or current.lease_id != lease.lease_id:
            return  # revoked or replaced while the request was out
        if reply is None or reply.TTL <= 0:
            self._lease_lost(lease.lease_id)
            return
        previous = current.answered_sent_at
        self._lease = LeaseView(
            lease_id=lease.lease_id,
            granted_ttl_s=float(reply.TTL),
            answered_sent_at=sent if previous is None else max(previous, sent),
        )
        self._wake.set()

    async def _keepalive_loop(self) -> None:
        # Keepalives go out every interval without waiting for each other's answers: on a
        # slow link one waiting for the last would renew once per round trip, and a round
        # trip near the lease's margin would fence the leader every cycle. Answers may
        # come back in any order; the newest send answered sets the deadline.
        interval = self.config.keepalive_interval_s
        most_in_flight = max(1, math.ceil(self.config.lease_ttl_s / interval))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._closed:
                started = self._clock()
                self._kick.clear()
                if not self._keepalives_paused:
                    lease = self._lease
                    if lease is None:
                        try:
                            self._lease = await self._grant(strict=False)
                            self._wake.set()
                        except Exception as exc:  # the loop must outlive any etcd trouble
                            log.warning("post %s: lease grant failed: %r", self.name, exc)
                    elif len(in_flight) < most_in_flight:
                        task = asyncio.create_task(self._keepalive_once(lease))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                if self._kick.is_set():
                    continue
                await _wait_event(self._kick, max(0.0, started + interval - self._clock()))
        finally:
            for task in in_flight:
                task.cancel()

    def _apply(self, seen: LeaderSeen) -> None:
        if seen.revision < self._seen_revision:
            return  # older than what we know (a campaign answer overtaken by the watch)
        self._seen_revision = seen.revision
        changed = seen.leader != self._leader
        self._leader = seen.leader
        if seen.leader is not None and seen.leader.holder != self.name:
            # Someone took over after my resign: the hold-off has done its job, and
            # a switchback must not wait it out.
            self._hold_off_until = float("-inf")
        self._first_seen.set()
        if changed:
            for queue in self._leader_queues:
                queue.put_nowait(seen.leader)
            self._wake.set()

    async def _watch_loop(self) -> None:
        while not self._closed:
            try:
                async for seen in watch_leader(self._client, self.city):
                    if self._closed:
                        return
                    self._apply(seen)
            except Exception as exc:  # the loop must outlive any etcd trouble
                log.warning("post %s: leader watch failed: %r", self.name, exc)
            await asyncio.sleep(self.config.keepalive_interval_s)

    def _change(self, decision: Decision, now: float) -> RoleChange:
        role = Role.LEADER if decision.may_command else Role.STANDBY
        return RoleChange(role, decision.action, decision.leader, decision.epoch, now)

    def _publish(self, decision: Decision) -> None:
        change = self._change(decision, self._clock())
        key = (change.role, change.leader, change.epoch)
        if key == self._published:
            return
        self._published = key
        self._last_change = change
        log.info(
            "post %s: %s (%s), leader %s, epoch %s",
            self.name,
            change.role.value,
            change.action.value,
            change.leader.name if change.leader else "none",
            change.epoch,
        )
        for queue in self._role_queues:
            queue.put_nowait(change)

    async def _role_loop(self) -> None:
        interval = self.config.keepalive_interval_s
        while not self._closed:
            self._wake.clear()
            now = self._clock()
            decision = self._decide(now)
            self._publish(decision)
            timeout = interval
            if decision.action is Action.CAMPAIGN and self.auto_campaign:
                if now >= self._hold_off_until:
                    try:
                        await self.campaign()
                        continue
                    except Exception as exc:  # never raise: the deadline timer must keep running
                        log.warning("post %s: campaign failed: %r", self.name, exc)
                else:
                    timeout = min(timeout, self._hold_off_until - now)
            if decision.action is Action.LEAD and decision.deadline is not None:
                # Wake at the deadline even if etcd says nothing: that silence is the signal.
                timeout = min(timeout, max(0.0, decision.deadline - now))
            await _wait_event(self._wake, timeout)
