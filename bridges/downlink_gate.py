"""The downlink gate: the one path from the posts to the network server's `command/down`.

Posts publish each downlink on `citypost/<city>/gate/<the command/down topic>`
(`gate_topic`); the gate forwards it, QoS 1 and byte for byte, to the network
server's topic only if the epoch in its frame is the gate's mark, the highest
epoch etcd confirmed a leader held (bridges.gate_book), so a deposed leader's
commands stop here even if it does not know it is deposed. Only etcd moves the
mark, never a frame: the leader watch (`raise_epoch`, cluster/gate_runner.py)
usually tells a new leader's epoch before that leader's first command; a
command whose epoch is above the mark makes the gate ask etcd at once (its
`EpochConfirmer`, a read of the leader key) and decide again. An epoch etcd
does not confirm is dropped, counted (`unconfirmed_epoch`) and dead-lettered:
a post's signature proves who sent a frame, not that its epoch was elected.

If etcd cannot answer (timeout, no quorum), the command is neither forwarded
(its epoch is unconfirmed) nor acknowledged nor dead-lettered: it stays in the
gate's broker session, which delivers it again when the gate reconnects, and
the post sends it again (same command_id) when no ack comes. Acknowledging it
(a drop, or a dead letter nobody replays) would leave it only in the post's
retries, which an etcd outage can outlast. Counted in `GateStats.confirm_failures`.

A group command that goes by multicast arrives as one
`citypost/<city>/gate/multicast/<applicationId>/<group>` message whose payload
is the command frame: fenced the same way, it is handed to the gate's
`MulticastSink` (the network server's multicast API, cluster/gate_runner.py),
which enqueues it on that group's multicast group.

Each incoming message is acknowledged to the broker only once its outcome is
safe: a forward or a dead letter after the broker's PUBACK of what the gate
published, a stale command at once, one whose epoch etcd could not be asked about
never (see above). A gate that dies therefore loses nothing
(the broker re-delivers); it may forward a command twice, which the devices
absorb (they execute a command_id at most once).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridges import chirpstack
from bridges.airtime import AirtimeBook
from bridges.airtime_planner import AirtimePlanner, Forward, Priority, Refuse, Request, Route
from bridges.dead_letters import DeadLetterCounter, make_dead_letter, to_json
from bridges.downlink_frame import COMMAND_F_PORT
from bridges.downlinks import MULTICAST_ROOT, parse_multicast_topic
from bridges.gate_book import (
    DropReason,
    FrameHeader,
    GateBook,
    Verdict,
    load_mark,
    read_frame_header,
    store_mark,
)
from bridges.gate_status import GateAirtime, airtime_topic
from bridges.mqtt_session import MqttSession
from citypost.clock import SimClock
from citypost.config import Config
from citypost.errors import (
    CitypostError,
    ConfigError,
    DeadLetterReason,
    DecodeError,
    InfrastructureError,
    InvalidArgumentError,
    UnauthenticatedError,
)
from failover.roles import SOLE_EPOCH
from security import identities
from security.command_signing import CommandSigner, CommandVerifier
from security.pki import Kind

log = logging.getLogger(__name__)

GATE_NAME = "downlink-gate"  # the `edge` field of the gate's dead letters
PLAN_INTERVAL_S = 0.1  # real seconds between looks at held downlinks
# A frame must go on air this long (real seconds) before its command's deadline for the
# device's ack to reach the post in time: later, the post expires it anyway.
ACK_MARGIN_S = 2.0
# The plan's airtime book is written this often when it changed, and at stop: a gate that
# crashes forgets at most these seconds of airtime (the network server still enforces it).
BOOK_SAVE_INTERVAL_S = 5.0
# MQTT v5 user properties a post sets on what it hands the gate.
PRIORITY_PROPERTY = "citypost-priority"
DEADLINE_PROPERTY = "citypost-deadline-ms"


def plan_properties(
    priority: int,
    deadline_ms: int,
    *,
    signer: CommandSigner | None = None,
    topic: str = "",
    payload: bytes = b"",
) -> Properties:
    """The user properties that tell the gate's airtime plan who goes first, and until
    when; with a signer, also the post's signature over them, the gate `topic` and the
    `payload` (security.command_signing)."""
    props = Properties(PacketTypes.PUBLISH)
    pairs = [(PRIORITY_PROPERTY, str(priority)), (DEADLINE_PROPERTY, str(deadline_ms))]
    if signer is not None:
        pairs += signer.properties(topic, str(priority), str(deadline_ms), payload)
    props.UserProperty = pairs
    return props


def read_plan_properties(message: mqtt.MQTTMessage) -> tuple[Priority, int]:
    """(priority, deadline in wall ms or 0) of a message; policy and none when absent or bad."""
    found = dict(getattr(message.properties, "UserProperty", None) or ())
    try:
        priority = Priority(int(found.get(PRIORITY_PROPERTY, Priority.POLICY)))
    except ValueError:
        priority = Priority.POLICY
    try:
        deadline_ms = max(0, int(found.get(DEADLINE_PROPERTY, 0)))
    except ValueError:
        deadline_ms = 0
    return priority, deadline_ms


_DOWNLINK_FILTER = "application/+/device/+/command/down"


def gate_prefix(city: str) -> str:
    return f"citypost/{city}/gate/"


_MULTICAST_FILTER = f"{MULTICAST_ROOT}/+/+"


def gate_subscriptions(city: str) -> list[str]:
    """What the gate subscribes to: every downlink and multicast the posts hand it."""
    return [gate_prefix(city) + _DOWNLINK_FILTER, gate_prefix(city) + _MULTICAST_FILTER]


def gate_topic(city: str, downlink_topic: str) -> str:
    """Where a post publishes what is meant for `downlink_topic`: a `command/down` topic,
    or a multicast topic (bridges.downlinks.multicast_topic)."""
    if downlink_topic.startswith(MULTICAST_ROOT + "/"):
        parse_multicast_topic(downlink_topic)
        return gate_prefix(city) + downlink_topic
    try:
        kind = chirpstack.parse_topic(downlink_topic).kind
    except DecodeError as exc:
        raise InvalidArgumentError(f"downlink_topic: {exc.message}") from exc
    if kind != chirpstack.KIND_DOWN:
        raise InvalidArgumentError(f"downlink_topic must end in command/down, got {kind!r}")
    return gate_prefix(city) + downlink_topic


class MulticastSink(Protocol):
    """Enqueues a fenced multicast frame on the network server, synchronously (in the
    gate's MQTT thread, under the fence: group commands are a few a day per group, a
    local API call a few milliseconds); a CitypostError says why it could not."""

    def enqueue(self, application_id: str, group: str, frame: bytes) -> None: ...


class EpochConfirmer(Protocol):
    """The epoch of the leader key read from etcd now (its create_revision), None when
    no leader holds the key; InfrastructureError (or TimeoutError) when etcd cannot say
    within a bounded time. Called in the gate's MQTT thread, outside the fence lock,
    for a command whose epoch is above the mark; never from the caller's event loop."""

    def __call__(self) -> int | None: ...


