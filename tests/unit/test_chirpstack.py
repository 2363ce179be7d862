"""ChirpStack v4 JSON adapter, checked against chirpstack-api's protobuf JSON mapping."""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from chirpstack_api.common import common_pb2
from chirpstack_api.gw import gw_pb2
from chirpstack_api.integration import integration_pb2
from google.protobuf import json_format, timestamp_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridges import chirpstack as cs
from citypost.errors import DeadLetterReason, DecodeError, InvalidArgumentError

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

R = DeadLetterReason
UINT32_MAX = 2**32 - 1
MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
EUI = "0016c001f153a14c"
APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
QUEUE_ID = "1bbcab1d-6ec6-4136-b3f5-d63be1dc08de"

# --- the documented events (chirpstack-docs, src/chirpstack/integrations/events.md) ---------

DOCS_DEVICE_INFO = {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"},
}

DOCS_UPLINK = """{
  "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
  "time": "2022-07-18T09:34:15.775023242+00:00",
  "deviceInfo": {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"}
  },
  "devAddr": "00189440",
  "dr": 1,
  "fPort": 1,
  "data": "qg==",
  "rxInfo": [{
    "gatewayId": "0016c001f153a14c",
    "uplinkId": 4217106255,
    "rssi": -36,
    "snr": 10.5,
    "context": "E3OWOQ==",
    "metadata": {"region_name": "eu868", "region_common_name": "EU868"}
  }],
  "txInfo": {
    "frequency": 867100000,
    "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}}
  }
}"""

# The same event with the fields the docs leave at their defaults filled in: adr, fCnt,
# confirmed, a codec's object, and a gateway's channel and location.
FULL_UPLINK = """{
  "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
  "time": "2022-07-18T09:34:15.775023242+00:00",
  "deviceInfo": {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"}
  },
  "devAddr": "00189440",
  "adr": true,
  "dr": 1,
  "fCnt": 10,
  "fPort": 1,
  "confirmed": true,
  "data": "qg==",
  "object": {"temperatureSensor": {"1": 25}, "humiditySensor": {"1": 32}},
  "rxInfo": [{
    "gatewayId": "0016c001f153a14c",
    "uplinkId": 4217106255,
    "rssi": -36,
    "snr": 10.5,
    "channel": 3,
    "location": {"latitude": 47.322, "longitude": 5.041, "altitude": 245},
    "context": "E3OWOQ==",
    "metadata": {"region_name": "eu868", "region_common_name": "EU868"}
  }],
  "txInfo": {
    "frequency": 867100000,
    "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}}
  }
}"""

DOCS_ACK = """{
  "deduplicationId": "856a03e7-80f6-4c26-b971-9dcb34a59c2e",
  "time": "2022-07-18T09:38:49.235700766+00:00",
  "deviceInfo": {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"}
  },
  "queueItemId": "1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
  "acknowledged": true,
  "fCntDown": 3
}"""

DOCS_TXACK = """{
  "downlinkId": 3461958127,
  "time": "2022-07-18T09:37:48.929184085+00:00",
  "deviceInfo": {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"}
  },
  "queueItemId": "42cb6459-a640-46ec-9623-bdff39dc4736",
  "fCntDown": 2,
  "gatewayId": "0016c001f153a14c",
  "txInfo": {
    "frequency": 867900000,
    "power": 14,
    "modulation": {
      "lora": {
        "bandwidth": 125000,
        "spreadingFactor": 7,
        "codeRate": "CR_4_5",
        "polarizationInversion": true
      }
    },
    "timing": {"delay": {"delay": "1s"}},
    "context": "ICYVGw=="
  }
}"""

DOCS_DOWNLINK = '{"devEui": "0102030405060708", "confirmed": true, "fPort": 10, "data": "AQID"}'

DOCS_DEVICE = cs.DeviceInfo(
    tenant_id="52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    application_id="17c82e96-be03-4f38-aef3-f83d48582d97",
    application_name="Test application",
    device_profile_name="Test device-profile",
    device_name="Test device",
    dev_eui="0101010101010101",
    tags={"key": "value"},
)


def pb_parse(raw: bytes | str, message: Any) -> Any:
    """The reference: protobuf's own JSON parser, refusing unknown fields."""
    return json_format.Parse(raw, message, ignore_unknown_fields=False)


@pytest.mark.parametrize("raw", [DOCS_UPLINK, FULL_UPLINK])
def test_documented_uplink_is_real_and_parses(raw: str) -> None:
    pb_parse(raw, integration_pb2.UplinkEvent())
    full = raw is FULL_UPLINK
    assert cs.parse_uplink(raw) == cs.Uplink(
        deduplication_id="3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        time_ms=1_658_136_855_775,
        device=DOCS_DEVICE,
        f_port=1,
        f_cnt=10 if full else 0,
        dr=1,
        confirmed=full,
        data=b"\xaa",
        rssi=-36,
        snr=10.5,
        gateway_id="0016c001f153a14c",
    )


def test_documented_ack_is_real_and_parses() -> None:
    pb_parse(DOCS_ACK, integration_pb2.AckEvent())
    assert cs.parse_ack(DOCS_ACK.encode()) == cs.Ack(
        deduplication_id="856a03e7-80f6-4c26-b971-9dcb34a59c2e",
        time_ms=1_658_137_129_235,
        device=DOCS_DEVICE,
        queue_item_id="1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
        acknowledged=True,
        f_cnt_down=3,
    )


def test_documented_txack_is_real_and_parses() -> None:
    pb_parse(DOCS_TXACK, integration_pb2.TxAckEvent())
    assert cs.parse_txack(DOCS_TXACK) == cs.TxAck(
        downlink_id=3_461_958_127,
        time_ms=1_658_137_068_929,
        device=DOCS_DEVICE,
        queue_item_id="42cb6459-a640-46ec-9623-bdff39dc4736",
        f_cnt_down=2,
        gateway_id="0016c001f153a14c",
    )


def test_documented_downlink_is_a_downlink_command_and_parses() -> None:
    # v4 reads command/down as integration.DownlinkCommand (serde JSON of the protobuf).
    command = pb_parse(DOCS_DOWNLINK, integration_pb2.DownlinkCommand())
    assert (command.dev_eui, command.f_port, command.data) == ("0102030405060708", 10, b"\1\2\3")
    assert cs.parse_downlink(DOCS_DOWNLINK) == cs.Downlink(
        "0102030405060708", 10, b"\1\2\3", True, None
    )


