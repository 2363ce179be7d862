import base64

import orjson
import pytest

from bridges import chirpstack
from bridges.layouts import encode_reading, layout_of
from bridges.registry import Device, DeviceRegistry, application_id
from bridges.router import UplinkRouter
from citypost.config import EdgeConfig
from citypost.errors import DeadLetterReason, DecodeError
from protos.citypost.v1 import assets_pb2

pytestmark = pytest.mark.unit

AC = assets_pb2.AssetClass
LAMP_APP = application_id("dijon", AC.STREET_LAMP)
BUS_APP = application_id("dijon", AC.BUS)
LAMP = Device(
    dev_eui="70b3d57ed0000001",
    name="lamp-1",
    asset_class=AC.STREET_LAMP,
    group="talant",
    commune="Talant",
    latitude=47.33,
    longitude=5.0,
    transport=assets_pb2.LORAWAN,
    application_id=LAMP_APP,
)
BUS = Device(
    dev_eui="70b3d57ed0000002",
    name="bus-1",
    asset_class=AC.BUS,
    group="line-3",
    commune="Dijon",
    latitude=47.32,
    longitude=5.04,
    transport=assets_pb2.IP,
    application_id=BUS_APP,
)


def _router(**edge: object) -> UplinkRouter:
    return UplinkRouter(DeviceRegistry([LAMP, BUS]), EdgeConfig(**edge), lambda: 1_000)  # type: ignore[arg-type]


def _uplink(device: Device, data: bytes, f_port: int = 10, **kw: object) -> tuple[str, bytes]:
    info = chirpstack.DeviceInfo(application_id=device.application_id, dev_eui=device.dev_eui)
    raw = chirpstack.build_uplink(info, data, f_port, 7, time_ms=500, rssi=-100, snr=7.5, **kw)  # type: ignore[arg-type]
    return chirpstack.uplink_topic(device.application_id, device.dev_eui), raw


def _lamp_payload() -> bytes:
    return encode_reading(layout_of(AC.STREET_LAMP), {"brightness_pct": 30.0, "presence_count": 2})


def _reason(router: UplinkRouter, topic: str, raw: bytes) -> DeadLetterReason:
    with pytest.raises(DecodeError) as caught:
        router.route(topic, raw)
    return caught.value.reason


def test_lamp_uplink_becomes_typed_telemetry() -> None:
    topic, raw = _uplink(LAMP, _lamp_payload())
    telemetry = _router().route(topic, raw)
    assert telemetry.dev_eui == LAMP.dev_eui
    assert telemetry.asset_class == AC.STREET_LAMP
    assert telemetry.group == "talant"
    assert telemetry.WhichOneof("reading") == "lamp"
    assert telemetry.lamp.brightness_pct == pytest.approx(30.0)
    assert telemetry.lamp.presence_count == 2
    assert telemetry.f_cnt == 7
    assert telemetry.observed_at_ms == 500 and telemetry.received_at_ms == 1_000
    assert telemetry.rssi == -100


def test_bus_uplink_decodes_gps() -> None:
    payload = encode_reading(
        layout_of(AC.BUS), {"latitude": 47.3215, "longitude": 5.0416, "altitude_m": 250.0}
    )
    topic, raw = _uplink(BUS, payload, f_port=18)
    telemetry = _router().route(topic, raw)
    assert telemetry.vehicle.latitude == pytest.approx(47.3215)


def test_each_bad_input_has_its_reason() -> None:
    router = _router(max_message_bytes=2048)
    topic, good = _uplink(LAMP, _lamp_payload())
    assert _reason(router, "not/a/chirpstack/topic", good) is DeadLetterReason.BAD_TOPIC
    ack_topic = chirpstack.ack_topic(LAMP_APP, LAMP.dev_eui)
    assert _reason(router, ack_topic, good) is DeadLetterReason.BAD_TOPIC
    assert _reason(router, topic, b"{not json") is DeadLetterReason.BAD_JSON
    assert _reason(router, topic, b"x" * 4096) is DeadLetterReason.OVERSIZED
    event = orjson.loads(good)
    event["data"] = "***"
    assert _reason(router, topic, orjson.dumps(event)) is DeadLetterReason.BAD_BASE64
    event["data"] = base64.b64encode(b"\x01\x67\x01").decode()
    assert _reason(router, topic, orjson.dumps(event)) is DeadLetterReason.BAD_LPP
    event["data"] = base64.b64encode(b"\x01\x67\x01\x10").decode()  # a temperature on ch 1
    assert _reason(router, topic, orjson.dumps(event)) is DeadLetterReason.BAD_LAYOUT
    _, wrong_port = _uplink(LAMP, _lamp_payload(), f_port=99)
    assert _reason(router, topic, wrong_port) is DeadLetterReason.WRONG_FPORT
    stranger = chirpstack.uplink_topic(LAMP_APP, "00000000deadbeef")
    event = orjson.loads(good)
    event["deviceInfo"]["devEui"] = "00000000deadbeef"
    assert _reason(router, stranger, orjson.dumps(event)) is DeadLetterReason.UNKNOWN_DEVICE
    # the topic and the event disagree about the device
    other = chirpstack.uplink_topic(LAMP_APP, BUS.dev_eui)
    assert _reason(router, other, good) is DeadLetterReason.BAD_ENVELOPE
    # a registered device heard under another application is not trusted
    wrong_app = chirpstack.uplink_topic(BUS_APP, LAMP.dev_eui)
    assert _reason(router, wrong_app, good) is DeadLetterReason.UNKNOWN_DEVICE


def test_lora_payload_over_the_eu868_limit_is_oversized() -> None:
    topic, raw = _uplink(LAMP, _lamp_payload() * 40)
    assert _reason(_router(), topic, raw) is DeadLetterReason.OVERSIZED
