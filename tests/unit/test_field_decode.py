import pytest

from bridges import chirpstack
from bridges.field_decode import decode_event, decode_lpp
from citypost.errors import DeadLetterReason, DecodeError
from cluster.cli import main

pytestmark = pytest.mark.unit


def test_design_vector_decodes_as_plain_lpp() -> None:
    result = decode_lpp("03 67 01 10 05 67 00 FF")
    assert result["lpp"] == [
        {"channel": 3, "type": "temperature", "value": [27.2]},
        {"channel": 5, "type": "temperature", "value": [25.5]},
    ]
    assert "reading" not in result


def test_payload_with_a_class_decodes_into_its_reading() -> None:
    result = decode_lpp("01 03 0B B8 02 66 03", asset_class="street_lamp")
    assert result["reading"] == {"brightness_pct": 30.0, "presence_count": 3}


def test_a_lamp_payload_shows_the_profile_it_runs() -> None:
    # ch 1 brightness 30 %, ch 6 profile id 0xC278 = 49784 (illuminance: unsigned 16-bit).
    result = decode_lpp("01 03 0B B8 06 65 C2 78", f_port=10)
    assert result["asset_classes"] == ["street_lamp"]
    assert result["reading"] == {"brightness_pct": 30.0, "profile_id": 49784}
    assert result["lpp"][1] == {"channel": 6, "type": "illuminance", "value": [49784.0]}


def test_event_decodes_by_its_fport() -> None:
    info = chirpstack.DeviceInfo(application_id="app", dev_eui="0011223344556677")
    raw = chirpstack.build_uplink(info, bytes.fromhex("016601"), 14, 3, time_ms=0)
    result = decode_event(raw)
    assert result["devEui"] == "0011223344556677"
    assert result["asset_classes"] == ["parking_spot"]
    assert result["reading"] == {"occupied": True}


def test_unknown_class_and_port_are_explained() -> None:
    with pytest.raises(DecodeError, match="known: street_lamp"):
        decode_lpp("01 00 01", asset_class="teapot")
    with pytest.raises(DecodeError) as caught:
        decode_lpp("01 00 01", f_port=77)
    assert caught.value.reason is DeadLetterReason.WRONG_FPORT


def test_cli_prints_reading_or_dead_letter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "decode", "--lpp", "01 67 FF D7"]) == 0
    assert '"value": [\n        -4.1' in capsys.readouterr().out
    assert main(["edge", "decode", "--lpp", "01 67 FF"]) == 1
    out = capsys.readouterr().out
    assert '"reason": "bad_lpp"' in out
    assert main(["edge", "decode", "--lpp", "zz"]) == 1