def test_best_rssi_and_snr_are_taken_over_all_gateways_independently() -> None:
    event = orjson.loads(DOCS_UPLINK)
    event["rxInfo"] = [
        {"gatewayId": "0000000000000001", "rssi": -110, "snr": 9.5},
        {"gatewayId": "0000000000000002", "rssi": -90, "snr": -3.0},
        {"gatewayId": "0000000000000003", "rssi": -120, "snr": 1},
    ]
    uplink = cs.parse_uplink(orjson.dumps(event))
    assert (uplink.rssi, uplink.snr) == (-90, 9.5)
    assert uplink.gateway_id == "0000000000000002"  # the one that heard it best
    event["rxInfo"] = []
    uplink = cs.parse_uplink(orjson.dumps(event))
    assert (uplink.rssi, uplink.snr) == (None, None)
    del event["rxInfo"]
    assert cs.parse_uplink(orjson.dumps(event)).rssi is None
    # A gateway entry that leaves rssi/snr out reports the proto3 default, 0.
    event["rxInfo"] = [{"gatewayId": "0000000000000001"}]
    uplink = cs.parse_uplink(orjson.dumps(event))
    assert (uplink.rssi, uplink.snr) == (0, 0.0)


def test_every_field_defaults_when_left_out_or_null() -> None:
    minimal = cs.parse_uplink(b'{"deviceInfo": {"devEui": "0101010101010101"}}')
    assert minimal == cs.Uplink(
        "", None, cs.DeviceInfo(dev_eui="0101010101010101"), 0, 0, 0, False, b"", None, None
    )
    nulls: dict[str, Any] = {
        key: None
        for key in ("deduplicationId", "time", "dr", "fCnt", "fPort", "confirmed", "data", "rxInfo")
    }
    nulls["deviceInfo"] = {"devEui": "0101010101010101", "tags": None, "deviceName": None}
    pb_parse(orjson.dumps(nulls), integration_pb2.UplinkEvent())
    assert cs.parse_uplink(orjson.dumps(nulls)) == minimal
    ack = cs.parse_ack('{"deviceInfo": {"devEui": "0101010101010101"}}')
    assert (ack.queue_item_id, ack.acknowledged, ack.f_cnt_down, ack.time_ms) == (
        "",
        False,
        0,
        None,
    )
    txack = cs.parse_txack('{"deviceInfo": {"devEui": "0101010101010101"}}')
    assert (txack.downlink_id, txack.gateway_id, txack.f_cnt_down) == (0, "", 0)
    down = cs.parse_downlink('{"devEui": "0101010101010101", "fPort": 5}')
    assert down == cs.Downlink("0101010101010101", 5, b"", False, None)


def test_proto3_json_alternatives_are_accepted_as_protobuf_does() -> None:
    """Integers as strings, URL-safe or unpadded base64, offsets, upper-case EUIs."""
    raw = orjson.dumps(
        {
            "deviceInfo": {"devEui": "0101010101AbCdEf"},
            "fPort": "7",
            "fCnt": "4294967295",
            "dr": 3.0,
            "data": "-_8",  # URL-safe, unpadded: fb ff
            "time": "2022-07-18T11:34:15.5+02:00",
            "rxInfo": [{"rssi": "-100", "snr": "7.25"}],
        }
    )
    reference = pb_parse(raw, integration_pb2.UplinkEvent())
    uplink = cs.parse_uplink(raw)
    assert uplink.data == reference.data == b"\xfb\xff"
    assert (uplink.f_port, uplink.f_cnt, uplink.dr) == (
        reference.f_port,
        reference.f_cnt,
        reference.dr,
    )
    assert uplink.time_ms == reference.time.ToMilliseconds() == 1_658_136_855_500
    assert (uplink.rssi, uplink.snr) == (-100, 7.25)
    assert uplink.device.dev_eui == "0101010101abcdef"


# --- our output is the real format --------------------------------------------------------

texts = st.text(max_size=12)
euis = st.binary(min_size=8, max_size=8).map(bytes.hex)
mixed_case_euis = st.tuples(euis, st.booleans()).map(lambda e: e[0].upper() if e[1] else e[0])
devices = st.builds(
    cs.DeviceInfo,
    tenant_id=texts,
    application_id=texts,
    application_name=texts,
    device_profile_name=texts,
    device_name=texts,
    dev_eui=mixed_case_euis,
    tags=st.dictionaries(texts, texts, max_size=3),
)
finite_snr = st.floats(-40, 40, allow_nan=False, allow_infinity=False)
uuids = st.uuids().map(str)


