"""The simulated LoRaWAN network server, and the city's IP devices, on the MQTT broker.

Publishes every device's uplinks at its interval on the simulated clock as
ChirpStack v4 `event/up` JSON (QoS 1), capped by a token bucket. Downlinks
(`command/down`) go into each device's queue and on air as the radio allows
(fleet/downlink_scheduler.py: class A after the device's uplink, class C at
once, every gateway within its duty cycle, payloads within the data rate's
limit); a frame on air is answered with `event/txack` (and `event/ack` when it
was confirmed), a frame that waits or is refused with ChirpStack's `event/log`
(DOWNLINK_GATEWAY / DUTY_CYCLE_OVERFLOW, DOWNLINK_PAYLOAD_SIZE). Devices
execute a command at most once per command_id, fenced by epoch. Every execution
is kept in a bounded in-memory log and published on
`citypost/<city>/fleet/executions`: the chaos drills' independent evidence of
what the devices really did.

IP devices (buses, cars, cameras, signals) publish the same envelope under their
own application, without radio metadata, and take downlinks at once.

Two MQTT sessions. The city's uplinks go out on one, up to MAX_OUTSTANDING of
them unacknowledged; the command path (`command/down` in; `event/txack`,
`event/ack`, `event/log` and the executions out) has its own. On one session a
device's ack queued behind the thousands of uplinks in flight: at full scale an
IP traffic signal's round trip took 3 s there (median; up to 6 s), against 1 s
before a post's first resend, and on a slower machine its commands FAILED. A
real network server answers a downlink in its device's time, not after the
rest of the city's traffic.

Time. Every uplink is built and stamped at the simulated instant its device
spoke (its due time in the schedule: the reading is the behaviour's at that
instant, `time` in the JSON is that instant), not at the instant it is
published. The two part when the rate cap binds in a burst or the machine is
busy: the uplink then goes out late. Stamped when published it would carry a
late time, and a device that spoke on time would look silent in simulated time
for as long as the city lagged. Stamped when it spoke, a late uplink is only
late: the posts judge silence in the data's own time (the latest uplink time
they have seen, a watermark), which lags with the city, so a device is silent
only if it really did not speak. A device that fell more than one interval
behind is not made to replay every uplink it missed (UplinkSchedule.next_after):
it skips them, which a post does see as one longer gap.

What a real network server cannot deliver is lost, not late: while the MQTT
session is down, uplinks that come due are lost (`lost_disconnected`), as a
ChirpStack integration loses the events it cannot publish, and the devices go on
at their pace: no backlog bursts out after the reconnect. A gateway set down
(`set_gateway_down`, for drills and benchmarks) hears nothing: an uplink whose
best gateway is down goes through the next gateway that hears the device (its
rxInfo names that one; `rerouted_gateway_down`), and is lost when every gateway
that hears the device is down (`lost_gateway_down`, under its best gateway). A
lost uplink was still sent by its device: its reading and frame counter move on,
so the posts see the gap in f_cnt that a real network shows. A broker that is
there but slow (MAX_OUTSTANDING publishes unacknowledged) still makes the city
wait: that is lateness, kept honest by the stamps.

How far behind its schedule the city runs (`FleetStats.lag_s`, simulated
seconds between the clock and the due times being published) and the speed it
really runs at (`effective_speed`, simulated seconds its publishing front
advanced per real second) are measured over a sliding window of real time
(fleet/pacing.py PaceMeter); the demo shows them next to the configured speed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from bridges.airtime import DEFAULT_CHANNELS_HZ, AirtimeBook, Usage
from bridges.chirpstack import (
    KIND_DOWN,
    ack_topic,
    build_ack,
    build_log,
    build_txack,
    log_topic,
    parse_downlink,
    parse_topic,
    txack_topic,
)
from bridges.downlink_frame import COMMAND_F_PORT, DeviceCommand, decode_command, decode_header
from bridges.mqtt_session import MqttSession
from bridges.registry import RadioClass, class_name, radio_class
from citypost.clock import SimClock
from citypost.config import MqttConfig, RadioConfig, SimConfig
from citypost.errors import (
    CitypostError,
    ConfigError,
    DeadLetterReason,
    DecodeError,
    InfrastructureError,
    NotFoundError,
)
from fleet.device_state import CommandGate, Outcome
from fleet.downlink_scheduler import (
    Deferred,
    DeviceLink,
    DownlinkScheduler,
    Dropped,
    Event,
    Frame,
    MulticastSent,
    Sent,
)
from fleet.multicast_service import MulticastGroupView, MulticastService, QueueItemView, serve
from fleet.pacing import Pace, PaceMeter, TokenBucket, UplinkSchedule, receive_windows_at
from fleet.population import City, SimDevice
from fleet.uplinks import FCNT_MODULO, UplinkFactory
from security.grpc_tls import server_credentials
from security.pki_store import Identity

log = logging.getLogger(__name__)

DOWNLINK_SUBSCRIPTION = "application/+/device/+/command/down"
EXECUTION_LOG_SIZE = 100_000  # executions kept in memory; the topic has them all
# Publishes awaiting PUBACK beyond which the scheduler pauses: a slow broker slows the
# city down instead of growing paho's queue without bound.
MAX_OUTSTANDING = 5_000
BATCH = 256  # uplinks built per lock hold
MIN_WAIT_S = 0.01  # shortest pause of the scheduler
MAX_WAIT_S = 0.25  # longest pause while something is scheduled (a stop is seen as soon)
IDLE_WAIT_S = 0.5  # pause while nothing is scheduled
BACKPRESSURE_WAIT_S = 0.05  # pause while the broker has too many publishes to acknowledge
# A device reports its new state soon after a command sent to it alone. A multicast's
# members do not: a commune's lamps all answering within a minute is tens of thousands of
# uplinks at once (more than the radio, or this city's rate cap, can take: the backlog
# starved every class for 10-19 s at full scale); their next regular reading carries the
# new state, within one period, and the group command's deadline allows two.
CONFIRM_DELAY_S = (5.0, 60.0)
DOWNLINK_POLL_S = 0.05  # real seconds between looks at frames waiting for airtime


def executions_topic(city: str) -> str:
    return f"citypost/{city}/fleet/executions"


@dataclass(frozen=True, slots=True)
class Execution:
    """One command a device executed."""

    dev_eui: str
    command_id: str
    epoch: int
    action: str
    value: float | int
    sim_time_ms: int
    real_time_ms: int
    asset_class: str
    group: str

    def as_dict(self) -> dict[str, str | int | float]:
        return {
            "dev_eui": self.dev_eui,
            "command_id": self.command_id,
            "epoch": self.epoch,
            "action": self.action,
            "value": self.value,
            "sim_time_ms": self.sim_time_ms,
            "real_time_ms": self.real_time_ms,
            "asset_class": self.asset_class,
            "group": self.group,
        }


def executions_message(executions: Sequence[Execution]) -> bytes:
    """One message on the executions topic: a JSON array, one object per execution. A
    multicast runs on up to a group's thousands of devices at once; a message each held
    the city's uplinks behind their broker acknowledgements."""
    return orjson.dumps([e.as_dict() for e in executions])


