"""ChirpStack v4 MQTT integration, JSON side: topics, events in, events and commands out.

Events follow the protobuf JSON mapping of `integration.proto` (chirpstack-api):
lowerCamelCase keys, and zero, false and empty fields left out, so every field
read here has the proto3 default when absent (or null). Integers may come as
numbers or decimal strings and bytes as standard or URL-safe base64, padded or
not, as the proto3 JSON mapping allows.

Topics: `application/<applicationId>/device/<devEui>/event/<type>` for events,
`.../state/<type>` for retained state (join, status, location) and
`.../command/down` for downlinks. devEui is 16 lowercase hex digits in v4;
uppercase is accepted on input and lowered.

The builders write what a real ChirpStack publishes (for the simulated network
server and the tests); they raise InvalidArgumentError on bad arguments. The
parsers raise DecodeError with the dead-letter reason. parse_uplink is on the
edge's hot path: orjson, no protobuf, type checks by `type(x) is`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson

from citypost.errors import DeadLetterReason, DecodeError, InvalidArgumentError

KIND_UP: Final = "event/up"
KIND_ACK: Final = "event/ack"
KIND_TXACK: Final = "event/txack"
KIND_DOWN: Final = "command/down"
KIND_LOG: Final = "event/log"
# LogEvent.level and .code as ChirpStack names them (integration.proto: LogLevel, LogCode).
LOG_LEVELS: Final = frozenset({"INFO", "WARNING", "ERROR"})
LOG_CODES: Final = frozenset(
    {
        "UNKNOWN",
        "DOWNLINK_PAYLOAD_SIZE",
        "UPLINK_CODEC",
        "DOWNLINK_CODEC",
        "OTAA",
        "UPLINK_F_CNT_RESET",
        "UPLINK_MIC",
        "UPLINK_F_CNT_RETRANSMISSION",
        "DOWNLINK_GATEWAY",
        "RELAY_NEW_END_DEVICE",
        "F_CNT_DOWN",
        "EXPIRED",
    }
)

UINT32_MAX: Final = 0xFFFF_FFFF
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
MAX_UPLINK_F_PORT: Final = 255  # FPort is one byte on air
MIN_DOWNLINK_F_PORT: Final = 1  # 0 carries MAC commands only
MAX_DOWNLINK_F_PORT: Final = 223  # 224 is the LoRaWAN test port, 225..255 reserved
MAX_DR: Final = 15  # the DR field of LinkADRReq is 4 bits
_INF: Final = math.inf

_HEX: Final = "0123456789abcdef"


# --- what comes out -----------------------------------------------------------------------


# Named tuples, not frozen dataclasses: a frozen dataclass's __init__ stores each field
# through object.__setattr__, which made decoding about 20 % slower (bench.ingest,
# decode-only); a named tuple is built in one step and is just as immutable.

_NO_TAGS: Final[Mapping[str, str]] = {}  # shared, so never mutated (typed read-only)


class DeviceInfo(NamedTuple):
    tenant_id: str = ""
    application_id: str = ""
    application_name: str = ""
    device_profile_name: str = ""
    device_name: str = ""
    dev_eui: str = ""  # 16 lowercase hex digits once parsed
    # A plain dict so events pickle (Ray, multiprocessing); read-only by contract. It
    # makes DeviceInfo, and the events that carry one, unhashable: none is a key.
    tags: Mapping[str, str] = _NO_TAGS


class Uplink(NamedTuple):
    deduplication_id: str
    time_ms: int | None  # None when the event has no time
    device: DeviceInfo
    f_port: int
    f_cnt: int
    dr: int
    confirmed: bool
    data: bytes
    rssi: int | None  # best (highest) over rxInfo; None without rxInfo
    snr: float | None  # best (highest) over rxInfo, independently of rssi; None without rxInfo
    gateway_id: str = ""  # the gateway of the best rssi; "" without rxInfo


class Ack(NamedTuple):
    deduplication_id: str
    time_ms: int | None
    device: DeviceInfo
    queue_item_id: str  # the `id` of the downlink command, i.e. our command_id
    acknowledged: bool
    f_cnt_down: int


class TxAck(NamedTuple):
    downlink_id: int
    time_ms: int | None
    device: DeviceInfo
    queue_item_id: str
    f_cnt_down: int
    gateway_id: str


class LogEvent(NamedTuple):
    """`event/log`: what the network server could not do for a device, in its own words."""

    time_ms: int | None
    device: DeviceInfo
    level: str  # INFO, WARNING, ERROR
    code: str  # a LogCode name: DOWNLINK_GATEWAY, EXPIRED, DOWNLINK_PAYLOAD_SIZE, ...
    description: str  # e.g. the gateway's TxAckStatus name, DUTY_CYCLE_OVERFLOW
    context: Mapping[str, str]  # e.g. {"queue_item_id": ...}


class Downlink(NamedTuple):
    dev_eui: str
    f_port: int
    data: bytes
    confirmed: bool
    id: str | None  # canonical lowercase UUID, None when the command has none


class Topic(NamedTuple):
    application_id: str
    dev_eui: str
    kind: str  # "event/up", "event/ack", "event/txack", "command/down", "state/join", ...


# --- topics -------------------------------------------------------------------------------

# ChirpStack publishes events on event/<type> (up, ack, txack, log, integration),
# retained device state on state/<type> (join, status, location) and reads commands
# on command/down.
_TOPIC_ROOTS: Final = frozenset({"event", "state", "command"})
_TOPIC_SHAPE = "application/<applicationId>/device/<devEui>/(event|state|command)/<type>"


def parse_topic(topic: str) -> Topic:
    """Split an integration topic; DecodeError(BAD_TOPIC) if it is not one."""
    parts = topic.split("/") if type(topic) is str else ()
    if (
        len(parts) != 6
        or parts[0] != "application"
        or parts[2] != "device"
        or parts[4] not in _TOPIC_ROOTS
        or not parts[1]
        or not parts[5]
    ):
        raise DecodeError(
            DeadLetterReason.BAD_TOPIC, f"topic must be {_TOPIC_SHAPE}, got {_show(topic)}"
        )
    dev_eui = parts[3].lower()
    if len(dev_eui) != 16 or dev_eui.strip(_HEX):
        raise DecodeError(
            DeadLetterReason.BAD_TOPIC,
            f"devEui in topic must be 16 hex digits, got {_show(parts[3])}",
        )
    return Topic(parts[1], dev_eui, f"{parts[4]}/{parts[5]}")


def uplink_topic(application_id: str, dev_eui: str) -> str:
    return _topic(application_id, dev_eui, KIND_UP)


def ack_topic(application_id: str, dev_eui: str) -> str:
    return _topic(application_id, dev_eui, KIND_ACK)


def txack_topic(application_id: str, dev_eui: str) -> str:
    return _topic(application_id, dev_eui, KIND_TXACK)


def log_topic(application_id: str, dev_eui: str) -> str:
    return _topic(application_id, dev_eui, KIND_LOG)


def downlink_topic(application_id: str, dev_eui: str) -> str:
    return _topic(application_id, dev_eui, KIND_DOWN)


def _topic(application_id: str, dev_eui: str, kind: str) -> str:
    if (
        type(application_id) is not str
        or not application_id
        or any(c in application_id for c in "/+#\0")
    ):
        raise InvalidArgumentError(
            f"application_id must be a non-empty topic level (no / + # or NUL), "
            f"got {_show(application_id)}"
        )
    return f"application/{application_id}/device/{_check_eui(dev_eui, 'dev_eui')}/{kind}"


# --- parsing ------------------------------------------------------------------------------


def parse_uplink(raw: bytes | str) -> Uplink:
    """An `event/up` payload -> Uplink; DecodeError(BAD_JSON | BAD_ENVELOPE | BAD_BASE64)."""
    obj = _load(raw)
    get = obj.get
    rssi: int | None = None
    snr: float | None = None
    gateway_id = ""
    rx_info = get("rxInfo")
    if rx_info is not None:
        if type(rx_info) is not list:
            raise _bad("rxInfo must be a list of objects", rx_info)
        for rx in rx_info:
            if type(rx) is not dict:
                raise _bad("rxInfo entries must be objects", rx)
            r = rx.get("rssi", 0)
            if type(r) is not int or not _INT32_MIN <= r <= _INT32_MAX:
                r = _int_value(r, _INT32_MIN, _INT32_MAX, "rxInfo.rssi")
            s = rx.get("snr", 0.0)
            if type(s) is not float or not -_INF < s < _INF:
                s = _float_value(s, "rxInfo.snr")
            if rssi is None or r > rssi:
                rssi = r
                gateway_id = _str(rx.get("gatewayId"), "rxInfo.gatewayId")
            if snr is None or s > snr:
                snr = s
    f_port = get("fPort", 0)
    if type(f_port) is not int or not 0 <= f_port <= MAX_UPLINK_F_PORT:
        f_port = _int_value(f_port, 0, MAX_UPLINK_F_PORT, "fPort")
    f_cnt = get("fCnt", 0)
    if type(f_cnt) is not int or not 0 <= f_cnt <= UINT32_MAX:
        f_cnt = _int_value(f_cnt, 0, UINT32_MAX, "fCnt")
    dr = get("dr", 0)
    if type(dr) is not int or not 0 <= dr <= MAX_DR:
        dr = _int_value(dr, 0, MAX_DR, "dr")
    return Uplink(
        _str(get("deduplicationId"), "deduplicationId"),
        _time_ms(get("time")),
        _device_info(get("deviceInfo")),
        f_port,
        f_cnt,
        dr,
        _bool(get("confirmed"), "confirmed"),
        _bytes(get("data"), "data"),
        rssi,
        snr,
        gateway_id,
    )


def parse_ack(raw: bytes | str) -> Ack:
    """An `event/ack` payload -> Ack; same errors as parse_uplink."""
    obj = _load(raw)
    get = obj.get
    return Ack(
        _str(get("deduplicationId"), "deduplicationId"),
        _time_ms(get("time")),
        _device_info(get("deviceInfo")),
        _str(get("queueItemId"), "queueItemId"),
        _bool(get("acknowledged"), "acknowledged"),
        _int_value(get("fCntDown"), 0, UINT32_MAX, "fCntDown"),
    )


def parse_txack(raw: bytes | str) -> TxAck:
    """An `event/txack` payload -> TxAck; same errors as parse_uplink."""
    obj = _load(raw)
    get = obj.get
    return TxAck(
        _int_value(get("downlinkId"), 0, UINT32_MAX, "downlinkId"),
        _time_ms(get("time")),
        _device_info(get("deviceInfo")),
        _str(get("queueItemId"), "queueItemId"),
        _int_value(get("fCntDown"), 0, UINT32_MAX, "fCntDown"),
        _str(get("gatewayId"), "gatewayId"),
    )


def parse_log(raw: bytes | str) -> LogEvent:
    """An `event/log` payload -> LogEvent; an unknown level or code is a BAD_ENVELOPE."""
    obj = _load(raw)
    get = obj.get
    level = _str(get("level"), "level") or "INFO"  # INFO is proto3's zero: left out
    if level not in LOG_LEVELS:
        raise _bad(f"level must be one of {sorted(LOG_LEVELS)}", level)
    code = _str(get("code"), "code") or "UNKNOWN"
    if code not in LOG_CODES:
        raise _bad(f"code must be one of {sorted(LOG_CODES)}", code)
    context = get("context")
    if context is None:
        context = _NO_TAGS
    elif type(context) is not dict or any(type(v) is not str for v in context.values()):
        raise _bad("context must be an object of strings", context)
    return LogEvent(
        _time_ms(get("time")),
        _device_info(get("deviceInfo")),
        level,
        code,
        _str(get("description"), "description"),
        context,
    )


def parse_downlink(raw: bytes | str) -> Downlink:
    """A `command/down` payload -> Downlink; fPort must be 1..223.

    An `id` must be a UUID (ChirpStack rejects anything else) and is returned in
    canonical form, the form ChirpStack sends back as `queueItemId`.
    """
    obj = _load(raw)
    get = obj.get
    command_id = _str(get("id"), "id") or None
    if command_id is not None:
        try:
            command_id = str(uuid.UUID(command_id))
        except ValueError:
            raise _bad("id must be a UUID", command_id) from None
    return Downlink(
        _dev_eui(get("devEui"), "devEui"),
        _int_value(get("fPort"), MIN_DOWNLINK_F_PORT, MAX_DOWNLINK_F_PORT, "fPort"),
        _bytes(get("data"), "data"),
        _bool(get("confirmed"), "confirmed"),
        command_id,
    )


def _load(raw: bytes | str) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise DecodeError(DeadLetterReason.BAD_JSON, f"not JSON: {exc}") from exc
    if type(obj) is not dict:
        raise DecodeError(
            DeadLetterReason.BAD_JSON, f"event must be a JSON object, got {type(obj).__name__}"
        )
    return obj


def _bad(what: str, value: object) -> DecodeError:
    return DecodeError(DeadLetterReason.BAD_ENVELOPE, f"{what}, got {_show(value)}")


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_DEVICE_STRINGS: Final = (
    "tenantId",
    "applicationId",
    "applicationName",
    "deviceProfileName",
    "deviceName",
)


def _device_info(info: object) -> DeviceInfo:
    if type(info) is not dict:
        raise _bad("deviceInfo must be an object with devEui", info)
    get = info.get
    # Inlined checks: this runs once per uplink.
    tenant_id = get("tenantId", "")
    application_id = get("applicationId", "")
    application_name = get("applicationName", "")
    profile_name = get("deviceProfileName", "")
    device_name = get("deviceName", "")
    if not (
        type(tenant_id) is str
        and type(application_id) is str
        and type(application_name) is str
        and type(profile_name) is str
        and type(device_name) is str
    ):
        tenant_id, application_id, application_name, profile_name, device_name = (
            _str(get(key), f"deviceInfo.{key}") for key in _DEVICE_STRINGS
        )
    eui = get("devEui")
    dev_eui = eui.lower() if type(eui) is str else ""
    if len(dev_eui) != 16 or dev_eui.strip(_HEX):
        raise _bad("deviceInfo.devEui must be 16 hex digits", eui)
    tags = get("tags")
    if type(tags) is dict:
        for value in tags.values():  # orjson keys are always str
            if type(value) is not str:
                raise _bad("deviceInfo.tags values must be strings", value)
    elif tags is None:
        tags = _NO_TAGS
    else:
        raise _bad("deviceInfo.tags must be an object of strings", tags)
    return DeviceInfo(
        tenant_id, application_id, application_name, profile_name, device_name, dev_eui, tags
    )


def _dev_eui(value: object, name: str) -> str:
    if type(value) is str:
        eui = value.lower()
        if len(eui) == 16 and not eui.strip(_HEX):
            return eui
    raise _bad(f"{name} must be 16 hex digits", value)


def _str(value: object, name: str) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise _bad(f"{name} must be a string", value)


def _bool(value: object, name: str) -> bool:
    if value is None:
        return False
    if type(value) is bool:
        return value
    raise _bad(f"{name} must be true or false", value)


_INT_TEXT = re.compile(r"-?[0-9]+")


def _int_value(value: object, lo: int, hi: int, name: str) -> int:
    """A proto3 JSON integer (number, integral float or decimal string) within lo..hi."""
    number: int | None = None
    if value is None:
        number = 0
    elif type(value) is int:
        number = value
    elif type(value) is float:
        number = int(value) if value.is_integer() else None
    elif type(value) is str:
        number = int(value) if len(value) <= 20 and _INT_TEXT.fullmatch(value) else None
    if number is None or not lo <= number <= hi:
        raise _bad(f"{name} must be an integer {lo}..{hi}", value)
    return number


def _float_value(value: object, name: str) -> float:
    """A finite proto3 JSON number (or numeric string); NaN and infinities are refused."""
    number: float | None = None
    if value is None:
        number = 0.0
    elif type(value) is float or type(value) is int:
        number = float(value)
    elif type(value) is str and len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _bad(f"{name} must be a finite number", value)
    return number


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _bytes(value: object, name: str) -> bytes:
    if value is None:
        return b""
    if type(value) is not str:
        raise _bad(f"{name} must be a base64 string", value)
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # = b64decode(validate=True)
    except ValueError:
        pass
    # proto3 JSON also allows the URL-safe alphabet and missing padding.
    fixed = value.translate(_URLSAFE_TO_STANDARD)
    fixed += "=" * (-len(fixed) % 4)
    try:
        return binascii.a2b_base64(fixed, strict_mode=True)
    except ValueError:
        raise DecodeError(
            DeadLetterReason.BAD_BASE64, f"{name} is not valid base64: {_show(value)}"
        ) from None


# --- RFC 3339 time ------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _time_ms(value: object) -> int | None:
    """RFC 3339 -> epoch milliseconds (floored); None if absent.

    datetime.fromisoformat (C, 3.11) takes every RFC 3339 form ChirpStack and
    protobuf write, nanoseconds included (digits past microseconds are dropped);
    lowercase `t`/`z` are RFC 3339 too. Leap seconds (:60) are refused, as
    protobuf's own JSON parser does. A time without an offset is ambiguous and refused.
    """
    if value is None:
        return None
    if type(value) is str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            try:
                when = datetime.fromisoformat(value.upper())
            except ValueError:
                raise _bad("time must be an RFC 3339 timestamp", value) from None
        if when.tzinfo is not None:
            return (when - _EPOCH) // _ONE_MS
    raise _bad("time must be an RFC 3339 timestamp with an offset", value)


# --- building -----------------------------------------------------------------------------

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "chirpstack.citypost")
REGION_CONFIG_ID: Final = "eu868"
_RX_METADATA: Final = {"region_config_id": REGION_CONFIG_ID, "region_common_name": "EU868"}
# EU868 default and common extra 125 kHz channels (Hz); an uplink hops by fCnt.
_EU868_CHANNELS: Final = (
    868_100_000,
    868_300_000,
    868_500_000,
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
)
_RX2_FREQUENCY: Final = 869_525_000
_RX2_DELAY: Final = "2s"  # RECEIVE_DELAY1 (1 s) + 1 s
_DOWNLINK_POWER: Final = 14  # dBm EIRP


def _eu868_tx(dr: int, channel: int) -> tuple[int, dict[str, Any]]:
    """EU868 (RP002) data rate -> (frequency, modulation JSON) of an uplink."""
    if dr <= 5:  # DR0..5: SF12..SF7 at 125 kHz
        lora = {"bandwidth": 125_000, "spreadingFactor": 12 - dr, "codeRate": "CR_4_5"}
        return _EU868_CHANNELS[channel], {"lora": lora}
    if dr == 6:  # SF7 at 250 kHz
        lora = {"bandwidth": 250_000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
        return 868_300_000, {"lora": lora}
    return 868_800_000, {"fsk": {"datarate": 50_000}}  # DR7: FSK 50 kbit/s


def build_uplink(
    device: DeviceInfo,
    data: bytes,
    f_port: int,
    f_cnt: int,
    *,
    time_ms: int,
    dr: int | None = 5,
    rssi: int | None = None,
    snr: float | None = None,
    gateway_id: str = "",
    confirmed: bool = False,
    deduplication_id: str | None = None,
) -> bytes:
    """The `event/up` JSON ChirpStack would publish (proto3 JSON: zero fields left out).

    rxInfo is present only when rssi is given; txInfo follows the EU868 data rate
    (0..7). dr=None builds the same envelope without any radio field, as the
    city's IP devices send it. Without a deduplication_id one is derived from device, fCnt and time,
    so the same uplink built twice is the same event.
    """
    dev_eui = _check_eui(device.dev_eui, "device.dev_eui")
    payload = _check_data(data)
    _check_int(f_port, 0, MAX_UPLINK_F_PORT, "f_port")
    _check_int(f_cnt, 0, UINT32_MAX, "f_cnt")
    if dr is not None:
        _check_int(dr, 0, 7, "dr (EU868 uplink)")
    when = _format_time(time_ms)
    if deduplication_id is None:
        deduplication_id = str(uuid.uuid5(_ID_NAMESPACE, f"up/{dev_eui}/{f_cnt}/{time_ms}"))
    event: dict[str, Any] = {
        "deduplicationId": deduplication_id,
        "time": when,
        "deviceInfo": _device_json(device, dev_eui),
    }
    if dr:
        event["dr"] = dr
    if f_cnt:
        event["fCnt"] = f_cnt
    if f_port:
        event["fPort"] = f_port
    if confirmed:
        event["confirmed"] = True
    if payload:
        event["data"] = base64.b64encode(payload).decode("ascii")
    channel = f_cnt % len(_EU868_CHANNELS)
    if rssi is not None:
        event["rxInfo"] = [
            _rx_json(rssi, snr, gateway_id, channel, deduplication_id, when),
        ]
    elif snr is not None:
        raise InvalidArgumentError("snr needs an rssi: both come from the receiving gateway")
    if dr is not None:
        frequency, modulation = _eu868_tx(dr, channel)
        event["txInfo"] = {"frequency": frequency, "modulation": modulation}
        event["regionConfigId"] = REGION_CONFIG_ID
    return orjson.dumps(event)


def _rx_json(
    rssi: int, snr: float | None, gateway_id: str, channel: int, dedup: str, when: str
) -> dict[str, Any]:
    _check_int(rssi, _INT32_MIN, _INT32_MAX, "rssi")
    rx: dict[str, Any] = {}
    if gateway_id:
        rx["gatewayId"] = _check_eui(gateway_id, "gateway_id")
    rx["uplinkId"] = zlib.crc32(dedup.encode()) or 1  # uint32, never the omitted 0
    rx["nsTime"] = when
    if rssi:
        rx["rssi"] = rssi
    if snr is not None:
        if type(snr) not in (int, float) or not math.isfinite(snr):
            raise InvalidArgumentError(f"snr must be a finite number, got {_show(snr)}")
        if snr:
            rx["snr"] = float(snr)
    if channel:
        rx["channel"] = channel
    rx["metadata"] = _RX_METADATA
    rx["crcStatus"] = "CRC_OK"
    return rx


def build_ack(
    device: DeviceInfo,
    queue_item_id: str,
    acknowledged: bool,
    f_cnt_down: int,
    *,
    time_ms: int,
    deduplication_id: str | None = None,
) -> bytes:
    """The `event/ack` JSON for a confirmed downlink (acknowledged=False: a nack/timeout)."""
    dev_eui = _check_eui(device.dev_eui, "device.dev_eui")
    item = _check_uuid(queue_item_id, "queue_item_id")
    _check_int(f_cnt_down, 0, UINT32_MAX, "f_cnt_down")
    if deduplication_id is None:
        deduplication_id = str(uuid.uuid5(_ID_NAMESPACE, f"ack/{dev_eui}/{item}/{time_ms}"))
    event: dict[str, Any] = {
        "deduplicationId": deduplication_id,
        "time": _format_time(time_ms),
        "deviceInfo": _device_json(device, dev_eui),
        "queueItemId": item,
    }
    if acknowledged:
        event["acknowledged"] = True
    if f_cnt_down:
        event["fCntDown"] = f_cnt_down
    return orjson.dumps(event)


def build_txack(
    device: DeviceInfo,
    queue_item_id: str,
    f_cnt_down: int,
    *,
    time_ms: int,
    gateway_id: str,
    downlink_id: int,
    frequency_hz: int = _RX2_FREQUENCY,
    dr: int = 0,
    immediately: bool = False,
) -> bytes:
    """The `event/txack` JSON: the gateway took the downlink. By default as sent in
    RX2 (869.525 MHz, DR0) two seconds after an uplink; `immediately` for class C."""
    dev_eui = _check_eui(device.dev_eui, "device.dev_eui")
    item = _check_uuid(queue_item_id, "queue_item_id")
    _check_int(f_cnt_down, 0, UINT32_MAX, "f_cnt_down")
    _check_int(downlink_id, 0, UINT32_MAX, "downlink_id")
    event: dict[str, Any] = {}
    if downlink_id:
        event["downlinkId"] = downlink_id
    event["time"] = _format_time(time_ms)
    event["deviceInfo"] = _device_json(device, dev_eui)
    event["queueItemId"] = item
    if f_cnt_down:
        event["fCntDown"] = f_cnt_down
    if gateway_id:
        event["gatewayId"] = _check_eui(gateway_id, "gateway_id")
    _check_int(dr, 0, 6, "dr")  # the LoRa data rates of EU868
    lora = {
        "bandwidth": 250_000 if dr == 6 else 125_000,
        "spreadingFactor": 7 if dr == 6 else 12 - dr,
        "codeRate": "CR_4_5",
        "polarizationInversion": True,
    }
    timing: dict[str, Any] = (
        {"immediately": {}} if immediately else {"delay": {"delay": _RX2_DELAY}}
    )
    event["txInfo"] = {
        "frequency": frequency_hz,
        "power": _DOWNLINK_POWER,
        "modulation": {"lora": lora},
        "timing": timing,
    }
    return orjson.dumps(event)


def build_log(
    device: DeviceInfo,
    *,
    level: str,
    code: str,
    description: str,
    context: Mapping[str, str] | None = None,
    time_ms: int,
) -> bytes:
    """The `event/log` JSON ChirpStack publishes when it cannot do what was asked."""
    dev_eui = _check_eui(device.dev_eui, "device.dev_eui")
    if level not in LOG_LEVELS:
        raise InvalidArgumentError(f"level must be one of {sorted(LOG_LEVELS)}, got {level!r}")
    if code not in LOG_CODES:
        raise InvalidArgumentError(f"code must be one of {sorted(LOG_CODES)}, got {code!r}")
    event: dict[str, Any] = {
        "time": _format_time(time_ms),
        "deviceInfo": _device_json(device, dev_eui),
    }
    if level != "INFO":
        event["level"] = level
    if code != "UNKNOWN":
        event["code"] = code
    if description:
        event["description"] = description
    if context:
        event["context"] = dict(context)
    return orjson.dumps(event)


def build_downlink(
    dev_eui: str, f_port: int, data: bytes, *, confirmed: bool = True, id: str | None = None
) -> bytes:
    """The `command/down` JSON; `id` (a canonical UUID) comes back as `queueItemId`."""
    eui = _check_eui(dev_eui, "dev_eui")
    _check_int(f_port, MIN_DOWNLINK_F_PORT, MAX_DOWNLINK_F_PORT, "f_port")
    command: dict[str, Any] = {
        "devEui": eui,
        "confirmed": bool(confirmed),
        "fPort": f_port,
        "data": base64.b64encode(_check_data(data)).decode("ascii"),
    }
    if id is not None:
        # ChirpStack echoes the id in canonical form; refusing other forms keeps
        # the acks matching the caller's command_id byte for byte.
        if _check_uuid(id, "id") != id:
            raise InvalidArgumentError(f"id must be a lowercase hyphenated UUID, got {_show(id)}")
        command["id"] = id
    return orjson.dumps(command)


def _device_json(device: DeviceInfo, dev_eui: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if device.tenant_id:
        info["tenantId"] = device.tenant_id
    if device.application_id:
        info["applicationId"] = device.application_id
    if device.application_name:
        info["applicationName"] = device.application_name
    if device.device_profile_name:
        info["deviceProfileName"] = device.device_profile_name
    if device.device_name:
        info["deviceName"] = device.device_name
    info["devEui"] = dev_eui
    if device.tags:
        info["tags"] = dict(device.tags)
    return info


def _format_time(time_ms: int) -> str:
    """Epoch ms -> RFC 3339 in UTC with nanoseconds, the way ChirpStack writes it."""
    _check_int(time_ms, -(2**62), 2**62, "time_ms")
    try:
        t = _EPOCH + timedelta(milliseconds=time_ms)
    except OverflowError:
        raise InvalidArgumentError(f"time_ms is outside years 1..9999, got {time_ms}") from None
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond // 1000:03d}000000+00:00"
    )


def _check_eui(value: object, name: str) -> str:
    if type(value) is str:
        eui = value.lower()
        if len(eui) == 16 and not eui.strip(_HEX):
            return eui
    raise InvalidArgumentError(f"{name} must be 16 hex digits, got {_show(value)}")


def _check_int(value: object, lo: int, hi: int, name: str) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidArgumentError(f"{name} must be an integer {lo}..{hi}, got {_show(value)}")


def _check_uuid(value: object, name: str) -> str:
    if type(value) is str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidArgumentError(f"{name} must be a UUID, got {_show(value)}")


def _check_data(data: object) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}")
