"""The simulated LoRaWAN network server, and the city's IP devices, on the MQTT broker.

Publishes every device's uplinks at its interval on the simulated clock as
ChirpStack v4 `event/up` JSON (QoS 1), capped by a token bucket, and executes
`command/down` downlinks at most once per command_id, fenced by epoch, answering
with `event/txack` then `event/ack`. Every execution is kept in a bounded
in-memory log and published on `citypost/<city>/fleet/executions`: the chaos
drills' independent evidence of what the devices really did.

IP devices (buses, cars, cameras, signals) publish the same envelope under their
own application, without radio metadata. Simulated devices acknowledge every
downlink, confirmed or not, because the post's command lifecycle waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from bridges.chirpstack import (
    KIND_DOWN,
    ack_topic,
    build_ack,
    build_txack,
    parse_downlink,
    parse_topic,
    txack_topic,
)
from bridges.downlink_frame import COMMAND_F_PORT, DeviceCommand, decode_command
from bridges.mqtt_session import MqttSession
from bridges.registry import class_name
from citypost.clock import SimClock
from citypost.config import MqttConfig, SimConfig
from citypost.errors import (
    CitypostError,
    ConfigError,
    DeadLetterReason,
    DecodeError,
    InfrastructureError,
)
from fleet.device_state import CommandGate, Outcome
from fleet.pacing import TokenBucket, UplinkSchedule
from fleet.population import City, SimDevice
from fleet.uplinks import FCNT_MODULO, DeviceWire, UplinkFactory

log = logging.getLogger(__name__)

DOWNLINK_SUBSCRIPTION = "application/+/device/+/command/down"
EXECUTION_LOG_SIZE = 100_000  # executions kept in memory; the topic has them all
# Publishes awaiting PUBACK beyond which the scheduler pauses: a slow broker slows the
# city down instead of growing paho's queue without bound.
MAX_OUTSTANDING = 5_000
BATCH = 256  # uplinks built per lock hold
MIN_WAIT_S = 0.01  # shortest pause of the scheduler
CONFIRM_DELAY_S = (5.0, 60.0)  # a device reports its new state soon after a command


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

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
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
        )


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

    @property
    def uplinks(self) -> int:
        return sum(self.uplinks_by_class.values())


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


class NetworkServer:
    def __init__(
        self,
        city: City,
        mqtt_config: MqttConfig,
        clock: SimClock,
        sim: SimConfig,
        city_name: str,
        *,
        seed: int | None = None,
        client_id: str | None = None,
    ) -> None:
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
        self._counters = _Counters()
        self._downlink_ids = 0
        self._schedule = UplinkSchedule()
        burst = max(1.0, sim.max_uplinks_per_s / 20)  # 50 ms worth
        self._bucket = TokenBucket(sim.max_uplinks_per_s, burst)
        self._lock = threading.Lock()  # behaviours, gates, schedule, counters
        self._pub_lock = threading.Lock()
        self._published = 0
        self._puback = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = MqttSession(
            client_id=client_id or f"citypost-fleet-{city_name}-{uuid.uuid4().hex[:8]}",
            host=mqtt_config.host,
            port=mqtt_config.port,
            keepalive_s=mqtt_config.keepalive_s,
            subscriptions=[(DOWNLINK_SUBSCRIPTION, 1)],
            on_message=self._on_message,
        )
        self._session.client.on_publish = self._on_publish

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, *, uplinks: bool = True, timeout: float = 10.0) -> None:
        """Connect and subscribe; with uplinks, start the scheduler (staggered first uplinks)."""
        self._session.start(timeout)
        if not uplinks:
            return
        factor = self.sim.interval_factor
        with self._lock:
            self._schedule.stagger(
                len(self._devices),
                self.clock.now_ts(),
                lambda i: self._devices[i].behaviour.interval_s * factor,
                self._rng,
            )
        self._thread = threading.Thread(target=self._run, name="fleet-uplinks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        # A stopped simulator is never resumed under the same identity: let the
        # broker drop its session instead of queueing downlinks for it.
        self._session.stop(end_session=True)

    def __enter__(self) -> NetworkServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- uplinks -----------------------------------------------------------------------------

    def _uplink(self, i: int, ts: float) -> tuple[str, bytes] | None:
        """Build device i's uplink at simulated ts (lock held); None if its model failed."""
        try:
            topic, payload, cls = self._factory.uplink(i, ts)
        except (CitypostError, ValueError, ArithmeticError) as exc:
            # A model bug must not stop the city: count it, skip this uplink.
            self._counters.uplink_errors += 1
            log.warning("uplink of %s failed: %s", self._devices[i].device.dev_eui, exc)
            return None
        by_class = self._counters.uplinks_by_class
        by_class[cls] = by_class.get(cls, 0) + 1
        return topic, payload

    def _publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        with self._pub_lock:
            self._published += 1
        return self._session.client.publish(topic, payload, qos=1)

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
                built = self._uplink(i, ts)
            if built is not None:
                infos.append(self._publish(*built))
        deadline = time.monotonic() + timeout
        for info in infos:
            with contextlib.suppress(RuntimeError, ValueError):  # lost the connection meanwhile
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return sum(1 for info in infos if info.is_published())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the scheduler never dies; it logs and carries on
                log.exception("fleet scheduler step failed")
                self._stop.wait(0.5)

    def _step(self) -> None:
        if not self._session.connected or self._outstanding() > MAX_OUTSTANDING:
            self._stop.wait(0.05)
            return
        now = self.clock.now_ts()
        with self._lock:
            due = self._schedule.next_due()
        if due is None:
            self._stop.wait(0.5)
            return
        if due > now:
            self._stop.wait(min(self.clock.real_seconds(due - now), 0.25))
            return
        granted, wait = self._bucket.take(BATCH)
        if not granted:
            # Waking for every single token costs more than the uplink: gather a few.
            self._stop.wait(max(wait, MIN_WAIT_S))
            return
        built: list[tuple[str, bytes]] = []
        factor = self.sim.interval_factor
        with self._lock:
            for _ in range(granted):
                popped = self._schedule.pop_due(now)
                if popped is None:
                    break
                i, due = popped
                uplink = self._uplink(i, now)
                if uplink is not None:
                    built.append(uplink)
                behaviour = self._devices[i].behaviour
                delay = behaviour.next_delay_s(datetime.fromtimestamp(now, UTC)) * factor
                self._schedule.push(i, UplinkSchedule.next_after(due, now, delay))
        self._bucket.refund(granted - len(built))
        for topic, payload in built:
            self._publish(topic, payload)

    # --- downlinks ---------------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            self._downlink(message.topic, bytes(message.payload))
        except Exception:  # never let a bad downlink kill paho's network thread
            log.exception("downlink on %s failed", message.topic)
            with self._lock:
                self._counters.bad += 1

    def _downlink(self, topic_text: str, raw: bytes) -> None:
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
        sim_device = self._devices[i]
        try:
            down = parse_downlink(raw)
        except DecodeError as exc:
            # No usable queue item id to answer with: count it; the post's TTL retries.
            log.info("bad downlink for %s: %s", topic.dev_eui, exc)
            with self._lock:
                self._counters.bad += 1
            return
        queue_id = down.id
        cmd: DeviceCommand | None = None
        try:
            if down.dev_eui != topic.dev_eui or down.f_port != COMMAND_F_PORT:
                raise DecodeError(
                    DeadLetterReason.BAD_ENVELOPE,
                    f"devEui {down.dev_eui} / fPort {down.f_port} do not match this command topic",
                )
            cmd = decode_command(down.data)
        except DecodeError as exc:
            log.info("undecodable command for %s: %s", topic.dev_eui, exc)
        if queue_id is None:
            queue_id = cmd.command_id if cmd is not None else str(uuid.uuid4())
        sim_now = self.clock.now()
        execution: Execution | None = None
        with self._lock:
            slot = self._factory.wire(i)
            if cmd is None:
                self._counters.bad += 1
                outcome: Outcome | None = None
            elif not sim_device.behaviour.accepts(cmd):
                self._counters.rejected += 1
                outcome = None
            else:
                gate = self._gates.get(topic.dev_eui)
                if gate is None:
                    gate = self._gates[topic.dev_eui] = CommandGate()
                outcome = gate.admit(cmd)
                if outcome is Outcome.EXECUTE:
                    sim_device.behaviour.apply(cmd, sim_now)
                    execution = self._record(sim_device, cmd, sim_now)
                    self._counters.executed += 1
                    delay = self._rng.uniform(*CONFIRM_DELAY_S)
                    self._schedule.advance(i, sim_now.timestamp() + delay)
                elif outcome is Outcome.DUPLICATE:
                    self._counters.duplicate += 1
                else:
                    self._counters.stale += 1
            slot.f_cnt_down = (slot.f_cnt_down + 1) % FCNT_MODULO
            f_cnt_down = slot.f_cnt_down
            self._downlink_ids = self._downlink_ids % (FCNT_MODULO - 1) + 1
            downlink_id = self._downlink_ids
        if execution is not None:
            self._publish(self.executions_topic, execution.to_json())
        acknowledged = outcome is not None and outcome.acknowledged
        self._answer(sim_device, slot, queue_id, acknowledged, f_cnt_down, downlink_id)

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
        return execution

    def _answer(
        self,
        sim_device: SimDevice,
        slot: DeviceWire,
        queue_id: str,
        acknowledged: bool,
        f_cnt_down: int,
        downlink_id: int,
    ) -> None:
        device = sim_device.device
        now_ms = self.clock.now_ms()
        gateway = sim_device.radio.gateway_id if sim_device.radio is not None else ""
        txack = build_txack(
            slot.info,
            queue_id,
            f_cnt_down,
            time_ms=now_ms,
            gateway_id=gateway,
            downlink_id=downlink_id,
        )
        self._publish(txack_topic(device.application_id, device.dev_eui), txack)
        ack = build_ack(slot.info, queue_id, acknowledged, f_cnt_down, time_ms=now_ms)
        self._publish(ack_topic(device.application_id, device.dev_eui), ack)

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
            return FleetStats(
                connected=self._session.connected,
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
            )