@dataclass(frozen=True)
class FleetStats:
    connected: bool
    uplinks_by_class: dict[str, int]
    commands_executed: int
    commands_duplicate: int
    commands_stale: int
    commands_rejected: int  # decoded, but not an action this device takes (or out of range)
    downlinks_bad: int  # undecodable topic, envelope or frame
    downlinks_unknown_device: int
    uplink_errors: int
    outstanding: int  # publishes awaiting PUBACK
    behind_s: float  # simulated seconds the earliest due uplink is late
    downlinks_sent: int = 0  # frames on air (or to an IP device)
    downlinks_queued: int = 0  # in the devices' queues now
    downlinks_deferred: int = 0  # frames that had to wait for a gateway's duty cycle
    downlinks_dropped: dict[str, int] = field(default_factory=dict)  # by log code
    multicast_sent: int = 0  # transmissions (one per gateway and multicast frame)
    airtime: tuple[Usage, ...] = ()  # per gateway and sub-band, over the last hour
    # Uplinks their devices sent and nobody got: the broker was away (the integration
    # could not publish them), or the gateway that hears the device was down.
    lost_disconnected: int = 0
    lost_gateway_down: dict[str, int] = field(default_factory=dict)  # by best gateway
    # Uplinks heard through another gateway because their best one was down, by the latter.
    rerouted_gateway_down: dict[str, int] = field(default_factory=dict)
    gateways_down: tuple[str, ...] = ()
    # Over the last PACE_WINDOW_S real seconds (fleet.pacing.PaceMeter); None/0 until the
    # uplink scheduler has run for a while.
    effective_speed: float | None = None  # simulated s the publishing front made per real s
    lag_s: float = 0.0  # simulated seconds the publishing front is behind the clock
    lag_max_s: float = 0.0  # the most it was behind within the window

    @property
    def uplinks(self) -> int:
        return sum(self.uplinks_by_class.values())

    @property
    def lost(self) -> int:
        return self.lost_disconnected + sum(self.lost_gateway_down.values())


