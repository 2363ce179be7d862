"""The malformed-uplink storm of the "malformed-storm" drill: what to publish, and publishing it.

`StormFactory` (pure) builds one message per call: a topic under the edge's uplink
subscription (`application/+/device/+/event/up`) and a payload the edge must refuse,
each named with its `Malformation` and the `DeadLetterReason` the edge's router
(bridges/router.py) gives it, so the drill can check each dead-letter counter moved.
Malformed messages stay far below `edge.max_message_bytes`, so the size check does
not hide their own reason; the oversized ones are `oversized_factor` times it.

`StormPublisher` (I/O) publishes them on a paho client of its own (clean session) at
the scenario's rates, paced by token buckets, and counts, per reason and per
malformation, what the broker took: acknowledged at QoS 1 (the default), written to
the socket at QoS 0. QoS 1 because the edge subscribes at QoS 1: the broker then
queues the storm for a busy edge instead of dropping it, so the drill may require
every message it counted as sent to be counted as a dead letter.
"""

from __future__ import annotations

import base64
import collections
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from bridges import chirpstack
from bridges.layouts import Layout, layout_of
from bridges.lpp import LppType, LppValue
from bridges.lpp import encode as lpp_encode
from bridges.mqtt_session import use_tls
from bridges.registry import Device
from chaos.scenarios import Storm
from citypost.config import CityConfig, EdgeConfig, MqttConfig
from citypost.errors import (
    ConfigError,
    DeadLetterReason,
    FailedPreconditionError,
    InfrastructureError,
    InvalidArgumentError,
)
from fleet.pacing import TokenBucket
from fleet.population import City, build_city
from protos.citypost.v1 import assets_pb2
from security.pki_store import Identity

log = logging.getLogger(__name__)

R = DeadLetterReason


class Malformation(StrEnum):
    """Every way the storm breaks an uplink, each refused by the edge for one reason."""

    NOT_JSON = "not-json"  # text that is not JSON (or JSON cut short)
    BINARY = "binary"  # bytes that are not even UTF-8
    JSON_NOT_OBJECT = "json-not-object"  # valid JSON, but an array, string, number or null
    WRONG_SHAPE = "wrong-shape"  # a JSON object that is not an uplink event
    OTHER_DEVICE = "other-device"  # the event names another device than its topic
    BAD_BASE64 = "bad-base64"  # `data` is not base64
    BAD_LPP = "bad-lpp"  # `data` is not Cayenne LPP (unknown type, truncated, empty)
    BAD_LAYOUT = "bad-layout"  # valid LPP, but not the channels of the device's class
    WRONG_FPORT = "wrong-fport"  # a known device on another fPort than its class's
    UNKNOWN_DEVICE = "unknown-device"  # a devEui nobody registered, in a city application
    FOREIGN_APPLICATION = "foreign-application"  # a known devEui under another application
    BAD_TOPIC = "bad-topic"  # matches the subscription, but a level is not what it must be
    LORA_TOO_LONG = "lora-too-long"  # a LoRaWAN frame longer than the air allows
    OVERSIZED = "oversized"  # an MQTT message over edge.max_message_bytes


REASON: Final[dict[Malformation, DeadLetterReason]] = {
    Malformation.NOT_JSON: R.BAD_JSON,
    Malformation.BINARY: R.BAD_JSON,
    Malformation.JSON_NOT_OBJECT: R.BAD_JSON,
    Malformation.WRONG_SHAPE: R.BAD_ENVELOPE,
    Malformation.OTHER_DEVICE: R.BAD_ENVELOPE,
    Malformation.BAD_BASE64: R.BAD_BASE64,
    Malformation.BAD_LPP: R.BAD_LPP,
    Malformation.BAD_LAYOUT: R.BAD_LAYOUT,
    Malformation.WRONG_FPORT: R.WRONG_FPORT,
    Malformation.UNKNOWN_DEVICE: R.UNKNOWN_DEVICE,
    Malformation.FOREIGN_APPLICATION: R.UNKNOWN_DEVICE,
    Malformation.BAD_TOPIC: R.BAD_TOPIC,
    Malformation.LORA_TOO_LONG: R.OVERSIZED,
    Malformation.OVERSIZED: R.OVERSIZED,
}

# Malformed envelopes are a few hundred bytes; below this bound the edge's size
# check would refuse them first and their own reason would never be counted.
MIN_MAX_MESSAGE_BYTES: Final = 1024