def sole_post_epoch() -> int:
    """The confirmer of a city without etcd: its one post leads from start to end under
    SOLE_EPOCH (failover.roles.SoleLeadership), so no other epoch is a leader's. The
    benchmarks' gates and the gate runner without etcd endpoints use it."""
    return SOLE_EPOCH


def default_state_path(config: Config) -> Path:
    """Where a gate keeps its high-water mark unless told otherwise."""
    return config.run_dir / "gate" / f"{config.city.name}-mark.json"


@dataclass(frozen=True)
class GateStats:
    forwarded: int
    multicast_forwarded: int  # multicast frames the network server took
    dropped_by_reason: dict[str, int]
    dead_letters_by_reason: dict[str, int]
    highest_epoch: int
    persisted_epoch: int
    pending_acks: int  # published by the gate, broker's PUBACK not yet in
    connected: bool
    held: int = 0  # downlinks waiting for a gateway's duty cycle
    refused_for_airtime: int = 0  # refused at once: no airtime before their deadline
    # Commands above the mark etcd could not be asked about: left unacknowledged for
    # the broker to deliver again (never forwarded, never dropped).
    confirm_failures: int = 0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())


@dataclass(frozen=True, slots=True)
class _Pending:
    """An incoming message waiting for the broker to take what the gate published for it."""

    generation: int
    mid: int
    qos: int
    forward: bool  # False: a dead letter