@dataclass
class _Counters:
    uplinks_by_class: dict[str, int] = field(default_factory=dict)
    executed: int = 0
    duplicate: int = 0
    stale: int = 0
    rejected: int = 0
    bad: int = 0
    unknown: int = 0
    uplink_errors: int = 0
    lost_disconnected: int = 0
    lost_gateway_down: dict[str, int] = field(default_factory=dict)
    rerouted_gateway_down: dict[str, int] = field(default_factory=dict)


class NetworkServer:
    def __init__(
        self,
        city: City,
        mqtt_config: MqttConfig,
        clock: SimClock,
        sim: SimConfig,
        city_name: str,
        *,
        radio: RadioConfig | None = None,
        seed: int | None = None,
        client_id: str | None = None,
        tls: Identity | None = None,
        session: Callable[..., MqttSession] = MqttSession,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`session` makes the MQTT session (MqttSession's keyword arguments) and
        `monotonic` is the real clock of the rate cap and the pace figures: tests drive
        the uplink scheduler with fakes of both."""
        if mqtt_config.port is None:
            raise ConfigError("mqtt.port must be resolved before the network server starts")
        self.city = city
        self.clock = clock
        self.sim = sim
        self.city_name = city_name
        self.executions_topic = executions_topic(city_name)
        self._rng = random.Random(f"fleet:{city_name}" if seed is None else seed)
        self._devices = city.devices
        self._index = {d.device.dev_eui: i for i, d in enumerate(self._devices)}
        self._factory = UplinkFactory(city, city_name, self._rng)
        self._gates: dict[str, CommandGate] = {}
        self._executions: deque[Execution] = deque(maxlen=EXECUTION_LOG_SIZE)
        self._unpublished: list[Execution] = []  # executed, for the next executions message
        self._counters = _Counters()
        self._downlink_ids = 0
        self._schedule = UplinkSchedule()
        radio = radio or RadioConfig()
        self._radio = DownlinkScheduler(
            {d.device.dev_eui: device_link(d) for d in self._devices},
            rx2_dr=radio.rx2_dr,
            book=AirtimeBook(window_s=radio.duty_cycle_window_s),
        )
        # The gateways that hear each device, best first (none: an IP device).
        self._heard_by = [heard_by(d) for d in self._devices]
        self._gateways: dict[str, int] = {}  # gateway -> devices it is the best one of
        for heard in self._heard_by:
            for gateway in heard:
                self._gateways.setdefault(gateway, 0)
            if heard:
                self._gateways[heard[0]] += 1
        self._down: set[str] = set()  # gateways set down
        self._radio_now = float("-inf")  # the latest simulated time the radio was given
        burst = max(1.0, sim.max_uplinks_per_s / 20)  # 50 ms worth
        self._monotonic = monotonic
        self._bucket = TokenBucket(sim.max_uplinks_per_s, burst, monotonic)
        self._pace = PaceMeter()
        self._lock = threading.Lock()  # behaviours, gates, schedule, counters
        self._pub_lock = threading.Lock()
        self._published = 0
        self._puback = 0
        self._stop = threading.Event()
        self._uplinks_off = threading.Event()
        self._thread: threading.Thread | None = None
        self._radio_thread: threading.Thread | None = None
        # ChirpStack's gRPC API (multicast groups), served by serve_api.
        self.multicast = MulticastService(
            known_device=self._index.__contains__, on_enqueue=self._on_multicast
        )
        self._api_server: grpc.Server | None = None
        self.api_port: int | None = None
        self._tls = tls
        name = client_id or f"citypost-fleet-{city_name}-{uuid.uuid4().hex[:8]}"
        self._session = session(
            client_id=name,
            host=mqtt_config.host,
            port=mqtt_config.port,
            keepalive_s=mqtt_config.keepalive_s,
            tls=tls,
        )
        self._session.client.on_publish = self._on_publish
        self._commands = session(
            client_id=f"{name}-commands",
            host=mqtt_config.host,
            port=mqtt_config.port,
            keepalive_s=mqtt_config.keepalive_s,
            subscriptions=[(DOWNLINK_SUBSCRIPTION, 1)],
            on_message=self._on_message,
            tls=tls,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, *, uplinks: bool = True, timeout: float = 10.0) -> None:
        """Connect and subscribe; with uplinks, start the scheduler (staggered first uplinks)."""
        self._session.start(timeout)
        self._commands.start(timeout)
        self._radio_thread = threading.Thread(
            target=self._run_downlinks, name="fleet-downlinks", daemon=True
        )
        self._radio_thread.start()
        if not uplinks:
            return
        self._schedule_uplinks()
        self._thread = threading.Thread(target=self._run, name="fleet-uplinks", daemon=True)
        self._thread.start()

    def _schedule_uplinks(self) -> None:
        """Every device's first uplink, at random over its interval from now."""
        factor = self.sim.interval_factor
        with self._lock:
            self._schedule.stagger(
                len(self._devices),
                self.clock.now_ts(),
                lambda i: self._devices[i].behaviour.interval_s * factor,
                self._rng,
            )

    def serve_api(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ChirpStack's gRPC API (api.MulticastGroupService); returns the port.
        Stopped by `stop`."""
        credentials = None if self._tls is None else server_credentials(self._tls)
        self._api_server, self.api_port = serve(self.multicast, host, port, credentials=credentials)
        return self.api_port

    def stop(self) -> None:
        self._stop.set()
        if self._api_server is not None:
            self._api_server.stop(None).wait(10)
            self._api_server = None
        for thread in (self._thread, self._radio_thread):
            if thread is not None:
                thread.join(timeout=10)
        self._thread = self._radio_thread = None
        # A stopped simulator is never resumed under the same identity: let the
        # broker drop its session instead of queueing downlinks for it.
        self._commands.stop(end_session=True)
        self._session.stop(end_session=True)

    def __enter__(self) -> NetworkServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- uplinks -----------------------------------------------------------------------------

    def _build(self, i: int, ts: float, via: str | None = None) -> tuple[str, bytes, str] | None:
        """Device i speaks at simulated ts (lock held): its uplink (topic, JSON, class
        name) as `via` (else its best gateway) heard it, its frame counter advanced; None
        if its model failed."""
        try:
            return self._factory.uplink(i, ts, via)
        except (CitypostError, ValueError, ArithmeticError) as exc:
            # A model bug must not stop the city: count it, skip this uplink.
            self._counters.uplink_errors += 1
            log.warning("uplink of %s failed: %s", self._devices[i].device.dev_eui, exc)
            return None

    def _uplink(self, i: int, ts: float, via: str | None = None) -> tuple[str, bytes] | None:
        """Device i's uplink at simulated ts, to publish (lock held); None if its model
        failed."""
        built = self._build(i, ts, via)
        if built is None:
            return None
        topic, payload, cls = built
        by_class = self._counters.uplinks_by_class
        by_class[cls] = by_class.get(cls, 0) + 1
        return topic, payload

    def _route(self, i: int) -> tuple[str | None, str | None]:
        """Whether gateways down change device i's uplink (lock held): (its best gateway
        if that is down, else None; the best one up that hears it, if its best is down)."""
        if not self._down:
            return None, None
        heard = self._heard_by[i]
        if not heard or heard[0] not in self._down:
            return None, None
        return heard[0], next((g for g in heard[1:] if g not in self._down), None)

    def _uplink_routed(self, i: int, ts: float) -> tuple[str, bytes] | None:
        """Device i's uplink at ts through the gateways up (lock held): None if lost at
        its gateways (counted) or its model failed."""
        best_down, via = self._route(i)
        if best_down is not None and via is None:
            self._lose(i, ts, best_down)
            return None
        uplink = self._uplink(i, ts, via)
        if uplink is not None and best_down is not None:
            rerouted = self._counters.rerouted_gateway_down
            rerouted[best_down] = rerouted.get(best_down, 0) + 1
        return uplink

    def _lose(self, i: int, ts: float, gateway: str | None) -> None:
        """Device i spoke at ts and nobody got it (lock held): through a gateway that is
        down, or while the broker was away (gateway None). It still sent it: its reading
        and frame counter move on."""
        self._build(i, ts)
        if gateway is None:
            self._counters.lost_disconnected += 1
        else:
            lost = self._counters.lost_gateway_down
            lost[gateway] = lost.get(gateway, 0) + 1

    def _reschedule(self, i: int, due: float, now: float) -> None:
        """Device i's next uplink after the one due at `due`, handled at `now` (lock held)."""
        behaviour = self._devices[i].behaviour
        delay = behaviour.next_delay_s(datetime.fromtimestamp(due, UTC)) * self.sim.interval_factor
        self._schedule.push(i, UplinkSchedule.next_after(due, now, delay))

    def _radio_time(self) -> float:
        """The simulated now, for the radio scheduler (lock held): its present moves on."""
        now = self.clock.now_ts()
        self._radio_now = max(self._radio_now, now)
        return now

    def _publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """An uplink: counted against MAX_OUTSTANDING."""
        with self._pub_lock:
            self._published += 1
        return self._session.client.publish(topic, payload, qos=1)

    def _publish_command_event(self, topic: str, payload: bytes) -> None:
        """What the command path says (txack, ack, log, executions), on its own session."""
        self._commands.client.publish(topic, payload, qos=1)

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _rc: ReasonCode, _p: Any) -> None:
        with self._pub_lock:
            self._puback += 1

    def _outstanding(self) -> int:
        with self._pub_lock:
            return self._published - self._puback

    def publish_round(self, timeout: float = 10.0) -> int:
        """One uplink from every device now (no rate cap), each acknowledged by the broker."""
        if not self._session.connected:
            raise InfrastructureError("the network server is not connected: start() it first")
        ts = self.clock.now_ts()
        infos = []
        for i in range(len(self._devices)):
            with self._lock:
                built = self._uplink_routed(i, ts)
            if built is not None:
                infos.append(self._publish(*built))
        deadline = time.monotonic() + timeout
        for info in infos:
            with contextlib.suppress(RuntimeError, ValueError):  # lost the connection meanwhile
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return sum(1 for info in infos if info.is_published())

    def stop_uplinks(self) -> None:
        """Stop publishing uplinks; downlinks, acks and the API go on (a benchmark's drain)."""
        self._uplinks_off.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not (self._stop.is_set() or self._uplinks_off.is_set()):
            try:
                wait = self._step()
            except Exception:  # the scheduler never dies; it logs and carries on
                log.exception("fleet scheduler step failed")
                wait = IDLE_WAIT_S
            if wait > 0:
                self._stop.wait(wait)

    def _step(self) -> float:
        """One pass of the uplink scheduler; the real seconds to wait before the next."""
        now = self.clock.now_ts()
        with self._lock:
            due = self._schedule.next_due()
            self._pace.observe(self._monotonic(), now, due)
        if due is None:
            return IDLE_WAIT_S
        if due > now:
            return min(self.clock.real_seconds(due - now), MAX_WAIT_S)
        if not self._session.connected:
            self._lose_due(now)
            return 0.0
        if self._outstanding() > MAX_OUTSTANDING:
            return BACKPRESSURE_WAIT_S
        granted, wait = self._bucket.take(BATCH)
        if not granted:
            # Waking for every single token costs more than the uplink: gather a few.
            return max(wait, MIN_WAIT_S)
        built: list[tuple[str, bytes]] = []
        events: list[Event] = []
        with self._lock:
            # Uplinks lost at gateways that are down take no token: look a batch further.
            for _ in range(granted + BATCH):
                if len(built) >= granted:
                    break
                popped = self._schedule.pop_due(now)
                if popped is None:
                    break
                i, due = popped
                # Built at the instant the device spoke (event time), however late it goes.
                uplink = self._uplink_routed(i, due)
                if uplink is not None:
                    built.append(uplink)
                    eui = self._devices[i].device.dev_eui
                    if self._radio.queued(eui):  # a class A device's receive windows
                        channel = DEFAULT_CHANNELS_HZ[self._factory.wire(i).f_cnt % 3]
                        at = receive_windows_at(due, self._radio_now)
                        self._radio_now = at
                        events.extend(self._radio.on_uplink(eui, channel, at))
                self._reschedule(i, due, now)
        self._bucket.refund(granted - len(built))
        for topic, payload in built:
            self._publish(topic, payload)
        self._handle(events)
        return 0.0

    def _lose_due(self, now: float) -> None:
        """The broker is away: up to a batch of the uplinks due by now are lost, as a
        network server's integration loses what it cannot publish; each device goes on
        at its pace, so nothing bursts out after the reconnect. No receive windows open:
        a frame waiting for a class A device waits for an uplink heard while connected."""
        with self._lock:
            for _ in range(BATCH):
                popped = self._schedule.pop_due(now)
                if popped is None:
                    return
                i, due = popped
                best_down, via = self._route(i)
                self._lose(i, due, best_down if via is None else None)
                self._reschedule(i, due, now)

    # --- gateways ----------------------------------------------------------------------------

    def gateway_ids(self) -> dict[str, int]:
        """The city's gateways (every one that hears a device), each with the number of
        devices it is the best gateway of (their uplinks name it), by id."""
        return dict(sorted(self._gateways.items()))

    def set_gateway_down(self, gateway_id: str, down: bool) -> None:
        """Take a gateway off the air (a drill, a benchmark) or put it back. While down
        it hears nothing: the uplinks of the devices it is the best gateway of go through
        the next gateway that hears them (`rerouted_gateway_down`), or are lost when every
        gateway that hears them is down (`lost_gateway_down`). Downlinks are left as
        they were: class C and multicast frames still go through it (the downlink
        scheduler knows nothing of outages), class A frames go in the windows after an
        uplink that was heard. NotFoundError for a gateway the city does not have."""
        if gateway_id not in self._gateways:
            raise NotFoundError(
                f"no gateway {gateway_id!r} in city {self.city_name!r}: "
                f"{', '.join(sorted(self._gateways)) or 'it has none'}"
            )
        with self._lock:
            if down:
                self._down.add(gateway_id)
            else:
                self._down.discard(gateway_id)
        log.info("gateway %s %s", gateway_id, "down" if down else "back up")

    # --- downlinks ---------------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            self._downlink(message.topic, bytes(message.payload))
        except Exception:  # never let a bad downlink kill paho's network thread
            log.exception("downlink on %s failed", message.topic)
            with self._lock:
                self._counters.bad += 1

    def _downlink(self, topic_text: str, raw: bytes) -> None:
        """A `command/down` from the integration: into the device's queue (and on air if
        the radio allows now)."""
        try:
            topic = parse_topic(topic_text)
        except DecodeError:
            with self._lock:
                self._counters.bad += 1
            return
        if topic.kind != KIND_DOWN:
            return
        i = self._index.get(topic.dev_eui)
        if i is None or self._devices[i].device.application_id != topic.application_id:
            with self._lock:
                self._counters.unknown += 1
            return
        try:
            down = parse_downlink(raw)
        except DecodeError as exc:
            # No usable queue item id to answer with: count it; the post's TTL retries.
            log.info("bad downlink for %s: %s", topic.dev_eui, exc)
            with self._lock:
                self._counters.bad += 1
            return
        queue_id = down.id
        if queue_id is None:
            try:
                queue_id = decode_header(down.data)[1]
            except DecodeError:
                queue_id = str(uuid.uuid4())
        frame = Frame(
            queue_id, topic.dev_eui, down.f_port, down.data, down.confirmed, self.clock.now_ts()
        )
        if down.dev_eui != topic.dev_eui:
            # ChirpStack answers the topic's device; the frame is refused as malformed.
            with self._lock:
                self._counters.bad += 1
            self._answer(i, frame, None, acknowledged=False)
            return
        with self._lock:
            events = self._radio.enqueue(frame, self._radio_time())
        self._handle(events)

    def _on_multicast(self, group: MulticastGroupView, item: QueueItemView) -> None:
        """A frame enqueued on a multicast group (the API's thread): on air as the gateways
        serving its members allow."""
        with self._lock:
            self.multicast.pop_queue(group.id)  # the radio's queue holds it from now on
            events = self._radio.enqueue_multicast(
                group.id,
                item.f_cnt,
                item.f_port,
                item.data,
                group.dev_euis,
                self._radio_time(),
                dr=group.dr,
                frequency_hz=group.frequency,
            )
        self._handle(events)

    def _run_downlinks(self) -> None:
        """Frames and multicasts that waited for a gateway's duty cycle go when it allows."""
        while not self._stop.wait(DOWNLINK_POLL_S):
            try:
                with self._lock:
                    events = self._radio.poll(self._radio_time())
                self._handle(events)
            except Exception:  # the loop never dies; it logs and carries on
                log.exception("fleet downlink step failed")

    def _handle(self, events: list[Event]) -> None:
        self._handle_each(events)
        self._publish_executions()

    def _publish_executions(self) -> None:
        """What was executed and not yet published, in one message."""
        with self._lock:
            batch, self._unpublished = self._unpublished, []
        if batch:
            self._publish_command_event(self.executions_topic, executions_message(batch))

    def _handle_each(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Sent):
                self._on_air(event)
            elif isinstance(event, MulticastSent):
                for dev_eui in event.receivers:
                    i = self._index[dev_eui]
                    self._execute(i, event.f_port, event.data, report_soon=False)
            elif isinstance(event, Deferred):
                self._log(event.frame, "WARNING", "DOWNLINK_GATEWAY", event.reason)
            elif isinstance(event, Dropped):
                self._log(event.frame, "ERROR", event.code, event.description)

    def _on_air(self, sent: Sent) -> None:
        """The device received the frame: it runs it, the gateway and the device answer."""
        i = self._index[sent.frame.dev_eui]
        outcome = self._execute(i, sent.frame.f_port, sent.frame.data)
        self._publish_executions()  # before the ack: who sees the ack can find the execution
        acknowledged = outcome is not None and outcome.acknowledged
        self._answer(i, sent.frame, sent, acknowledged=acknowledged)

    def _execute(
        self, i: int, f_port: int, data: bytes, *, report_soon: bool = True
    ) -> Outcome | None:
        """What the device does with a frame it received: None if it cannot use it.
        `report_soon`: it sends its new state before its next regular uplink."""
        sim_device = self._devices[i]
        eui = sim_device.device.dev_eui
        cmd: DeviceCommand | None = None
        try:
            if f_port != COMMAND_F_PORT:
                raise DecodeError(
                    DeadLetterReason.WRONG_FPORT, f"commands go on fPort {COMMAND_F_PORT}"
                )
            cmd = decode_command(data)
        except DecodeError as exc:
            log.info("undecodable command for %s: %s", eui, exc)
        sim_now = self.clock.now()
        with self._lock:
            if cmd is None:
                self._counters.bad += 1
                outcome: Outcome | None = None
            elif not sim_device.behaviour.accepts(cmd):
                self._counters.rejected += 1
                outcome = None
            else:
                gate = self._gates.get(eui)
                if gate is None:
                    gate = self._gates[eui] = CommandGate()
                outcome = gate.admit(cmd)
                if outcome is Outcome.EXECUTE:
                    sim_device.behaviour.apply(cmd, sim_now)
                    self._record(sim_device, cmd, sim_now)
                    self._counters.executed += 1
                    if report_soon:
                        delay = self._rng.uniform(*CONFIRM_DELAY_S)
                        self._schedule.advance(i, sim_now.timestamp() + delay)
                elif outcome is Outcome.DUPLICATE:
                    self._counters.duplicate += 1
                else:
                    self._counters.stale += 1
        return outcome

    def _log(self, frame: Frame, level: str, code: str, description: str) -> None:
        device = self._devices[self._index[frame.dev_eui]].device
        with self._lock:
            info = self._factory.wire(self._index[frame.dev_eui]).info
        payload = build_log(
            info,
            level=level,
            code=code,
            description=description,
            context={"queue_item_id": frame.queue_id},
            time_ms=self.clock.now_ms(),
        )
        self._publish_command_event(log_topic(device.application_id, device.dev_eui), payload)

    def _record(self, sim_device: SimDevice, cmd: DeviceCommand, sim_now: datetime) -> Execution:
        device = sim_device.device
        execution = Execution(
            dev_eui=device.dev_eui,
            command_id=cmd.command_id,
            epoch=cmd.epoch,
            action=cmd.action,
            value=cmd.value,
            sim_time_ms=int(sim_now.timestamp() * 1000),
            real_time_ms=int(time.time() * 1000),
            asset_class=class_name(device.asset_class),
            group=device.group,
        )
        self._executions.append(execution)
        self._unpublished.append(execution)
        return execution

    def _answer(self, i: int, frame: Frame, sent: Sent | None, *, acknowledged: bool) -> None:
        """`event/txack` for a frame that went on air, then `event/ack` if it was confirmed
        (or refused outright: a negative ack)."""
        sim_device = self._devices[i]
        device = sim_device.device
        now_ms = self.clock.now_ms()
        with self._lock:
            slot = self._factory.wire(i)
            slot.f_cnt_down = (slot.f_cnt_down + 1) % FCNT_MODULO
            f_cnt_down = slot.f_cnt_down
            self._downlink_ids = self._downlink_ids % (FCNT_MODULO - 1) + 1
            downlink_id = self._downlink_ids
        if sent is not None:
            txack = build_txack(
                slot.info,
                frame.queue_id,
                f_cnt_down,
                time_ms=now_ms,
                gateway_id=sent.gateway_id,
                downlink_id=downlink_id,
                frequency_hz=sent.frequency_hz or DEFAULT_CHANNELS_HZ[0],
                dr=sent.dr,
                immediately=sent.immediately,
            )
            self._publish_command_event(txack_topic(device.application_id, device.dev_eui), txack)
        if frame.confirmed or sent is None:
            ack = build_ack(slot.info, frame.queue_id, acknowledged, f_cnt_down, time_ms=now_ms)
            self._publish_command_event(ack_topic(device.application_id, device.dev_eui), ack)

    # --- observation -------------------------------------------------------------------------

    def executions(self) -> list[Execution]:
        with self._lock:
            return list(self._executions)

    def gate(self, dev_eui: str) -> CommandGate | None:
        with self._lock:
            return self._gates.get(dev_eui)

    def stats(self) -> FleetStats:
        now = self.clock.now_ts()
        with self._lock:
            c = self._counters
            due = self._schedule.next_due()
            pace: Pace | None = self._pace.pace(self._monotonic())
            return FleetStats(
                connected=self._session.connected and self._commands.connected,
                uplinks_by_class=dict(c.uplinks_by_class),
                commands_executed=c.executed,
                commands_duplicate=c.duplicate,
                commands_stale=c.stale,
                commands_rejected=c.rejected,
                downlinks_bad=c.bad,
                downlinks_unknown_device=c.unknown,
                uplink_errors=c.uplink_errors,
                outstanding=self._outstanding(),
                behind_s=max(0.0, now - due) if due is not None else 0.0,
                downlinks_sent=self._radio.stats.sent,
                downlinks_queued=self._radio.queued(),
                downlinks_deferred=self._radio.stats.deferred,
                downlinks_dropped=dict(self._radio.stats.dropped),
                multicast_sent=self._radio.stats.sent_multicast,
                airtime=tuple(self._radio.book.usage(now)),
                lost_disconnected=c.lost_disconnected,
                lost_gateway_down=dict(c.lost_gateway_down),
                rerouted_gateway_down=dict(c.rerouted_gateway_down),
                gateways_down=tuple(sorted(self._down)),
                effective_speed=pace.effective_speed if pace is not None else None,
                lag_s=pace.lag_s if pace is not None else 0.0,
                lag_max_s=pace.lag_max_s if pace is not None else 0.0,
            )


def heard_by(sim_device: SimDevice) -> tuple[str, ...]:
    """The gateways that hear a device's uplinks, best first; none for an IP device."""
    radio = sim_device.radio
    if radio is None:
        return ()
    return radio.gateways or (radio.gateway_id,)


def device_link(sim_device: SimDevice) -> DeviceLink:
    """How the network server reaches a device: its radio class, gateways best first, DR."""
    cls = radio_class(sim_device.device.asset_class)
    radio = sim_device.radio
    if radio is None or cls is RadioClass.IP:
        return DeviceLink(RadioClass.IP, (), 0)
    return DeviceLink(cls, heard_by(sim_device), radio.dr)