_LPP_TYPES: Final = frozenset(int(t) for t in LppType)
_UNKNOWN_LPP_TYPES: Final = tuple(t for t in range(4, 100) if t not in _LPP_TYPES)
_SCALAR_TYPES: Final = (
    LppType.DIGITAL_INPUT,
    LppType.ANALOG_INPUT,
    LppType.PRESENCE,
    LppType.TEMPERATURE,
    LppType.HUMIDITY,
)
_NO_CHANNEL: Final = 200  # no layout has more than a handful of channels
_NOT_HEX: Final = "ghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class StormMessage:
    topic: str
    payload: bytes
    kind: Malformation
    reason: DeadLetterReason  # what the edge's dead-letter counter must count it as


class StormFactory:
    """Builds storm messages about the city's real devices (so each check of the router
    is reached, not only the first ones); deterministic for a given rng and times.

    `malformed()` cycles through `kinds` in a fresh random order each round, so any
    window of len(kinds) messages holds every kind.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        devices: Sequence[Device],
        edge: EdgeConfig,
        oversized_factor: float,
    ) -> None:
        if not devices:
            raise InvalidArgumentError("devices must hold at least one registered device")
        if not oversized_factor > 1:
            raise InvalidArgumentError(
                f"oversized_factor must be > 1 (times max_message_bytes), got {oversized_factor}"
            )
        if edge.max_message_bytes < MIN_MAX_MESSAGE_BYTES:
            raise InvalidArgumentError(
                f"edge.max_message_bytes must be >= {MIN_MAX_MESSAGE_BYTES} for a storm, got "
                f"{edge.max_message_bytes}: malformed uplinks would be refused as oversized"
            )
        self._rng = rng
        self._devices = tuple(devices)
        self._lora = tuple(d for d in self._devices if d.transport == assets_pb2.LORAWAN)
        self._known = frozenset(d.dev_eui for d in self._devices)
        self._max_message = edge.max_message_bytes
        self._lora_max = edge.lora_max_payload_bytes
        self.oversized_bytes = math.ceil(edge.max_message_bytes * oversized_factor)
        self.kinds: tuple[Malformation, ...] = tuple(
            k
            for k in Malformation
            if k is not Malformation.OVERSIZED
            and (k is not Malformation.LORA_TOO_LONG or self._lora)
        )
        self._round: list[Malformation] = []
        self._builders: dict[Malformation, Callable[[int], tuple[str, bytes]]] = {
            Malformation.NOT_JSON: self._not_json,
            Malformation.BINARY: self._binary,
            Malformation.JSON_NOT_OBJECT: self._json_not_object,
            Malformation.WRONG_SHAPE: self._wrong_shape,
            Malformation.OTHER_DEVICE: self._other_device,
            Malformation.BAD_BASE64: self._bad_base64,
            Malformation.BAD_LPP: self._bad_lpp,
            Malformation.BAD_LAYOUT: self._bad_layout,
            Malformation.WRONG_FPORT: self._wrong_fport,
            Malformation.UNKNOWN_DEVICE: self._unknown_device,
            Malformation.FOREIGN_APPLICATION: self._foreign_application,
            Malformation.BAD_TOPIC: self._bad_topic,
            Malformation.LORA_TOO_LONG: self._lora_too_long,
            Malformation.OVERSIZED: self._oversized,
        }

    # --- the public side ---------------------------------------------------------------

    def malformed(self, time_ms: int) -> StormMessage:
        """The next malformed (not oversized) message."""
        if not self._round:
            self._round = list(self.kinds)
            self._rng.shuffle(self._round)
        return self.make(self._round.pop(), time_ms)

    def oversized(self, time_ms: int) -> StormMessage:
        return self.make(Malformation.OVERSIZED, time_ms)

    def make(self, kind: Malformation, time_ms: int) -> StormMessage:
        if kind is Malformation.LORA_TOO_LONG and not self._lora:
            raise InvalidArgumentError("lora-too-long needs a LoRaWAN device among the devices")
        topic, payload = self._builders[kind](time_ms)
        return StormMessage(topic, payload, kind, REASON[kind])

    def one_of_each(self, time_ms: int) -> list[StormMessage]:
        """Every kind once (the oversized one included), in a fixed order."""
        return [self.make(k, time_ms) for k in (*self.kinds, Malformation.OVERSIZED)]

    # --- helpers -----------------------------------------------------------------------

    def _device(self) -> Device:
        return self._rng.choice(self._devices)

    def _eui(self) -> str:
        while True:
            eui = f"{self._rng.getrandbits(64):016x}"
            if eui not in self._known:
                return eui

    def _f_cnt(self) -> int:
        return self._rng.randrange(1, 1 << 16)

    def _valid_data(self, layout: Layout) -> bytes:
        # A reading the class's layout takes: its first channel, at 1.
        first = layout.fields[0]
        return lpp_encode([LppValue(first.channel, first.lpp_type, (1.0,) * len(first.names))])

    def _event(
        self,
        application_id: str,
        dev_eui: str,
        data: bytes,
        f_port: int,
        time_ms: int,
    ) -> bytes:
        # The IP devices' envelope (no radio metadata): the smallest real one.
        info = chirpstack.DeviceInfo(application_id=application_id, dev_eui=dev_eui)
        return chirpstack.build_uplink(info, data, f_port, self._f_cnt(), time_ms=time_ms, dr=None)

    def _good(self, device: Device, time_ms: int) -> tuple[str, bytes]:
        """A valid uplink of a known device: the base the envelope mutations start from."""
        layout = layout_of(device.asset_class)
        raw = self._event(
            device.application_id,
            device.dev_eui,
            self._valid_data(layout),
            layout.f_port,
            time_ms,
        )
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    # --- one builder per malformation -----------------------------------------------------

    def _not_json(self, time_ms: int) -> tuple[str, bytes]:
        topic, good = self._good(self._device(), time_ms)
        choice = self._rng.randrange(3)
        if choice == 0:
            payload = good[: self._rng.randrange(1, len(good) - 1)]  # cut short
        elif choice == 1:
            payload = b"{not json, " + self._rng.choice((b"deviceInfo", b"data", b"fPort")) + b"}"
        else:
            letters = "abcdefghijklmnopqrstuvwxyz "
            payload = ("x" + "".join(self._rng.choices(letters, k=40))).encode()
        return topic, payload

    def _binary(self, time_ms: int) -> tuple[str, bytes]:
        topic, _ = self._good(self._device(), time_ms)
        # 0xff is never part of UTF-8, so this can not be JSON whatever follows.
        return topic, b"\xff" + self._rng.randbytes(self._rng.randrange(8, 64))

    def _json_not_object(self, time_ms: int) -> tuple[str, bytes]:
        topic, good = self._good(self._device(), time_ms)
        value: Any = self._rng.choice(
            ([orjson.loads(good)], "an uplink", self._rng.randrange(1000), None, [])
        )
        return topic, orjson.dumps(value)

    def _wrong_shape(self, time_ms: int) -> tuple[str, bytes]:
        topic, good = self._good(self._device(), time_ms)
        event = orjson.loads(good)
        choice = self._rng.randrange(7)
        if choice == 0:
            del event["deviceInfo"]
        elif choice == 1:
            event["deviceInfo"] = self._rng.choice((42, "device", [1, 2]))
        elif choice == 2:
            event["fPort"] = self._rng.choice((256, 1000, -1, "ten"))
        elif choice == 3:
            event["fCnt"] = self._rng.choice((-1, 1 << 32, "many"))
        elif choice == 4:
            event["time"] = self._rng.choice(("yesterday", 1_700_000_000, "2026-01-15T22:00:00"))
        elif choice == 5:
            event["rxInfo"] = self._rng.choice(("gateway", [1], {"rssi": -100}))
        else:
            event["confirmed"] = self._rng.choice(("yes", 1))
        return topic, orjson.dumps(event)

    def _other_device(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        raw = self._event(
            device.application_id, self._eui(), self._valid_data(layout), layout.f_port, time_ms
        )
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    def _bad_base64(self, time_ms: int) -> tuple[str, bytes]:
        topic, good = self._good(self._device(), time_ms)
        event = orjson.loads(good)
        text = base64.b64encode(self._rng.randbytes(self._rng.randrange(3, 30))).decode()
        # Characters outside both the standard and the URL-safe alphabets.
        cut = self._rng.randrange(len(text) + 1)
        event["data"] = text[:cut] + self._rng.choice("*!%@.~ ") + text[cut:]
        return topic, orjson.dumps(event)

    def _bad_lpp(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        channel = self._rng.choice(layout.fields).channel
        choice = self._rng.randrange(4)
        if choice == 0:  # a type byte LPP does not define
            data = bytes([channel, self._rng.choice(_UNKNOWN_LPP_TYPES), 0, 1])
        elif choice == 1:  # a two-byte temperature with one byte
            data = self._valid_data(layout) + bytes([channel, LppType.TEMPERATURE, 0x01])
        elif choice == 2:  # a lone channel byte, no type
            data = self._valid_data(layout) + bytes([channel])
        else:  # nothing at all
            data = b""
        raw = self._event(device.application_id, device.dev_eui, data, layout.f_port, time_ms)
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    def _bad_layout(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        if self._rng.random() < 0.5:  # a channel the class does not have
            data = lpp_encode([LppValue(_NO_CHANNEL, LppType.DIGITAL_INPUT, (1.0,))])
        else:  # a channel of the class with a value of another LPP type
            field = self._rng.choice(layout.fields)
            other = self._rng.choice([t for t in _SCALAR_TYPES if t != field.lpp_type])
            data = lpp_encode([LppValue(field.channel, other, (1.0,))])
        raw = self._event(device.application_id, device.dev_eui, data, layout.f_port, time_ms)
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    def _wrong_fport(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        f_port = self._rng.choice([p for p in range(1, 224) if p != layout.f_port])
        raw = self._event(
            device.application_id, device.dev_eui, self._valid_data(layout), f_port, time_ms
        )
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    def _unknown_device(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()  # a real application of the city; the devEui is nobody's
        layout = layout_of(device.asset_class)
        eui = self._eui()
        raw = self._event(
            device.application_id, eui, self._valid_data(layout), layout.f_port, time_ms
        )
        return chirpstack.uplink_topic(device.application_id, eui), raw

    def _foreign_application(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        app = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        raw = self._event(app, device.dev_eui, self._valid_data(layout), layout.f_port, time_ms)
        return chirpstack.uplink_topic(app, device.dev_eui), raw

    def _bad_topic(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        _, good = self._good(device, time_ms)
        app, eui = device.application_id, device.dev_eui
        choice = self._rng.randrange(4)
        if choice == 0:  # 16 characters, not hex
            level = "".join(self._rng.choices(_NOT_HEX, k=16))
        elif choice == 1:  # hex, one digit short or long
            level = eui[:15] if self._rng.random() < 0.5 else eui + "0"
        elif choice == 2:  # an empty devEui level ('+' matches it)
            level = ""
        else:  # an empty application level
            app, level = "", eui
        return f"application/{app}/device/{level}/{chirpstack.KIND_UP}", good

    def _lora_too_long(self, time_ms: int) -> tuple[str, bytes]:
        device = self._rng.choice(self._lora)
        layout = layout_of(device.asset_class)
        size = self._lora_max + self._rng.randrange(1, 40)
        data = self._rng.randbytes(size)
        raw = self._event(device.application_id, device.dev_eui, data, layout.f_port, time_ms)
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw

    def _oversized(self, time_ms: int) -> tuple[str, bytes]:
        device = self._device()
        layout = layout_of(device.asset_class)
        # base64 of 3n/4 bytes is n characters: the event alone passes the target.
        data = self._rng.randbytes(math.ceil(self.oversized_bytes * 3 / 4))
        raw = self._event(device.application_id, device.dev_eui, data, layout.f_port, time_ms)
        return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw


# --- publishing ---------------------------------------------------------------------------

TICK_S: Final = 0.02  # the pacer's period: 50 small bursts a second, not one big one
# Messages handed to paho but not yet taken by the broker beyond which the storm skips a
# tick: a broker that cannot keep up slows the storm instead of growing paho's queue.
MAX_PENDING: Final = 2_000
DRAIN_S: Final = 5.0  # how long stop() waits for the broker to take what is in flight


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class StormPublisher:
    """Publishes a `Storm` onto the broker the posts read, until stopped.

    `city` is the simulated city (or its config, from which the same city is built):
    the storm speaks about its real devices and applications. `edge` must be the
    posts' edge config, so "oversized" means oversized to them.
    """

    def __init__(
        self,
        mqtt_config: MqttConfig,
        city: City | CityConfig,
        storm: Storm,
        *,
        edge: EdgeConfig,
        seed: int,
        qos: Literal[0, 1] = 1,
        client_id: str | None = None,
        now_ms: Callable[[], int] = _wall_ms,
        tls: Identity | None = None,
    ) -> None:
        if mqtt_config.port is None:
            raise ConfigError("mqtt.port must be resolved (the broker started) before the storm")
        if storm.malformed_per_s < 0 or storm.oversized_per_s < 0:
            raise InvalidArgumentError(
                f"storm rates must be >= 0, got malformed_per_s={storm.malformed_per_s}, "
                f"oversized_per_s={storm.oversized_per_s}"
            )
        built = build_city(city) if isinstance(city, CityConfig) else city
        self._factory = StormFactory(
            random.Random(seed),
            devices=[d.device for d in built.devices],
            edge=edge,
            oversized_factor=storm.oversized_factor,
        )
        self._storm = storm
        self._host, self._port = mqtt_config.host, mqtt_config.port
        self._keepalive = mqtt_config.keepalive_s
        self._qos = qos
        self._now_ms = now_ms
        self._lock = threading.Lock()  # counters, pending, lifecycle
        self._by_reason: collections.Counter[str] = collections.Counter()
        self._by_kind: collections.Counter[str] = collections.Counter()
        # Published but not yet taken by the broker: (paho's handle, reason, kind).
        self._pending: list[tuple[mqtt.MQTTMessageInfo, str, str]] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"citypost-storm-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if tls is not None:
            use_tls(self.client, tls)
        self.client.suppress_exceptions = True
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    # --- paho callbacks (its network thread) --------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()
        with self._lock:
            # Not known to have reached the broker: never counted as sent.
            self._settle()
            self._pending.clear()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect and start publishing; a second call does nothing."""
        with self._lock:
            if self._stopped:
                raise FailedPreconditionError("a stopped storm does not start again")
            if self._thread is not None:
                return
            thread = self._thread = threading.Thread(
                target=self._run, name="chaos-storm", daemon=True
            )
        try:
            self.client.connect(self._host, self._port, self._keepalive, clean_start=True)
        except OSError as exc:
            self.stop()
            raise InfrastructureError(
                f"storm: cannot reach the MQTT broker at {self._host}:{self._port}: {exc}"
            ) from exc
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise InfrastructureError(
                f"storm: the MQTT broker at {self._host}:{self._port} did not accept the "
                f"connection within {timeout:.0f} s"
            )
        thread.start()

    def stop(self) -> None:
        """Stop publishing, let the broker take what is in flight (a few seconds at most),
        disconnect. Safe to call at any time, any number of times."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        self._stop.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=10)
        deadline = time.monotonic() + DRAIN_S
        while self._connected.is_set() and time.monotonic() < deadline:
            with self._lock:
                if not self._settle():
                    break
            time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> StormPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- the pacer (its own thread) ------------------------------------------------------

    def _run(self) -> None:
        streams: list[tuple[TokenBucket, Callable[[int], StormMessage]]] = []
        for rate, make in (
            (self._storm.malformed_per_s, self._factory.malformed),
            (self._storm.oversized_per_s, self._factory.oversized),
        ):
            if rate > 0:
                # At most 100 ms worth at once: a stall is not made up in a burst, and a
                # slow rate keeps its fraction of a token between ticks.
                streams.append((TokenBucket(rate, max(2.0, rate * 0.1)), make))
        while not self._stop.wait(TICK_S):
            try:
                self._tick(streams)
            except Exception:  # the storm is a test tool: log and carry on
                log.exception("storm: publishing failed")

    def _tick(self, streams: list[tuple[TokenBucket, Callable[[int], StormMessage]]]) -> None:
        if not self._connected.is_set():
            return
        with self._lock:
            if self._settle() >= MAX_PENDING:
                return
        now = self._now_ms()
        for bucket, make in streams:
            granted, _ = bucket.take(MAX_PENDING)
            for _ in range(granted):
                message = make(now)
                info = self.client.publish(message.topic, message.payload, qos=self._qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    continue  # the connection went meanwhile: not sent, not counted
                with self._lock:
                    self._pending.append((info, message.reason.value, message.kind.value))

    def _settle(self) -> int:
        """Count what the broker took (lock held); returns how many are still pending."""
        still = []
        for entry in self._pending:
            try:
                published = entry[0].is_published()
            except (ValueError, RuntimeError):  # paho gave up on it: never sent
                continue
            if published:
                self._by_reason[entry[1]] += 1
                self._by_kind[entry[2]] += 1
            else:
                still.append(entry)
        self._pending = still
        return len(still)

    # --- observation ---------------------------------------------------------------------

    def sent_by_reason(self) -> dict[str, int]:
        """Messages the broker took, by the dead-letter reason the edge must give them."""
        with self._lock:
            self._settle()
            return dict(self._by_reason)

    def sent_by_kind(self) -> dict[str, int]:
        with self._lock:
            self._settle()
            return dict(self._by_kind)

    @property
    def sent(self) -> int:
        with self._lock:
            self._settle()
            return sum(self._by_reason.values())
