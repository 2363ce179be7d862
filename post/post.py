"""A control post: the edge, the actors, the dispatcher and their loops, as one unit.

The post owns one asyncio loop. The edge runs on paho's threads and hands
telemetry to the actor feed, whose decisions come back to the loop, where the
dispatcher (the one writer) carries them out. Loops on the post's loop: clock
ticks for the actors (once per simulated minute, at most once a second),
the command ledger (resend, expire), supervision (pings, restores, restart
intensity), and the end of operators' overrides.

Leadership comes from `failover.roles.Leadership`: an etcd election when the
post has a standby, or a post alone. Both posts run the same actors on the
same telemetry; only the one that may command (checked at each decision and
each downlink: the self-fence) carries decisions out. The other follows the
leader's control state by watching it, applying each change to its
dispatcher; promoted, it waits until it has applied everything the old leader
wrote, then re-sends every unfinished command under its own epoch.
Downlinks go to the downlink gate, never straight to the network server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from actors.alarm_rules import AlarmShaper
from actors.catalog import actor_name
from actors.decisions import Decision
from actors.pool import ActorKey, ActorPool, Call
from actors.supervision import RestartIntensity, Verdict
from bridges import chirpstack
from bridges.downlink_gate import gate_topic, plan_properties
from bridges.downlinks import Downlink
from bridges.edge import Edge
from bridges.registry import DeviceRegistry
from bridges.sinks import FanOutSink, MemorySink
from citypost.clock import SimClock
from citypost.config import Config
from citypost.errors import NotLeaderError
from citypost.observability import Observability
from failover.control_state import (
    AUDIT,
    ControlState,
    InMemoryControlState,
    RevisionCompactedError,
    namespace_of,
)
from failover.election import Role
from failover.etcd_defrag import defragment_members
from failover.roles import SOLE_EPOCH, Leadership, SoleLeadership
from post.actor_feed import ActorFeed
from post.asset_board import AssetBoard
from post.audit_file import AuditFile
from post.dispatcher import Dispatcher
from post.footprint import FootprintSampler
from post.radio_view import RadioView
from post.silence_watch import SilenceWatch
from protos.citypost.v1 import control_state_pb2
from security.command_signing import CommandSigner
from security.identities import tls_identity
from security.pki import Kind

log = logging.getLogger(__name__)

LEDGER_INTERVAL_S = 0.5
SUPERVISION_INTERVAL_S = 1.0
# About a minute of the city's acks at full scale (a few hundred a second at most).
ACKS_KEPT_FOR_PROMOTION = 20_000
# Reading a process tree's memory costs a few ms per process: every few seconds is enough.
FOOTPRINT_INTERVAL_S = 5.0
RATE_SAMPLES = 6  # the uplink rate is over the last five supervision ticks
DELIVER_TIMEOUT_S = 30.0
# Ack batches handed to the loop and not yet settled, before the edge waits for the oldest.
MAX_ACK_BATCHES_IN_FLIGHT = 64
# A promoted post waits this long to have applied the old leader's writes; past it,
# it reloads the whole control state instead.
CATCH_UP_S = 5.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str


class _Acks:
    """The edge's sink for acks: handed to the post's loop without waiting for them.

    Only the leader settles commands; a standby follows the ledger it writes. Taken on
    a standby, an ack's ledger write is refused (not the leader), and the edge, which
    holds a batch until its sink accepts it, stopped reading the broker until the post
    was promoted; so a standby keeps the latest acks instead and, promoted, settles with
    them what the old leader sent. On the leader, waiting for each ack's ledger write
    held the edge (telemetry too) behind every etcd write the dispatcher made, up to
    18 s at full scale; acks now go to the loop in order (its lock is FIFO) with at most
    `MAX_ACK_BATCHES_IN_FLIGHT` batches outstanding. An ack lost to a crash between the
    broker's acknowledgement and the ledger write costs a resend, which the device
    acknowledges again without executing it twice.
    """

    def __init__(self, post: Post) -> None:
        self._post = post
        self._in_flight: deque[tuple[Future[None], list[chirpstack.Ack | chirpstack.LogEvent]]]
        self._in_flight = deque()

    def submit_acks(self, acks: Sequence[chirpstack.Ack | chirpstack.LogEvent]) -> None:
        self._settle_done()
        if not self._post.commanding():
            self._post.keep_for_promotion(acks)
            return
        while len(self._in_flight) >= MAX_ACK_BATCHES_IN_FLIGHT:
            future, batch = self._in_flight.popleft()
            self._outcome(future, batch, wait=True)
        loop = self._post.loop
        batch = list(acks)
        future = asyncio.run_coroutine_threadsafe(self._post.dispatcher.on_acks(batch), loop)
        self._in_flight.append((future, batch))

    def _settle_done(self) -> None:
        while self._in_flight and self._in_flight[0][0].done():
            future, batch = self._in_flight.popleft()
            self._outcome(future, batch, wait=False)

    def _outcome(
        self,
        future: Future[None],
        batch: list[chirpstack.Ack | chirpstack.LogEvent],
        *,
        wait: bool,
    ) -> None:
        try:
            future.result(DELIVER_TIMEOUT_S if wait else 0)
        except NotLeaderError:  # the lead ended between the check and the write
            self._post.keep_for_promotion(batch)
        except Exception:
            log.exception("post: %d ack(s) not settled", len(batch))


class Post:
    def __init__(
        self,
        config: Config,
        *,
        name: str,
        registry: DeviceRegistry,
        pool: ActorPool,
        clock: SimClock,
        observability: Observability,
        state: ControlState | None = None,
        leadership: Leadership | None = None,
        audit_file: AuditFile | None = None,
    ) -> None:
        self.config = config
        self.audit_file = audit_file
        self.name = name
        # Signs what the post hands the gate, which forwards only a post's signed commands.
        tls = tls_identity(config, Kind.POST, name)
        self._signer = None if tls is None else CommandSigner(tls.read())
        self.registry = registry
        self.pool = pool
        self.clock = clock
        self.leadership: Leadership = leadership or SoleLeadership(name, "")
        if state is None:
            state = InMemoryControlState(epoch=SOLE_EPOCH)
        self.state = state
        self.applied_revision = 0  # the last control-state revision this post applied
        self.leading = False  # promoted and caught up: decisions are carried out
        self.standby_decisions = 0  # decisions computed while standing by, not carried out
        self.fenced_downlinks = 0  # downlinks withheld because the lease may have expired
        self.started_at_ms = wall_ms()
        self.latest = MemorySink()
        self.board = AssetBoard(registry)  # the map's states, from the same uplinks
        self.dispatcher = Dispatcher(
            state=state,
            registry=registry,
            publish=self._publish,
            epoch=self.leadership.command_epoch,
            write_window_s=self.leadership.write_window_s,
            wall_ms=wall_ms,
            report_wall_per_sim_s=config.sim.interval_factor / config.sim.speed,
        )
        self.feed = ActorFeed(pool, now_ms=clock.now_ms, deliver=self._deliver)
        # Both posts judge silence from the same uplinks; only the leader's decisions count.
        self.silence = SilenceWatch(
            registry,
            config.alarms.silence,
            AlarmShaper.of(config.alarms),
            clock_ms=clock.now_ms,
            period_factor=config.sim.interval_factor,
        )
        self._silence_reconciled: int | None = None  # the epoch it was reconciled under
        self.edge = Edge(
            config=config,
            registry=registry,
            sink=FanOutSink(
                self.latest, self.board, self.feed, self.dispatcher.confirmations, self.silence
            ),
            observability=observability,
            acks=_Acks(self),
        )
        self.radio = RadioView(config, name)
        self.intensity = RestartIntensity(
            max_restarts=config.post.max_restarts, window_s=config.post.restart_window_s
        )
        self.unhealthy_reason = ""
        self.uplinks_per_s = 0.0
        # Acks seen while not commanding, for a promotion: a command whose acks reached
        # the old leader too late (it crashed) is ACKED, not FAILED for want of them.
        self._acks_for_promotion: deque[chirpstack.Ack] = deque(maxlen=ACKS_KEPT_FOR_PROMOTION)
        self._acks_lock = threading.Lock()
        self._led_epoch: int | None = None  # the epoch of its last completed promotion
        self.footprint = FootprintSampler()
        self._footprint_at = float("-inf")
        self._uplink_samples: deque[tuple[float, int]] = deque(maxlen=RATE_SAMPLES)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- bridging paho's threads and the post's loop -------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the post is not started"
        return self._loop

    def from_thread(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine on the post's loop from another thread and wait for it."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(DELIVER_TIMEOUT_S)

    @property
    def epoch(self) -> int:
        """The epoch of the leader this post knows of (0: none)."""
        return self.leadership.status().epoch or 0

    def commanding(self) -> bool:
        """Promoted, caught up, and the lease cannot have expired: checked at each use."""
        return self.leading and self.leadership.may_command()

    def keep_for_promotion(self, acks: Sequence[chirpstack.Ack | chirpstack.LogEvent]) -> None:
        with self._acks_lock:  # the edge's thread adds, the loop takes them at promotion
            self._acks_for_promotion.extend(a for a in acks if isinstance(a, chirpstack.Ack))

    def _take_kept_acks(self) -> list[chirpstack.Ack]:
        with self._acks_lock:
            kept = list(self._acks_for_promotion)
            self._acks_for_promotion.clear()
        return kept

    def _deliver(self, actor: str, decisions: list[Decision]) -> None:
        if not self.commanding():
            self.standby_decisions += len(decisions)
            return
        self.from_thread(self.dispatcher.apply(actor, decisions))

    def _publish(self, downlink: Downlink) -> None:
        # The self-fence, at the last instant: a leader frozen between its ledger write
        # and this publish must not command once its lease may have expired.
        if not self.leadership.may_command():
            self.fenced_downlinks += 1
            return
        topic = gate_topic(self.config.city.name, downlink.topic)
        self.edge.session.client.publish(
            topic,
            downlink.payload,
            qos=1,
            properties=plan_properties(
                downlink.priority,
                downlink.deadline_ms,
                signer=self._signer,
                topic=topic,
                payload=downlink.payload,
            ),
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._load_state()
        await asyncio.to_thread(self.feed.start)
        await asyncio.to_thread(self.edge.start)
        await asyncio.to_thread(self.radio.start)
        self._tasks = [
            asyncio.create_task(self._follow_state(), name="follow-state"),
            asyncio.create_task(self._follow_role(), name="follow-role"),
            asyncio.create_task(self._every(self._tick_interval_s(), self._tick), name="tick"),
            asyncio.create_task(self._every(LEDGER_INTERVAL_S, self._ledger), name="ledger"),
            asyncio.create_task(
                self._every(SUPERVISION_INTERVAL_S, self._supervise), name="supervise"
            ),
            asyncio.create_task(
                self._every(self.config.post.retention_sweep_s, self._expire), name="retention"
            ),
        ]
        if self.config.etcd.endpoints:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.config.etcd.defrag_interval_s, self._defragment),
                    name="etcd-defrag",
                )
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.radio.stop)
        await asyncio.to_thread(self.edge.stop)
        # What the edge accepted is applied (bounded), then the pump stops.
        await asyncio.to_thread(self.feed.stop)

    def _tick_interval_s(self) -> float:
        return max(1.0, 60.0 / self.clock.speed)

    @staticmethod
    async def _every(interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        # A loop never raises: a failed round is logged and the next one comes.
        while True:
            try:
                await step()
            except NotLeaderError as exc:
                # The lead ended during the round (the lease may have lapsed): expected,
                # and the round's writes were refused before reaching anyone.
                log.info("post loop step stopped: %s", exc)
            except Exception:
                log.exception("post loop step failed")
            await asyncio.sleep(interval_s)

    async def _tick(self) -> None:
        await asyncio.to_thread(self.feed.tick)
        await self._judge_silence()

    async def _judge_silence(self) -> None:
        connected = self.edge.session.connected
        decisions = await asyncio.to_thread(self.silence.evaluate, time.monotonic(), connected)
        if not self.commanding():
            self.standby_decisions += len(decisions)
            return
        if self._silence_reconciled != self._led_epoch:
            # Newly leading: silence alarms the last leader raised for devices heard since.
            decisions += self.silence.reconcile(self.dispatcher.active_alarm_keys())
            self._silence_reconciled = self._led_epoch
        await self.dispatcher.apply("silence", decisions)
        await self.dispatcher.unshelve_expired()  # a shelve's time is up: back in the list

    # --- leadership and the control state ------------------------------------------------

    async def _load_state(self) -> None:
        # The revision first: changes after it are watched (applying one twice is harmless).
        revision = await self.state.revision()
        await self.dispatcher.load()
        self.applied_revision = revision

    async def _follow_state(self) -> None:
        """Apply every control-state change in revision order (the leader's own writes
        are already in its dispatcher, save those it gave up on: see apply_change)."""
        while True:
            try:
                async for change in self.state.watch(self.applied_revision + 1):
                    self.dispatcher.apply_change(change, own=self.leading)
                    if self.audit_file is not None and namespace_of(change.key) == AUDIT:
                        entry = change.decode(control_state_pb2.AuditEntry)
                        if entry is not None:
                            self.audit_file.append(entry)
                    self.applied_revision = change.revision
            except RevisionCompactedError:
                log.warning("post %s: control state compacted past it: reloading", self.name)
                await self._load_state()
            except Exception:
                log.exception("post %s: following the control state failed", self.name)
                await asyncio.sleep(0.5)

    async def _follow_role(self) -> None:
        async for change in self.leadership.role_changes():
            try:
                if change.role is Role.LEADER and not self.leading:
                    await self._promote(change.epoch)
                elif change.role is not Role.LEADER and self.leading:
                    self.leading = False
                    log.warning("post %s: demoted, standing by", self.name)
            except Exception:
                log.exception("post %s: role change to %s failed", self.name, change.role)

    async def _promote(self, epoch: int | None) -> None:
        if epoch is not None and epoch == self._led_epoch:
            # Leading again under the epoch it led with: it had fenced itself (its
            # keepalives' answers came late, or etcd lost its quorum) but its lease held,
            # and no other post can have written since (that takes a new epoch). It
            # catches up with its own writes that landed after it gave up on them, sends
            # the commands among them it never put on air (an operator's retry finds them
            # written and acts no more), and carries on: no takeover to audit, nothing
            # else to send again (in the slow-etcd drill each such blink cost a takeover
            # entry and a resend of every unfinished command).
            await self._take_the_lead(await self.state.revision())
            replayed = await self.dispatcher.replay_pending()
            log.warning(
                "post %s: leading again under epoch %s (its lease held); %d command(s) "
                "written but never sent, sent",
                self.name,
                epoch,
                replayed,
            )
            return
        # The old leader can no longer write (fenced on the epoch): once the watch
        # delivered this post's own takeover entry, it delivered all the old leader wrote.
        await self._take_the_lead(await self.dispatcher.mark_takeover(self.name))
        replayed = await self.dispatcher.replay_pending()
        self._led_epoch = epoch
        log.warning(
            "post %s: leading under epoch %s; %d unfinished command(s) sent again",
            self.name,
            epoch,
            replayed,
        )

    async def _take_the_lead(self, target: int) -> None:
        """Once the control state is applied up to revision `target` (reloaded if the
        watch does not get there in time), settle the kept acks and lead."""
        deadline = time.monotonic() + CATCH_UP_S
        while self.applied_revision < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.applied_revision < target:
            log.warning("post %s: control state not caught up: reloading it", self.name)
            await self._load_state()
        # Acks seen while standing by settle what they acknowledge before the ledger loop
        # (it runs once `leading`) could fail those commands for want of them; a second
        # round takes those that came in between.
        await self.dispatcher.on_acks(self._take_kept_acks())
        self.leading = True
        await self.dispatcher.on_acks(self._take_kept_acks())

    async def _ledger(self) -> None:
        if not self.commanding():
            return
        await self.dispatcher.run_ledger()
        for override in self.dispatcher.expired_overrides():
            key: ActorKey = (override.asset_class, override.group)
            await self._resume_policy(key)

    async def _expire(self) -> None:
        if self.commanding():
            post = self.config.post
            await self.dispatcher.expire_finished(int(post.finished_command_retention_s * 1000))
            await self.dispatcher.expire_audit(int(post.audit_retention_s * 1000))

    async def _defragment(self) -> None:
        """The leader gives etcd's disk space back, one member at a time (the standby would
        only do it twice)."""
        if self.commanding():
            etcd = self.config.etcd
            await defragment_members(
                etcd.endpoints,
                min_free_bytes=int(etcd.defrag_min_free_mb * 1e6),
                min_free_ratio=etcd.defrag_min_free_ratio,
                tls=tls_identity(self.config, Kind.POST, self.config.post.name),
            )

    async def _resume_policy(self, key: ActorKey) -> None:
        """An override ended: the group's policy puts it back where it wants it."""
        [commands] = await asyncio.to_thread(
            self.pool.call_many, [Call(key, "desired_commands", (self.clock.now_ms(),))], 10.0
        )
        if isinstance(commands, BaseException):
            log.warning("cannot resume %s after its override: %s", actor_name(*key), commands)
            return
        await self.dispatcher.apply(actor_name(*key), list(commands))

    async def _supervise(self) -> None:
        self._sample_uplink_rate()
        if time.monotonic() - self._footprint_at >= FOOTPRINT_INTERVAL_S:
            self._footprint_at = time.monotonic()
            await asyncio.to_thread(self.footprint.sample)
        before = self.feed.stats()
        await asyncio.to_thread(self.feed.check_health, SUPERVISION_INTERVAL_S)
        await asyncio.to_thread(self.feed.recover_down)
        now = time.monotonic()
        after = self.feed.stats()
        # Crashes count against the intensity, not slow answers (a ping that timed out on
        # a busy machine marks the actor down and retries it, but is no crash), and not
        # the units a crashed process hosted: one process down is one restart.
        restarted = [n for n, r in after.restarts.items() if r > before.restarts.get(n, 0)]
        for _ in range(after.crashes - before.crashes):
            if self.intensity.record(now) is Verdict.ESCALATE and not self.unhealthy_reason:
                self.unhealthy_reason = (
                    f"actors keep failing ({', '.join(restarted[:3])} last): more than "
                    f"{self.intensity.max_restarts} restarts in {self.intensity.window_s:g} s"
                )
                log.error("post %s is unhealthy: %s", self.name, self.unhealthy_reason)

    def _sample_uplink_rate(self) -> None:
        """Uplinks decoded per second over the last few supervision ticks."""
        now = time.monotonic()
        total = sum(self.edge.stats().decoded_by_class.values())
        self._uplink_samples.append((now, total))
        first_at, first_total = self._uplink_samples[0]
        if now > first_at:
            self.uplinks_per_s = (total - first_total) / (now - first_at)

    def health(self) -> Health:
        down = self.feed.stats().down
        if self.unhealthy_reason:
            return Health(False, self.unhealthy_reason)
        if down:
            return Health(False, f"actors down: {', '.join(down[:5])}")
        if not self.edge.stats().connected:
            return Health(False, "not connected to the MQTT broker")
        return Health(True, "")