class _Parsed(NamedTuple):
    """What the gate reads of a message, once."""

    target: str  # the network server's topic, or a multicast topic
    header: FrameHeader
    dev_eui: str  # "" for a multicast
    frame_bytes: int  # the command frame's length (what goes on air)


@dataclass(frozen=True, slots=True)
class _Planned:
    """A fenced downlink the airtime plan is deciding on (its message not yet acknowledged)."""

    target: str
    payload: bytes
    header: FrameHeader
    generation: int
    mid: int
    qos: int
    dev_eui: str


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DownlinkGate:
    def __init__(
        self,
        *,
        config: Config,
        state_path: Path | None = None,
        now_ms: Callable[[], int] = _wall_ms,
        multicast: MulticastSink | None = None,
        planner: AirtimePlanner | None = None,
        routes: Mapping[str, Route] | None = None,
        multicast_routes: Mapping[tuple[str, str], Route] | None = None,
        clock: SimClock | None = None,
        confirm: EpochConfirmer = sole_post_epoch,
    ) -> None:
        """Loads the persisted mark: GateStateError if the file is corrupt (never reset to 0).

        `confirm` reads the leader's epoch from etcd (cluster/gate_runner.py gives one);
        the default knows only a sole post's, which fits a city without etcd.
        """
        if config.mqtt.port is None:
            raise ConfigError("mqtt.port must be resolved (the broker started) before the gate")
        city = config.city.name
        self._city = city
        self._prefix = gate_prefix(city)
        self._dead_letter_topic = config.edge.dead_letter_topic(city)
        self._max_bytes = config.edge.max_message_bytes
        # Without TLS (the benchmarks' baseline) nothing is signed, so nothing is checked.
        gate_tls = identities.tls_identity(config, Kind.GATE, identities.GATE)
        self._verifier = (
            None
            if gate_tls is None
            else CommandVerifier(
                gate_tls.read().trust, city, revoked=identities.store(config).revoked_serials
            )
        )
        self.unsigned_dropped = 0  # refused for a missing or bad signature
        self._keep_bytes = config.edge.dead_letter_payload_bytes
        self._now_ms = now_ms
        self.state_path = state_path if state_path is not None else default_state_path(config)
        self._book = GateBook(load_mark(self.state_path))
        self._confirm = confirm
        self._confirm_failures = 0  # under _pending_lock
        self.dead_letters = DeadLetterCounter()
        # Held from the decision to the publish (and around every write of the mark):
        # once raise_epoch(E) returns, no command older than E goes out.
        self._fence_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: dict[int, _Pending | None] = {}
        self._multicast = multicast
        self._multicast_forwarded = 0
        # The airtime plan (None: forward at once, the network server's duty cycle decides).
        if planner is not None and (routes is None or clock is None):
            raise ConfigError("an airtime plan needs the devices' routes and the city's clock")
        self._planner = planner
        self._routes: Mapping[str, Route] = routes or {}
        # (application id, group) -> every gateway serving a member: where a multicast goes.
        self._multicast_routes: Mapping[tuple[str, str], Route] = multicast_routes or {}
        self._clock = clock
        self._planned: dict[int, _Planned] = {}
        # (devEui, command_id) -> the plan key of the copy held for airtime
        self._held_copies: dict[tuple[str, str], int] = {}
        self._plan_keys = 0
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat the mid's recording
        self._plan_stop = threading.Event()
        self._plan_thread: threading.Thread | None = None
        self.airtime_path = self.state_path.with_name(f"{self.state_path.stem}-airtime.json")
        self._book_dirty = False
        if planner is not None:
            self._load_book(planner)
        self.session = MqttSession(
            client_id=f"citypost-{city}-gate",
            host=config.mqtt.host,
            port=config.mqtt.port,
            keepalive_s=config.mqtt.keepalive_s,
            subscriptions=[(topic, 1) for topic in gate_subscriptions(city)],
            on_message=self._on_message,
            manual_ack=True,
            receive_maximum=1000,
            tls=identities.tls_identity(config, Kind.GATE, identities.GATE),
        )
        self.session.client.on_publish = self._on_published

    # --- MQTT thread ---------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        generation = self.session.connects
        payload = bytes(message.payload)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            error = DecodeError(DeadLetterReason.BAD_TOPIC, "the topic is not valid UTF-8")
            self._reject(error, "(topic is not valid UTF-8)", payload, generation, message)
            return
        try:
            parsed = self._parse(topic, payload)
            self._check_signature(topic, payload, message)
        except DecodeError as error:
            self._reject(error, topic, payload, generation, message)
            return
        except Exception as exc:  # a bug must not stop the gate, nor lose the message
            log.exception("gate: unexpected error reading a downlink on %s", topic)
            internal = DecodeError(DeadLetterReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            self._reject(internal, topic, payload, generation, message)
            return
        try:
            self._fence(parsed, payload, generation, message)
        except Exception:  # a bug: left unacknowledged, the broker re-delivers it on reconnect
            log.exception("gate: unexpected error fencing a downlink on %s", topic)

    def _check_signature(self, topic: str, payload: bytes, message: mqtt.MQTTMessage) -> None:
        """A post of the city signed exactly this (security.command_signing), or
        DecodeError(BAD_SIGNATURE): dropped and counted, never forwarded."""
        if self._verifier is None:
            return
        found = dict(getattr(message.properties, "UserProperty", None) or ())
        try:
            self._verifier.verify(
                topic,
                found.get(PRIORITY_PROPERTY, ""),
                found.get(DEADLINE_PROPERTY, ""),
                payload,
                found,
                now=time.time(),
            )
        except (UnauthenticatedError, InvalidArgumentError) as error:
            self.unsigned_dropped += 1
            raise DecodeError(DeadLetterReason.BAD_SIGNATURE, error.message) from None

    def _parse(self, topic: str, payload: bytes) -> _Parsed:
        """The network server's topic, the frame header and more; DecodeError if malformed."""
        if len(payload) > self._max_bytes:
            raise DecodeError(
                DeadLetterReason.OVERSIZED,
                f"downlink of {len(payload)} bytes, above {self._max_bytes}",
            )
        if not topic.startswith(self._prefix):
            raise DecodeError(DeadLetterReason.BAD_TOPIC, f"not a gate topic: {topic!r}")
        target = topic[len(self._prefix) :]
        if target.startswith(MULTICAST_ROOT + "/"):
            try:
                parse_multicast_topic(target)
            except InvalidArgumentError as exc:
                raise DecodeError(DeadLetterReason.BAD_TOPIC, exc.message) from exc
            return _Parsed(target, read_frame_header(payload), "", len(payload))
        parsed = chirpstack.parse_topic(target)
        if parsed.kind != chirpstack.KIND_DOWN:
            raise DecodeError(DeadLetterReason.BAD_TOPIC, f"not a command/down topic: {topic!r}")
        downlink = chirpstack.parse_downlink(payload)
        if downlink.dev_eui != parsed.dev_eui:
            raise DecodeError(
                DeadLetterReason.BAD_ENVELOPE, "the topic and the downlink name different devices"
            )
        if downlink.f_port != COMMAND_F_PORT:
            raise DecodeError(
                DeadLetterReason.WRONG_FPORT,
                f"commands go on fPort {COMMAND_F_PORT}, got {downlink.f_port}: "
                "nothing unfenced reaches the network server",
            )
        header = read_frame_header(downlink.data)
        if downlink.id is not None and downlink.id != header.command_id:
            raise DecodeError(
                DeadLetterReason.BAD_ENVELOPE,
                f"downlink id {downlink.id} is not the frame's command_id {header.command_id}",
            )
        return _Parsed(target, header, downlink.dev_eui, len(downlink.data))

    def _fence(
        self, parsed: _Parsed, payload: bytes, generation: int, message: mqtt.MQTTMessage
    ) -> None:
        if self._fence_once(parsed, payload, generation, message) is not Verdict.CONFIRM:
            return
        # Above the mark: ask etcd, outside the fence lock (the plan's thread and the
        # leader watch need not wait on etcd), then decide again on what it said.
        header = parsed.header
        try:
            leader_epoch = self._confirm()
        except (CitypostError, TimeoutError) as exc:
            with self._pending_lock:
                self._confirm_failures += 1
            log.warning(
                "gate: cannot confirm epoch %d of command %s with etcd (%s); left "
                "unacknowledged for the broker to deliver again",
                header.epoch,
                header.command_id,
                exc,
            )
            return
        if leader_epoch is not None:
            try:
                self.raise_epoch(leader_epoch)
            except InfrastructureError as exc:
                # Raised in memory all the same: deciding again asks to persist it first.
                log.error("gate: %s", exc.message)
        self._fence_once(parsed, payload, generation, message, after_confirm=True)

    def _fence_once(
        self,
        parsed: _Parsed,
        payload: bytes,
        generation: int,
        message: mqtt.MQTTMessage,
        *,
        after_confirm: bool = False,
    ) -> Verdict:
        """Decide under the fence lock and carry it out; CONFIRM is left to the caller."""
        target, header = parsed.target, parsed.header
        with self._fence_lock:
            verdict = self._book.decide(header.epoch, after_confirm=after_confirm)
            if verdict is Verdict.CONFIRM:
                return verdict
            if verdict is Verdict.DROP_STALE:
                log.info(
                    "gate: dropped command %s of epoch %d (the mark is %d) for %s",
                    header.command_id,
                    header.epoch,
                    self._book.highest_epoch,
                    target,
                )
                self._ack(generation, message.mid, message.qos)
                return verdict
            if verdict is Verdict.DROP_UNCONFIRMED:
                self._drop_unconfirmed(parsed, payload, generation, message)
                return verdict
            if verdict is Verdict.PERSIST_FIRST:
                try:
                    store_mark(self.state_path, header.epoch)
                except OSError as exc:
                    # Forwarding now could be undone by a restart; the leader re-sends
                    # unacknowledged commands, so dropping is the safe side.
                    log.error(
                        "gate: cannot persist epoch %d to %s (%s); dropped command %s",
                        header.epoch,
                        self.state_path,
                        exc,
                        header.command_id,
                    )
                    self._book.count_dropped(DropReason.PERSIST_FAILED)
                    self._ack(generation, message.mid, message.qos)
                    return verdict
                self._book.mark_persisted(header.epoch)
            if target.startswith(MULTICAST_ROOT + "/"):
                self._enqueue_multicast(target, payload, generation, message)
            elif self._planner is not None:
                self._plan(parsed, payload, generation, message)
            else:
                pending = _Pending(generation, message.mid, message.qos, True)
                self._publish(target, payload, pending)
                self._book.count_forwarded()
            return verdict

    def _drop_unconfirmed(
        self, parsed: _Parsed, payload: bytes, generation: int, message: mqtt.MQTTMessage
    ) -> None:
        """A command of an epoch etcd did not confirm, never forwarded: counted by the
        book and kept as a dead letter, since a post's key signed an epoch no leader
        holds (or its leader was gone by the time etcd was asked)."""
        header, mark = parsed.header, self._book.highest_epoch
        detail = (
            f"command {header.command_id} of epoch {header.epoch}: etcd confirms no leader "
            f"above epoch {mark}"
        )
        log.error("gate: dropped %s for %s", detail, parsed.target)
        error = DecodeError(DeadLetterReason.UNCONFIRMED_EPOCH, detail)
        self._reject(error, self._prefix + parsed.target, payload, generation, message)

    # --- the airtime plan (under the fence lock) ------------------------------------------

    def _plan(
        self, parsed: _Parsed, payload: bytes, generation: int, message: mqtt.MQTTMessage
    ) -> None:
        assert self._planner is not None and self._clock is not None
        target, header, dev_eui = parsed.target, parsed.header, parsed.dev_eui
        route = self._routes.get(dev_eui)
        if route is None:
            error = DecodeError(DeadLetterReason.UNKNOWN_DEVICE, f"no radio route to {dev_eui}")
            self._reject(error, target, payload, generation, message)
            return
        planned = _Planned(target, payload, header, generation, message.mid, message.qos, dev_eui)
        copy = self._held_copies.get((dev_eui, header.command_id))
        if copy is not None:
            # The post sent it again (a retry, or a new leader's replay) while a copy waits
            # for airtime: one copy waits, the newest (its epoch is the fence's to judge).
            older = self._planned[copy]
            self._planned[copy] = planned
            self._ack(older.generation, older.mid, older.qos)
            return
        priority, deadline_ms = read_plan_properties(message)
        now = self._clock.now_ts()
        deadline = None
        if deadline_ms:
            # The deadline is on the wall clock; the radio's budgets on the city's.
            left_s = (deadline_ms - self._now_ms()) / 1000 - ACK_MARGIN_S
            deadline = now + self._clock.speed * left_s
        self._plan_keys += 1
        key = self._plan_keys
        request = Request(key, route, parsed.frame_bytes, priority, deadline, now)
        self._planned[key] = planned
        decisions = self._planner.offer(request, now)
        if not decisions:
            self._held_copies[(dev_eui, header.command_id)] = key
            self._log(dev_eui, target, header, "WARNING", "waiting for a gateway's duty cycle")
        self._carry_out(decisions)

    def _carry_out(self, decisions: Sequence[Forward | Refuse]) -> None:
        for decision in decisions:
            planned = self._planned.pop(decision.request.key)
            self._held_copies.pop((planned.dev_eui, planned.header.command_id), None)
            if isinstance(decision, Refuse):
                self._log(planned.dev_eui, planned.target, planned.header, "ERROR", decision.reason)
                self._ack(planned.generation, planned.mid, planned.qos)
                continue
            # It passed the fence at the mark, durable; the mark only rises since: a new
            # leader elected while it waited makes it stale (the fence holds at forward
            # time too). Nothing asks etcd from here, hence after_confirm.
            verdict = self._book.decide(planned.header.epoch, after_confirm=True)
            if verdict is not Verdict.FORWARD:
                self._ack(planned.generation, planned.mid, planned.qos)
                continue
            pending = _Pending(planned.generation, planned.mid, planned.qos, True)
            self._publish(planned.target, planned.payload, pending)
            self._book.count_forwarded()
            self._book_dirty = True

    def _count_multicast(self, application_id: str, group: str, frame: bytes) -> None:
        """A multicast goes at once (the network server sends each gateway's part when it
        can); the plan counts its airtime on every gateway serving the group."""
        route = self._multicast_routes.get((application_id, group))
        if self._planner is None or self._clock is None or route is None:
            return
        now = self._clock.now_ts()
        self._plan_keys += 1
        request = Request(
            self._plan_keys, route, len(frame), Priority.POLICY, None, now, multicast=True
        )
        self._planner.offer(request, now)

    def _log(self, dev_eui: str, target: str, header: FrameHeader, level: str, why: str) -> None:
        """Tell the posts, as ChirpStack tells of a gateway's refusal (event/log)."""
        topic = chirpstack.parse_topic(target)
        payload = chirpstack.build_log(
            chirpstack.DeviceInfo(application_id=topic.application_id, dev_eui=dev_eui),
            level=level,
            code="DOWNLINK_GATEWAY",
            description=f"DUTY_CYCLE_OVERFLOW: {why}",
            context={"queue_item_id": header.command_id},
            time_ms=self._now_ms(),
        )
        self._publish(chirpstack.log_topic(topic.application_id, dev_eui), payload, None)

    def _plan_loop(self) -> None:
        saved = time.monotonic()
        while not self._plan_stop.wait(PLAN_INTERVAL_S):
            try:
                with self._fence_lock:
                    assert self._planner is not None and self._clock is not None
                    decisions = self._planner.due(self._clock.now_ts())
                    self._carry_out(decisions)
                if time.monotonic() - saved >= BOOK_SAVE_INTERVAL_S:
                    self._save_book()
                    self.publish_airtime()
                    saved = time.monotonic()
            except Exception:  # the loop never dies; it logs and carries on
                log.exception("gate: airtime plan step failed")

    def airtime(self) -> GateAirtime | None:
        """What the plan counted per gateway and sub-band, now (None without a plan)."""
        if self._planner is None or self._clock is None:
            return None
        with self._fence_lock:
            usage = tuple(self._planner.book.usage(self._clock.now_ts()))
            held, refused = self._planner.held(), self._planner.refused
        return GateAirtime(self._now_ms(), self._planner.book.window_s, usage, held, refused)

    def publish_airtime(self) -> None:
        """Retained, for the posts' admin API (bridges/gate_status.py)."""
        status = self.airtime()
        if status is not None and self.session.connected:
            self._publish(airtime_topic(self._city), status.to_json(), None, retain=True)

    def _load_book(self, planner: AirtimePlanner) -> None:
        """The airtime the gate counted before a restart: the duty cycle does not reset."""
        try:
            data = json.loads(self.airtime_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error(
                "gate: cannot read %s (%s); counting airtime from zero", self.airtime_path, exc
            )
            return
        try:
            planner.book = AirtimeBook.from_json(data, window_s=planner.book.window_s)
        except CitypostError as exc:
            log.error(
                "gate: %s is not an airtime book (%s); counting from zero", self.airtime_path, exc
            )

    def _save_book(self) -> None:
        if self._planner is None:
            return
        with self._fence_lock:
            if not self._book_dirty:
                return
            data = json.dumps(self._planner.book.to_json())
            self._book_dirty = False
        tmp = self.airtime_path.with_name(f".{self.airtime_path.name}.tmp")
        try:
            self.airtime_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, self.airtime_path)
        except OSError as exc:
            log.error("gate: cannot write %s: %s", self.airtime_path, exc)

    def _enqueue_multicast(
        self, target: str, frame: bytes, generation: int, message: mqtt.MQTTMessage
    ) -> None:
        application_id, group = parse_multicast_topic(target)
        if self._multicast is None:
            error = DecodeError(
                DeadLetterReason.UNKNOWN_DEVICE,
                "this gate has no multicast path (no network-server API configured)",
            )
            self._reject(error, target, frame, generation, message)
            return
        try:
            self._multicast.enqueue(application_id, group, frame)
            self._count_multicast(application_id, group, frame)
        except CitypostError as exc:
            log.error("gate: multicast to %s/%s refused: %s", application_id, group, exc)
            error = DecodeError(DeadLetterReason.UNKNOWN_DEVICE, f"multicast refused: {exc}")
            self._reject(error, target, frame, generation, message)
            return
        with self._pending_lock:
            self._multicast_forwarded += 1
        self._ack(generation, message.mid, message.qos)

    def _reject(
        self,
        error: DecodeError,
        topic: str,
        payload: bytes,
        generation: int,
        message: mqtt.MQTTMessage,
    ) -> None:
        self.dead_letters.add(error.reason)
        log.warning("gate: dead letter from %s: %s", topic, error)
        letter = make_dead_letter(
            error,
            topic=topic,
            payload=payload,
            edge=GATE_NAME,
            received_at_ms=self._now_ms(),
            keep_bytes=self._keep_bytes,
        )
        pending = _Pending(generation, message.mid, message.qos, False)
        self._publish(self._dead_letter_topic, to_json(letter), pending)

    def _publish(
        self, topic: str, payload: bytes, pending: _Pending | None, *, retain: bool = False
    ) -> None:
        # The plan's thread publishes too: a PUBACK may be handled before the mid is
        # recorded here, so one that finds no record waits in `_early` for it.
        info = self.session.client.publish(topic, payload, qos=1, retain=retain)
        with self._pending_lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = pending
                return
        self._published(pending, early)

    def _on_published(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any
    ) -> None:
        with self._pending_lock:
            if mid not in self._pending:
                self._early[mid] = reason
                return
            pending = self._pending.pop(mid)
        self._published(pending, reason)

    def _published(self, pending: _Pending | None, reason: ReasonCode) -> None:
        if pending is None:
            return  # the gate's own message (a log, a fail-safe command): nothing to ack
        if reason.is_failure:
            what = "forward" if pending.forward else "dead letter"
            log.error("gate: the broker refused a %s: %s", what, reason)
            if pending.forward:
                self._book.count_dropped(DropReason.FORWARD_REFUSED)
        self._ack(pending.generation, pending.mid, pending.qos)

    def _ack(self, generation: int, mid: int, qos: int) -> None:
        # A packet id from an earlier connection may now name another message:
        # the broker re-delivers those, so they are left unacknowledged.
        if qos > 0 and generation == self.session.connects:
            self.session.client.ack(mid, qos)

    # --- any thread ----------------------------------------------------------------------

    def send_own(self, topics_and_payloads: Sequence[tuple[str, bytes]]) -> None:
        """The gate's own commands (fail-safe), straight to the network server, QoS 1."""
        with self._fence_lock:
            for topic, payload in topics_and_payloads:
                self._publish(topic, payload, None)

    def raise_epoch(self, epoch: int) -> None:
        """Fence every epoch below `epoch` now: a leader's epoch read from etcd's leader
        key (the leader watch, the runner's checks, the gate's own confirmer), never a
        frame's.

        Thread-safe; blocks for one fsync when the mark rises. InfrastructureError if
        the mark cannot be persisted: the fence still holds in memory, and the next
        command of that epoch tries to persist it again before it is forwarded.
        """
        with self._fence_lock:
            if not self._book.raise_epoch(epoch):
                return
            try:
                store_mark(self.state_path, epoch)
            except OSError as exc:
                raise InfrastructureError(
                    f"cannot persist the gate's epoch {epoch} to {self.state_path}: {exc}"
                ) from exc
            self._book.mark_persisted(epoch)
        log.info("gate: fenced every epoch below %d", epoch)

    def stats(self) -> GateStats:
        with self._pending_lock:
            pending = len(self._pending)
            multicast_forwarded = self._multicast_forwarded
            confirm_failures = self._confirm_failures
        return GateStats(
            forwarded=self._book.forwarded,
            multicast_forwarded=multicast_forwarded,
            dropped_by_reason=self._book.dropped(),
            dead_letters_by_reason=self.dead_letters.snapshot(),
            highest_epoch=self._book.highest_epoch,
            persisted_epoch=self._book.persisted_epoch,
            pending_acks=pending,
            connected=self.session.connected,
            held=self._planner.held() if self._planner is not None else 0,
            refused_for_airtime=self._planner.refused if self._planner is not None else 0,
            confirm_failures=confirm_failures,
        )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        self.session.start(timeout)
        if self._planner is not None:
            self._plan_stop.clear()
            self._plan_thread = threading.Thread(
                target=self._plan_loop, name="gate-plan", daemon=True
            )
            self._plan_thread.start()

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect. The broker keeps queueing downlinks for the gate's session until it
        comes back (and re-delivers those not yet acknowledged), unless end_session."""
        self._plan_stop.set()
        if self._plan_thread is not None:
            self._plan_thread.join(timeout=10)
            self._plan_thread = None
        self._save_book()
        self.session.stop(end_session=end_session)