def float32(value: float) -> float:
    """What a protobuf `float` field keeps of a double."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def assert_device(info: integration_pb2.DeviceInfo, device: cs.DeviceInfo) -> None:
    assert info.tenant_id == device.tenant_id
    assert info.application_id == device.application_id
    assert info.application_name == device.application_name
    assert info.device_profile_name == device.device_profile_name
    assert info.device_name == device.device_name
    assert info.dev_eui == device.dev_eui.lower()
    assert dict(info.tags) == dict(device.tags)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    device=devices,
    data=st.binary(max_size=242),
    f_port=st.integers(0, 255),
    f_cnt=st.integers(0, UINT32_MAX),
    dr=st.integers(0, 7),
    radio=st.none() | st.tuples(st.integers(-(2**31), 2**31 - 1), st.none() | finite_snr),
    gateway_id=st.just("") | mixed_case_euis,
    confirmed=st.booleans(),
    time_ms=st.integers(MIN_MS, MAX_MS),
)
@example(
    device=cs.DeviceInfo(dev_eui=EUI), data=b"", f_port=0, f_cnt=0, dr=0, radio=None,
    gateway_id="", confirmed=False, time_ms=0,
)  # fmt: skip
def test_built_uplink_is_an_uplink_event_and_round_trips(
    device: cs.DeviceInfo,
    data: bytes,
    f_port: int,
    f_cnt: int,
    dr: int,
    radio: tuple[int, float | None] | None,
    gateway_id: str,
    confirmed: bool,
    time_ms: int,
) -> None:
    rssi, snr = radio if radio is not None else (None, None)
    raw = cs.build_uplink(
        device, data, f_port, f_cnt, time_ms=time_ms, dr=dr, rssi=rssi, snr=snr,
        gateway_id=gateway_id, confirmed=confirmed,
    )  # fmt: skip
    event = pb_parse(raw, integration_pb2.UplinkEvent())
    assert_device(event.device_info, device)
    assert (event.f_port, event.f_cnt, event.dr, event.confirmed) == (f_port, f_cnt, dr, confirmed)
    assert event.data == data
    assert event.time.ToMilliseconds() == time_ms
    uuid.UUID(event.deduplication_id)
    lora = event.tx_info.modulation.lora
    if dr <= 5:
        assert (lora.spreading_factor, lora.bandwidth) == (12 - dr, 125_000)
    elif dr == 6:
        assert (lora.spreading_factor, lora.bandwidth) == (7, 250_000)
    else:
        assert event.tx_info.modulation.fsk.datarate == 50_000
    assert 863_000_000 <= event.tx_info.frequency <= 870_000_000
    if radio is None:
        assert len(event.rx_info) == 0
    else:
        (rx,) = event.rx_info
        assert rx.rssi == rssi
        assert rx.snr == float32(snr or 0.0)
        assert rx.gateway_id == gateway_id.lower()
    # proto3 JSON leaves zero and false out, as ChirpStack does.
    obj = orjson.loads(raw)
    for key, value in (
        ("fPort", f_port),
        ("fCnt", f_cnt),
        ("dr", dr),
        ("confirmed", confirmed),
        ("data", data),
    ):
        assert (key in obj) == bool(value), key
    # And ours reads back exactly what went in.
    assert cs.parse_uplink(raw) == cs.Uplink(
        event.deduplication_id,
        time_ms,
        device._replace(dev_eui=device.dev_eui.lower()),
        f_port,
        f_cnt,
        dr,
        confirmed,
        data,
        rssi,
        None if radio is None else (snr or 0.0),
        "" if radio is None else gateway_id.lower(),
    )


@settings(deadline=None, max_examples=150)
@given(
    device=devices,
    queue_item_id=uuids,
    acknowledged=st.booleans(),
    f_cnt_down=st.integers(0, UINT32_MAX),
    time_ms=st.integers(MIN_MS, MAX_MS),
)
def test_built_ack_is_an_ack_event_and_round_trips(
    device: cs.DeviceInfo, queue_item_id: str, acknowledged: bool, f_cnt_down: int, time_ms: int
) -> None:
    raw = cs.build_ack(device, queue_item_id, acknowledged, f_cnt_down, time_ms=time_ms)
    event = pb_parse(raw, integration_pb2.AckEvent())
    assert_device(event.device_info, device)
    assert (event.queue_item_id, event.acknowledged, event.f_cnt_down) == (
        queue_item_id,
        acknowledged,
        f_cnt_down,
    )
    assert event.time.ToMilliseconds() == time_ms
    ack = cs.parse_ack(raw)
    assert (ack.queue_item_id, ack.acknowledged, ack.f_cnt_down, ack.time_ms) == (
        queue_item_id,
        acknowledged,
        f_cnt_down,
        time_ms,
    )
    assert ack.deduplication_id == event.deduplication_id
    assert ack.device.dev_eui == device.dev_eui.lower()


@settings(deadline=None, max_examples=150)
@given(
    device=devices,
    queue_item_id=uuids,
    f_cnt_down=st.integers(0, UINT32_MAX),
    time_ms=st.integers(MIN_MS, MAX_MS),
    gateway_id=st.just("") | mixed_case_euis,
    downlink_id=st.integers(0, UINT32_MAX),
)
def test_built_txack_is_a_txack_event_and_round_trips(
    device: cs.DeviceInfo,
    queue_item_id: str,
    f_cnt_down: int,
    time_ms: int,
    gateway_id: str,
    downlink_id: int,
) -> None:
    raw = cs.build_txack(
        device,
        queue_item_id,
        f_cnt_down,
        time_ms=time_ms,
        gateway_id=gateway_id,
        downlink_id=downlink_id,
    )
    event = pb_parse(raw, integration_pb2.TxAckEvent())
    assert_device(event.device_info, device)
    assert (event.queue_item_id, event.f_cnt_down, event.gateway_id, event.downlink_id) == (
        queue_item_id,
        f_cnt_down,
        gateway_id.lower(),
        downlink_id,
    )
    assert event.time.ToMilliseconds() == time_ms
    assert event.tx_info.frequency == 869_525_000
    assert event.tx_info.modulation.lora.polarization_inversion
    txack = cs.parse_txack(raw)
    assert txack == cs.TxAck(
        downlink_id,
        time_ms,
        device._replace(dev_eui=device.dev_eui.lower()),
        queue_item_id,
        f_cnt_down,
        gateway_id.lower(),
    )


@settings(deadline=None, max_examples=150)
@given(
    dev_eui=mixed_case_euis,
    f_port=st.integers(1, 223),
    data=st.binary(max_size=242),
    confirmed=st.booleans(),
    command_id=st.none() | uuids,
)
def test_built_downlink_is_a_downlink_command_and_round_trips(
    dev_eui: str, f_port: int, data: bytes, confirmed: bool, command_id: str | None
) -> None:
    raw = cs.build_downlink(dev_eui, f_port, data, confirmed=confirmed, id=command_id)
    command = pb_parse(raw, integration_pb2.DownlinkCommand())
    assert (command.dev_eui, command.f_port, command.data, command.confirmed, command.id) == (
        dev_eui.lower(),
        f_port,
        data,
        confirmed,
        command_id or "",
    )
    # The documented shape: devEui, confirmed, fPort, data always; id only when given.
    keys = set(orjson.loads(raw))
    assert keys == {"devEui", "confirmed", "fPort", "data"} | ({"id"} if command_id else set())
    assert cs.parse_downlink(raw) == cs.Downlink(
        dev_eui.lower(), f_port, data, confirmed, command_id
    )


def test_built_events_are_deterministic_without_an_explicit_id() -> None:
    device = cs.DeviceInfo(application_id=APP, dev_eui=EUI)
    first = cs.build_uplink(device, b"\1", 10, 5, time_ms=1000)
    assert cs.build_uplink(device, b"\1", 10, 5, time_ms=1000) == first
    assert cs.build_uplink(device, b"\1", 10, 6, time_ms=1000) != first
    given_id = cs.build_uplink(device, b"\1", 10, 5, time_ms=1000, deduplication_id="dedup-1")
    assert cs.parse_uplink(given_id).deduplication_id == "dedup-1"
    ack = cs.build_ack(device, QUEUE_ID, True, 1, time_ms=1, deduplication_id="d")
    assert cs.parse_ack(ack).deduplication_id == "d"


# --- the real format is read right: chirpstack-api messages in, our types out -------------


@st.composite
def pb_timestamps(draw: st.DrawFn) -> timestamp_pb2.Timestamp | None:
    if draw(st.booleans()):
        return None
    return timestamp_pb2.Timestamp(
        seconds=draw(st.integers(MIN_MS // 1000, MAX_MS // 1000)),
        nanos=draw(st.sampled_from([0, 1_000_000, 999_999_999]) | st.integers(0, 999_999_999)),
    )


pb_device_infos = st.builds(
    integration_pb2.DeviceInfo,
    tenant_id=texts,
    tenant_name=texts,
    application_id=texts,
    application_name=texts,
    device_profile_id=texts,
    device_profile_name=texts,
    device_name=texts,
    dev_eui=mixed_case_euis,
    device_class_enabled=st.sampled_from(
        [common_pb2.CLASS_A, common_pb2.CLASS_B, common_pb2.CLASS_C]
    ),
    tags=st.dictionaries(texts, texts, max_size=3),
)

pb_rx_infos = st.builds(
    gw_pb2.UplinkRxInfo,
    gateway_id=euis,
    uplink_id=st.integers(0, UINT32_MAX),
    rssi=st.integers(-(2**31), 2**31 - 1),
    snr=finite_snr,
    channel=st.integers(0, 15),
    context=st.binary(max_size=8),
    metadata=st.dictionaries(texts, texts, max_size=2),
    crc_status=st.sampled_from([gw_pb2.CRC_OK, gw_pb2.NO_CRC]),
    location=st.builds(
        common_pb2.Location, latitude=st.floats(-90, 90), longitude=st.floats(-180, 180)
    ),
)


def with_time(message: Any, stamp: timestamp_pb2.Timestamp | None) -> Any:
    if stamp is not None:
        message.time.CopyFrom(stamp)
    return message


def expected_ms(stamp: timestamp_pb2.Timestamp | None) -> int | None:
    return None if stamp is None else stamp.seconds * 1000 + stamp.nanos // 1_000_000


def to_json(message: Any, explicit_defaults: bool) -> str:
    """protobuf's JSON, either proto3's default (zeros left out) or every field written."""
    return json_format.MessageToJson(
        message, always_print_fields_with_no_presence=explicit_defaults
    )


def our_device(info: integration_pb2.DeviceInfo) -> cs.DeviceInfo:
    return cs.DeviceInfo(
        info.tenant_id,
        info.application_id,
        info.application_name,
        info.device_profile_name,
        info.device_name,
        info.dev_eui.lower(),
        dict(info.tags),
    )


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    info=pb_device_infos,
    stamp=pb_timestamps(),
    dedup=st.just("") | uuids,
    dev_addr=st.just("") | st.binary(min_size=4, max_size=4).map(bytes.hex),
    adr=st.booleans(),
    dr=st.integers(0, 15),
    f_cnt=st.integers(0, UINT32_MAX),
    f_port=st.integers(0, 255),
    confirmed=st.booleans(),
    data=st.binary(max_size=242),
    rx_info=st.lists(pb_rx_infos, max_size=3),
    obj=st.dictionaries(
        texts, st.none() | st.booleans() | texts | st.integers(-1000, 1000), max_size=3
    ),
    explicit_defaults=st.booleans(),
)
def test_uplink_events_from_chirpstack_api_parse(
    info: integration_pb2.DeviceInfo,
    stamp: timestamp_pb2.Timestamp | None,
    dedup: str,
    dev_addr: str,
    adr: bool,
    dr: int,
    f_cnt: int,
    f_port: int,
    confirmed: bool,
    data: bytes,
    rx_info: list[gw_pb2.UplinkRxInfo],
    obj: dict[str, Any],
    explicit_defaults: bool,
) -> None:
    event = integration_pb2.UplinkEvent(
        deduplication_id=dedup, device_info=info, dev_addr=dev_addr, adr=adr, dr=dr,
        f_cnt=f_cnt, f_port=f_port, confirmed=confirmed, data=data, rx_info=rx_info,
        tx_info={"frequency": 868_100_000, "modulation": {"lora": {"bandwidth": 125_000}}},
        region_config_id="eu868",
    )  # fmt: skip
    event.object.update(obj)
    with_time(event, stamp)
    uplink = cs.parse_uplink(to_json(event, explicit_defaults))
    assert uplink._replace(snr=None) == cs.Uplink(
        dedup,
        expected_ms(stamp),
        our_device(info),
        f_port,
        f_cnt,
        dr,
        confirmed,
        data,
        max((rx.rssi for rx in rx_info), default=None),
        None,
        # The gateway that heard it best (the first of equals).
        max(rx_info, key=lambda rx: rx.rssi).gateway_id if rx_info else "",
    )
    # protobuf writes a `float` field in its shortest float32 form.
    best_snr = max((rx.snr for rx in rx_info), default=None)
    assert (uplink.snr if best_snr is None else float32(uplink.snr or 0.0)) == best_snr


@pytest.mark.parametrize("explicit_defaults", [False, True])
def test_an_all_default_event_needs_only_its_device(explicit_defaults: bool) -> None:
    bare = integration_pb2.UplinkEvent(device_info={"dev_eui": EUI})
    assert cs.parse_uplink(to_json(bare, explicit_defaults)) == cs.Uplink(
        "", None, cs.DeviceInfo(dev_eui=EUI), 0, 0, 0, False, b"", None, None
    )
    # Without deviceInfo there is no device to file the reading under.
    for message, parse in (
        (integration_pb2.UplinkEvent(), cs.parse_uplink),
        (integration_pb2.AckEvent(), cs.parse_ack),
        (integration_pb2.TxAckEvent(), cs.parse_txack),
    ):
        with pytest.raises(DecodeError) as caught:
            parse(to_json(message, explicit_defaults))
        assert caught.value.reason is R.BAD_ENVELOPE
        assert "deviceInfo" in caught.value.message


@settings(deadline=None, max_examples=150)
@given(
    info=pb_device_infos,
    stamp=pb_timestamps(),
    dedup=st.just("") | uuids,
    queue_item_id=st.just("") | uuids,
    acknowledged=st.booleans(),
    f_cnt_down=st.integers(0, UINT32_MAX),
    explicit_defaults=st.booleans(),
)
def test_ack_events_from_chirpstack_api_parse(
    info: integration_pb2.DeviceInfo,
    stamp: timestamp_pb2.Timestamp | None,
    dedup: str,
    queue_item_id: str,
    acknowledged: bool,
    f_cnt_down: int,
    explicit_defaults: bool,
) -> None:
    event = integration_pb2.AckEvent(
        deduplication_id=dedup, device_info=info, queue_item_id=queue_item_id,
        acknowledged=acknowledged, f_cnt_down=f_cnt_down,
    )  # fmt: skip
    with_time(event, stamp)
    assert cs.parse_ack(to_json(event, explicit_defaults)) == cs.Ack(
        dedup, expected_ms(stamp), our_device(info), queue_item_id, acknowledged, f_cnt_down
    )


@settings(deadline=None, max_examples=150)
@given(
    info=pb_device_infos,
    stamp=pb_timestamps(),
    downlink_id=st.integers(0, UINT32_MAX),
    queue_item_id=st.just("") | uuids,
    f_cnt_down=st.integers(0, UINT32_MAX),
    gateway_id=st.just("") | euis,
    explicit_defaults=st.booleans(),
)
def test_txack_events_from_chirpstack_api_parse(
    info: integration_pb2.DeviceInfo,
    stamp: timestamp_pb2.Timestamp | None,
    downlink_id: int,
    queue_item_id: str,
    f_cnt_down: int,
    gateway_id: str,
    explicit_defaults: bool,
) -> None:
    event = integration_pb2.TxAckEvent(
        downlink_id=downlink_id, device_info=info, queue_item_id=queue_item_id,
        f_cnt_down=f_cnt_down, gateway_id=gateway_id,
        tx_info={"frequency": 869_525_000, "power": 14, "timing": {"delay": {"delay": {"seconds": 1}}}},
    )  # fmt: skip
    with_time(event, stamp)
    assert cs.parse_txack(to_json(event, explicit_defaults)) == cs.TxAck(
        downlink_id, expected_ms(stamp), our_device(info), queue_item_id, f_cnt_down, gateway_id
    )


@settings(deadline=None, max_examples=150)
@given(
    dev_eui=mixed_case_euis,
    f_port=st.integers(1, 223),
    data=st.binary(max_size=242),
    confirmed=st.booleans(),
    command_id=st.just("") | st.uuids().map(lambda u: str(u).upper()),
    explicit_defaults=st.booleans(),
)
def test_downlink_commands_from_chirpstack_api_parse(
    dev_eui: str,
    f_port: int,
    data: bytes,
    confirmed: bool,
    command_id: str,
    explicit_defaults: bool,
) -> None:
    command = integration_pb2.DownlinkCommand(
        id=command_id, dev_eui=dev_eui, confirmed=confirmed, f_port=f_port, data=data
    )
    # The id comes back canonical, the form ChirpStack returns as queueItemId.
    assert cs.parse_downlink(to_json(command, explicit_defaults)) == cs.Downlink(
        dev_eui.lower(), f_port, data, confirmed, command_id.lower() or None
    )


# --- RFC 3339 time ------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(
    seconds=st.integers(MIN_MS // 1000 + 86_400, MAX_MS // 1000 - 86_400),
    nanos=st.integers(0, 999_999_999),
    digits=st.integers(0, 9),
    offset_minutes=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    zulu=st.booleans(),
    lower=st.booleans(),
)
@example(seconds=0, nanos=0, digits=0, offset_minutes=0, zulu=True, lower=False)
@example(seconds=-1, nanos=999_999_999, digits=9, offset_minutes=0, zulu=True, lower=False)
def test_time_is_epoch_ms_floored_for_any_precision_and_offset(
    seconds: int, nanos: int, digits: int, offset_minutes: int, zulu: bool, lower: bool
) -> None:
    nanos = nanos // 10 ** (9 - digits) * 10 ** (9 - digits)  # what `digits` digits can say
    offset = timedelta(minutes=0 if zulu else offset_minutes)
    local = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds) + offset
    text = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    if digits:
        text += "." + f"{nanos:09d}"[:digits]
    if zulu:
        text += "Z"
    else:
        sign = "-" if offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(offset_minutes), 60)
        text += f"{sign}{hours:02d}:{minutes:02d}"
    expected = seconds * 1000 + nanos // 1_000_000
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    assert stamp.ToMilliseconds() == expected  # the reference agrees with the arithmetic
    if lower:
        text = text.lower()  # RFC 3339 allows t and z
    event = orjson.dumps({"time": text, "deviceInfo": {"devEui": EUI}})
    assert cs.parse_uplink(event).time_ms == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T19:07:53.123456Z", 1_795_633_673_123),
        ("2026-11-25T19:07:53Z", 1_795_633_673_000),
        ("2026-11-25T20:07:53.123456789+01:00", 1_795_633_673_123),
        ("2026-11-25T19:07:53.9999999999-00:00", 1_795_633_673_999),
        ("1969-12-31T23:59:59.9995Z", -1),
    ],
)
def test_time_examples(text: str, expected: int) -> None:
    assert (
        cs.parse_uplink(orjson.dumps({"time": text, "deviceInfo": {"devEui": EUI}})).time_ms
        == expected
    )


# --- bad input ----------------------------------------------------------------------------


def uplink_with(path: str, value: Any) -> bytes:
    """FULL_UPLINK with one field (dotted path, `rxInfo.0.rssi`) replaced or, for ..., removed."""
    event = orjson.loads(FULL_UPLINK)
    *parents, last = path.split(".")
    node: Any = event
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    slot: int | str = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[slot]
    else:
        node[slot] = value
    return json.dumps(event).encode()  # not orjson: it refuses integers past 64 bits


BAD_UPLINKS: list[tuple[bytes | str, DeadLetterReason, str]] = [
    (b"", R.BAD_JSON, "JSON"),
    (b"{", R.BAD_JSON, "JSON"),
    ("not json", R.BAD_JSON, "JSON"),
    (b"\xff\xfe{}", R.BAD_JSON, "JSON"),
    (b"[]", R.BAD_JSON, "object"),
    (b"42", R.BAD_JSON, "object"),
    (b"null", R.BAD_JSON, "object"),
    (b'"up"', R.BAD_JSON, "object"),
    (uplink_with("deviceInfo", ...), R.BAD_ENVELOPE, "deviceInfo"),
    (uplink_with("deviceInfo", "0101010101010101"), R.BAD_ENVELOPE, "deviceInfo"),
    (uplink_with("deviceInfo.devEui", ...), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.devEui", "010101010101010"), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.devEui", "01010101010101010"), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.devEui", "zz01010101010101"), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.devEui", "AQEBAQEBAQE="), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.devEui", 101010101010101), R.BAD_ENVELOPE, "deviceInfo.devEui"),
    (uplink_with("deviceInfo.deviceName", 3), R.BAD_ENVELOPE, "deviceInfo.deviceName"),
    (uplink_with("deviceInfo.applicationId", ["x"]), R.BAD_ENVELOPE, "deviceInfo.applicationId"),
    (uplink_with("deviceInfo.tags", ["key"]), R.BAD_ENVELOPE, "deviceInfo.tags"),
    (uplink_with("deviceInfo.tags", {"key": 1}), R.BAD_ENVELOPE, "deviceInfo.tags"),
    (uplink_with("fPort", 256), R.BAD_ENVELOPE, "fPort must be an integer 0..255, got 256"),
    (uplink_with("fPort", -1), R.BAD_ENVELOPE, "fPort"),
    (uplink_with("fPort", "x"), R.BAD_ENVELOPE, "fPort must be an integer 0..255, got 'x'"),
    (uplink_with("fPort", 1.5), R.BAD_ENVELOPE, "fPort"),
    (uplink_with("fPort", True), R.BAD_ENVELOPE, "fPort"),
    (uplink_with("fPort", {}), R.BAD_ENVELOPE, "fPort"),
    (uplink_with("fCnt", -1), R.BAD_ENVELOPE, "fCnt"),
    (uplink_with("fCnt", 2**32), R.BAD_ENVELOPE, "fCnt"),
    (uplink_with("fCnt", "1e3"), R.BAD_ENVELOPE, "fCnt"),
    (uplink_with("fCnt", 1e30), R.BAD_ENVELOPE, "fCnt"),
    (uplink_with("dr", 16), R.BAD_ENVELOPE, "dr"),
    (uplink_with("confirmed", "yes"), R.BAD_ENVELOPE, "confirmed"),
    (uplink_with("confirmed", 1), R.BAD_ENVELOPE, "confirmed"),
    (uplink_with("deduplicationId", 5), R.BAD_ENVELOPE, "deduplicationId"),
    (uplink_with("time", "yesterday"), R.BAD_ENVELOPE, "time"),
    (uplink_with("time", "2026-13-01T00:00:00Z"), R.BAD_ENVELOPE, "time"),
    (uplink_with("time", "2026-02-29T00:00:00Z"), R.BAD_ENVELOPE, "time"),
    (uplink_with("time", "2026-11-25T24:00:00Z"), R.BAD_ENVELOPE, "time"),
    (uplink_with("time", "2026-11-25T19:07:53"), R.BAD_ENVELOPE, "time"),  # no offset
    (uplink_with("time", ""), R.BAD_ENVELOPE, "time"),
    (uplink_with("time", 1_658_136_855), R.BAD_ENVELOPE, "time"),
    (uplink_with("rxInfo", {}), R.BAD_ENVELOPE, "rxInfo"),
    (uplink_with("rxInfo", [1]), R.BAD_ENVELOPE, "rxInfo"),
    (uplink_with("rxInfo.0.rssi", "loud"), R.BAD_ENVELOPE, "rxInfo.rssi"),
    (uplink_with("rxInfo.0.rssi", 2**31), R.BAD_ENVELOPE, "rxInfo.rssi"),
    (uplink_with("rxInfo.0.snr", "NaN"), R.BAD_ENVELOPE, "rxInfo.snr"),
    (uplink_with("rxInfo.0.snr", "Infinity"), R.BAD_ENVELOPE, "rxInfo.snr"),
    (uplink_with("rxInfo.0.snr", [1]), R.BAD_ENVELOPE, "rxInfo.snr"),
    (uplink_with("data", 12), R.BAD_ENVELOPE, "data"),
    (uplink_with("data", "!!!!"), R.BAD_BASE64, "data"),
    (uplink_with("data", "a"), R.BAD_BASE64, "data"),
    (uplink_with("data", "qg=a"), R.BAD_BASE64, "data"),
    (uplink_with("data", "qg== "), R.BAD_BASE64, "data"),
    (uplink_with("data", "qé=="), R.BAD_BASE64, "data"),
]


@pytest.mark.parametrize(("raw", "reason", "names"), BAD_UPLINKS)
def test_bad_uplinks_are_refused_with_their_reason(
    raw: bytes | str, reason: DeadLetterReason, names: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        cs.parse_uplink(raw)
    assert caught.value.reason is reason
    assert names in caught.value.message


def test_the_bad_uplink_table_starts_from_a_good_event() -> None:
    assert cs.parse_uplink(uplink_with("fPort", 2)).f_port == 2


DEVICE = {"devEui": EUI}


@pytest.mark.parametrize(
    ("parse", "event", "names"),
    [
        (cs.parse_ack, {"deviceInfo": DEVICE, "acknowledged": "true"}, "acknowledged"),
        (cs.parse_ack, {"deviceInfo": DEVICE, "fCntDown": -1}, "fCntDown"),
        (cs.parse_ack, {"deviceInfo": DEVICE, "queueItemId": 7}, "queueItemId"),
        (cs.parse_ack, {"deviceInfo": {}}, "deviceInfo.devEui"),
        (cs.parse_ack, {"deviceInfo": DEVICE, "time": "noon"}, "time"),
        (cs.parse_txack, {"deviceInfo": DEVICE, "downlinkId": -1}, "downlinkId"),
        (cs.parse_txack, {"deviceInfo": DEVICE, "downlinkId": 2**32}, "downlinkId"),
        (cs.parse_txack, {"deviceInfo": DEVICE, "gatewayId": 1}, "gatewayId"),
        (cs.parse_txack, {"deviceInfo": DEVICE, "fCntDown": "x"}, "fCntDown"),
        (cs.parse_downlink, {"fPort": 1, "data": ""}, "devEui"),
        (cs.parse_downlink, {"devEui": "0102", "fPort": 1}, "devEui"),
        (cs.parse_downlink, {"devEui": EUI}, "fPort must be an integer 1..223, got nothing"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 0}, "fPort must be an integer 1..223"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 224}, "fPort"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 1, "confirmed": "true"}, "confirmed"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 1, "id": "command-1"}, "id must be a UUID"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 1, "id": 5}, "id"),
        (cs.parse_downlink, {"devEui": EUI, "fPort": 1, "data": []}, "data"),
    ],
)
def test_bad_acks_txacks_and_downlinks_are_refused(
    parse: Any, event: dict[str, Any], names: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        parse(orjson.dumps(event))
    assert caught.value.reason is R.BAD_ENVELOPE
    assert names in caught.value.message


@pytest.mark.parametrize("parse", [cs.parse_ack, cs.parse_txack, cs.parse_downlink])
def test_every_parser_refuses_non_json_and_bad_base64(parse: Any) -> None:
    for raw in (b"{", b"[1]"):
        with pytest.raises(DecodeError) as caught:
            parse(raw)
        assert caught.value.reason is R.BAD_JSON
    with pytest.raises(DecodeError) as caught:
        cs.parse_downlink(orjson.dumps({"devEui": EUI, "fPort": 1, "data": "*"}))
    assert caught.value.reason is R.BAD_BASE64


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
@pytest.mark.parametrize("pad", [True, False])
@settings(deadline=None)
@given(data=st.binary(max_size=64))
def test_base64_variants_protobuf_accepts_decode_the_same(
    encode: Any, pad: bool, data: bytes
) -> None:
    text = encode(data).decode()
    if not pad:
        text = text.rstrip("=")
    raw = orjson.dumps({"deviceInfo": DEVICE, "data": text})
    assert cs.parse_uplink(raw).data == pb_parse(raw, integration_pb2.UplinkEvent()).data == data


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=500)
@given(raw=st.binary(max_size=300))
@example(raw=FULL_UPLINK.encode()[:-1])
def test_arbitrary_bytes_raise_only_decode_error(raw: bytes) -> None:
    for parse in (cs.parse_uplink, cs.parse_ack, cs.parse_txack, cs.parse_downlink):
        with contextlib.suppress(DecodeError):
            parse(raw)


FIELD_PATHS = [
    "deduplicationId", "time", "deviceInfo", "deviceInfo.devEui", "deviceInfo.tags",
    "deviceInfo.tenantId", "deviceInfo.tags.key", "dr", "fCnt", "fPort", "confirmed", "data",
    "rxInfo", "rxInfo.0", "rxInfo.0.rssi", "rxInfo.0.snr", "txInfo", "object",
]  # fmt: skip


@settings(deadline=None, max_examples=500)
@given(path=st.sampled_from(FIELD_PATHS), value=json_values)
def test_any_json_in_any_field_raises_only_decode_error(path: str, value: Any) -> None:
    raw = uplink_with(path, value)
    try:
        uplink = cs.parse_uplink(raw)
    except DecodeError as exc:
        assert exc.reason in (R.BAD_ENVELOPE, R.BAD_BASE64)
    else:
        assert len(uplink.device.dev_eui) == 16
        assert 0 <= uplink.f_port <= 255
    for parse in (cs.parse_ack, cs.parse_txack, cs.parse_downlink):
        try:
            mixed = {"deviceInfo": value, "devEui": value, "fPort": value, "id": value}
            parse(json.dumps(mixed))
        except DecodeError:
            pass


# --- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "event/up", "event/ack", "event/txack", "event/log", "event/integration",
        "state/join", "state/status", "state/location", "command/down",
    ],
)  # fmt: skip
def test_parse_topic_of_every_kind(kind: str) -> None:
    topic = cs.parse_topic(f"application/{APP}/device/0016C001F153A14C/{kind}")
    assert topic == cs.Topic(APP, EUI, kind)


def test_topic_builders_name_their_kind() -> None:
    builders = {
        cs.uplink_topic: cs.KIND_UP,
        cs.ack_topic: cs.KIND_ACK,
        cs.txack_topic: cs.KIND_TXACK,
        cs.downlink_topic: cs.KIND_DOWN,
    }
    for build, kind in builders.items():
        topic = build(APP, EUI.upper())
        assert topic == f"application/{APP}/device/{EUI}/{kind}"
        assert cs.parse_topic(topic) == cs.Topic(APP, EUI, kind)


@settings(deadline=None)
@given(
    application_id=st.text(min_size=1, max_size=40).filter(lambda s: not set(s) & set("/+#\0")),
    dev_eui=mixed_case_euis,
)
def test_topics_round_trip(application_id: str, dev_eui: str) -> None:
    assert cs.parse_topic(cs.uplink_topic(application_id, dev_eui)) == cs.Topic(
        application_id, dev_eui.lower(), cs.KIND_UP
    )


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "application",
        f"application/{APP}/device/{EUI}/event",
        f"application/{APP}/device/{EUI}/event/",
        f"application/{APP}/device/{EUI}/event/up/",
        f"application/{APP}/device/{EUI}/event/up/extra",
        f"/application/{APP}/device/{EUI}/event/up",
        f"applications/{APP}/device/{EUI}/event/up",
        f"application//device/{EUI}/event/up",
        f"application/{APP}/gateway/{EUI}/event/up",
        f"application/{APP}/device/{EUI}/events/up",
        f"application/{APP}/device/{EUI}/up/event",
        f"application/{APP}/device/{EUI[:-1]}/event/up",
        f"application/{APP}/device/{EUI}0/event/up",
        f"application/{APP}/device/zz16c001f153a14c/event/up",
        f"application/{APP}/device//event/up",
        f"$share/primary/application/{APP}/device/{EUI}/event/up",
        f"gateway/{EUI}/event/up",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(DecodeError) as caught:
        cs.parse_topic(topic)
    assert caught.value.reason is R.BAD_TOPIC


def test_a_topic_that_is_not_text_is_a_bad_topic() -> None:
    with pytest.raises(DecodeError) as caught:
        cs.parse_topic(b"application/a/device/0016c001f153a14c/event/up")  # type: ignore[arg-type]
    assert caught.value.reason is R.BAD_TOPIC


@pytest.mark.parametrize(
    ("application_id", "dev_eui"),
    [
        ("", EUI),
        ("a/b", EUI),
        ("+", EUI),
        ("#", EUI),
        (APP, "0016c001f153a14"),
        (APP, "+"),
        (APP, 5),
    ],
)
def test_topic_builders_refuse_what_cannot_be_a_topic(application_id: str, dev_eui: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        cs.uplink_topic(application_id, dev_eui)


# --- builders refuse bad arguments --------------------------------------------------------

DEV = cs.DeviceInfo(application_id=APP, dev_eui=EUI)


def untyped(value: object) -> Any:
    """A wrong-typed argument, as an untyped caller could pass it."""
    return value


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: cs.build_downlink(EUI, 0, b""), "f_port"),
        (lambda: cs.build_downlink(EUI, 224, b""), "f_port"),
        (lambda: cs.build_downlink(EUI, True, b""), "f_port"),
        (lambda: cs.build_downlink(EUI, untyped("10"), b""), "f_port"),
        (lambda: cs.build_downlink("0102", 10, b""), "dev_eui"),
        (lambda: cs.build_downlink("g016c001f153a14c", 10, b""), "dev_eui"),
        (lambda: cs.build_downlink(EUI, 10, untyped("text")), "data"),
        (lambda: cs.build_downlink(EUI, 10, b"", id="command-1"), "id"),
        (lambda: cs.build_downlink(EUI, 10, b"", id=QUEUE_ID.upper()), "id"),
        (lambda: cs.build_downlink(EUI, 10, b"", id=QUEUE_ID.replace("-", "")), "id"),
        (lambda: cs.build_uplink(DEV, b"", 256, 0, time_ms=0), "f_port"),
        (lambda: cs.build_uplink(DEV, b"", 1, -1, time_ms=0), "f_cnt"),
        (lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=0, dr=8), "dr"),
        (lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=0, snr=5.0), "snr"),
        (lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=0, rssi=-1, snr=float("nan")), "snr"),
        (
            lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=0, rssi=-1, gateway_id="gw"),
            "gateway_id",
        ),
        (lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=MAX_MS + 1), "time_ms"),
        (lambda: cs.build_uplink(DEV, b"", 1, 0, time_ms=untyped(1.5)), "time_ms"),
        (lambda: cs.build_uplink(cs.DeviceInfo(), b"", 1, 0, time_ms=0), "dev_eui"),
        (lambda: cs.build_ack(DEV, "q1", True, 1, time_ms=0), "queue_item_id"),
        (lambda: cs.build_ack(DEV, QUEUE_ID, True, -1, time_ms=0), "f_cnt_down"),
        (
            lambda: cs.build_txack(DEV, QUEUE_ID, 1, time_ms=0, gateway_id="x", downlink_id=1),
            "gateway_id",
        ),
        (
            lambda: cs.build_txack(DEV, QUEUE_ID, 1, time_ms=0, gateway_id=EUI, downlink_id=-1),
            "downlink_id",
        ),
    ],
)
def test_builders_refuse_bad_arguments(call: Any, names: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    assert names in caught.value.message


# --- the parsed values are ordinary frozen dataclasses ------------------------------------


def test_parsed_values_are_immutable_and_pickle() -> None:
    uplink = cs.parse_uplink(FULL_UPLINK)
    topic = cs.parse_topic(cs.uplink_topic(APP, EUI))
    assert (
        type(uplink) is cs.Uplink
        and type(uplink.device) is cs.DeviceInfo
        and type(topic) is cs.Topic
    )
    for value, name in ((uplink, "f_port"), (uplink.device, "dev_eui"), (topic, "kind")):
        with pytest.raises(AttributeError):
            setattr(value, name, 1)
    rebuilt = cs.Uplink(**uplink._asdict())
    assert rebuilt == uplink
    assert uplink._replace(f_port=9).f_port == 9 and uplink.f_port != 9
    # Events travel between processes (Ray): they pickle.
    assert pickle.loads(pickle.dumps(uplink)) == uplink
    assert pickle.loads(pickle.dumps(topic)) == topic


def test_ip_device_uplink_has_no_radio_fields() -> None:
    info = cs.DeviceInfo(application_id=APP, dev_eui=EUI)
    event = orjson.loads(cs.build_uplink(info, b"\x01\x00\x01", 18, 4, time_ms=0, dr=None))
    assert not {"dr", "txInfo", "rxInfo", "regionConfigId"} & set(event)
    json_format.Parse(orjson.dumps(event), integration_pb2.UplinkEvent())
    assert cs.parse_uplink(orjson.dumps(event)).f_cnt == 4


# --- event/log and the txack's radio parameters ----------------------------------------------


@settings(deadline=None, max_examples=100)
@given(
    device=devices,
    time_ms=st.integers(MIN_MS, MAX_MS),
    level=st.sampled_from(sorted(cs.LOG_LEVELS)),
    code=st.sampled_from(sorted(cs.LOG_CODES)),
    description=st.just("") | texts,
    context=st.dictionaries(texts, texts, max_size=3),
)
def test_built_log_is_a_chirpstack_log_event_and_round_trips(
    device: cs.DeviceInfo,
    time_ms: int,
    level: str,
    code: str,
    description: str,
    context: dict[str, str],
) -> None:
    raw = cs.build_log(
        device, level=level, code=code, description=description, context=context, time_ms=time_ms
    )
    event = pb_parse(raw, integration_pb2.LogEvent())  # the independent reference
    assert_device(event.device_info, device)
    assert integration_pb2.LogLevel.Name(event.level) == level
    assert integration_pb2.LogCode.Name(event.code) == code
    assert (event.description, dict(event.context)) == (description, context)
    parsed = cs.parse_log(raw)
    assert parsed == cs.LogEvent(
        time_ms, device._replace(dev_eui=device.dev_eui.lower()), level, code, description, context
    )


def test_log_events_from_chirpstack_api_parse() -> None:
    event = integration_pb2.LogEvent(
        level=integration_pb2.LogLevel.ERROR,
        code=integration_pb2.LogCode.DOWNLINK_GATEWAY,
        description="DUTY_CYCLE_OVERFLOW",
        context={"queue_item_id": "2a1f2fd0-7a3b-4c1e-9d54-8f0e4b6c1a22"},
    )
    event.device_info.dev_eui = EUI
    parsed = cs.parse_log(json_format.MessageToJson(event))
    assert (parsed.level, parsed.code, parsed.description) == (
        "ERROR",
        "DOWNLINK_GATEWAY",
        "DUTY_CYCLE_OVERFLOW",
    )
    assert parsed.context == {"queue_item_id": "2a1f2fd0-7a3b-4c1e-9d54-8f0e4b6c1a22"}
    # proto3 leaves INFO and UNKNOWN (the zeros) out of the JSON.
    quiet = integration_pb2.LogEvent()
    quiet.device_info.dev_eui = EUI
    assert cs.parse_log(json_format.MessageToJson(quiet))[2:4] == ("INFO", "UNKNOWN")


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b'{"deviceInfo": {"devEui": "0101010101010101"}, "level": "LOUD"}', "level"),
        (b'{"deviceInfo": {"devEui": "0101010101010101"}, "code": "NOPE"}', "code"),
        (b'{"deviceInfo": {"devEui": "0101010101010101"}, "context": {"a": 1}}', "context"),
    ],
)
def test_a_malformed_log_event_is_a_bad_envelope(raw: bytes, what: str) -> None:
    with pytest.raises(DecodeError) as caught:
        cs.parse_log(raw)
    assert caught.value.reason is DeadLetterReason.BAD_ENVELOPE and what in caught.value.message


@pytest.mark.parametrize(("dr", "sf", "bw"), [(0, 12, 125_000), (3, 9, 125_000), (6, 7, 250_000)])
def test_a_txack_tells_the_frequency_and_data_rate_it_went_on_air_with(
    dr: int, sf: int, bw: int
) -> None:
    raw = cs.build_txack(
        cs.DeviceInfo(dev_eui=EUI),
        "2a1f2fd0-7a3b-4c1e-9d54-8f0e4b6c1a22",
        1,
        time_ms=1_700_000_000_000,
        gateway_id="0016c001f1000001",
        downlink_id=7,
        frequency_hz=868_100_000,
        dr=dr,
        immediately=True,
    )
    event = pb_parse(raw, integration_pb2.TxAckEvent())
    lora = event.tx_info.modulation.lora
    assert (event.tx_info.frequency, lora.spreading_factor, lora.bandwidth) == (868_100_000, sf, bw)
    assert event.tx_info.timing.WhichOneof("parameters") == "immediately"
