"""The PKI store on disk: init once, issue and rotate, ensure, revoke into the CRL."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from citypost.errors import ConfigError, InvalidArgumentError
from security.pki import Kind, Principal, principal_of
from security.pki_store import PkiStore

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
GATE = Principal("dijon", Kind.GATE, "gate")


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_init_once_and_issue_files(tmp_path: Path) -> None:
    store = PkiStore(tmp_path / "pki", "dijon")
    assert store.init(now=NOW) is True
    ca = store.ca_cert.read_bytes()
    assert store.init(now=NOW) is False  # a second init keeps the CA
    assert store.ca_cert.read_bytes() == ca
    found = store.issue(GATE, now=NOW)
    cert = x509.load_pem_x509_certificate(found.cert.read_bytes())
    assert principal_of(cert) == GATE
    assert stat.S_IMODE(found.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki" / "ca.key").stat().st_mode) == 0o600
    assert store.identity(GATE) == found
    assert [e.common_name for e in store.entries()] == ["gate.gate"]


def test_issue_again_rotates(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    store.init(now=NOW)
    first = _serial(store.issue(GATE, now=NOW).cert)
    second = _serial(store.issue(GATE, now=NOW).cert)
    assert first != second
    assert [e.serial for e in store.entries()] == [first, second]
    assert store.principals() == [GATE]


def test_ensure_keeps_a_fresh_certificate_and_renews_an_old_one(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    store.init(now=NOW)
    serial = _serial(store.ensure(GATE, now=NOW).cert)
    assert _serial(store.ensure(GATE, now=NOW + timedelta(days=1)).cert) == serial
    # 90-day life: at day 70 fewer than 30 days remain
    assert _serial(store.ensure(GATE, now=NOW + timedelta(days=70)).cert) != serial
    # a 30-day workstation certificate is kept through its first 20 days (a bug renewed
    # it on every call, which broke the tokens bound to it)
    room = Principal("dijon", Kind.CONSOLE, "room")
    first = _serial(store.ensure(room, now=NOW).cert)
    assert _serial(store.ensure(room, now=NOW + timedelta(days=19)).cert) == first
    assert _serial(store.ensure(room, now=NOW + timedelta(days=21)).cert) != first


def test_revoke_lists_serial_in_crl_and_ensure_reissues(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    store.init(now=NOW)
    serial = _serial(store.issue(GATE, now=NOW).cert)
    assert store.revoke(GATE, now=NOW) == [serial]
    crl = x509.load_pem_x509_crl(store.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert store.revoked_serials() == {serial}
    assert store.principals() == []
    with pytest.raises(InvalidArgumentError, match="no unrevoked certificate"):
        store.revoke(GATE, now=NOW)
    assert _serial(store.ensure(GATE, now=NOW).cert) != serial


def test_ensure_signs_the_crl_again_before_it_expires(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    store.init(now=NOW)
    before = x509.load_pem_x509_crl(store.crl.read_bytes()).next_update_utc
    store.ensure(GATE, now=NOW + timedelta(days=6))
    after = x509.load_pem_x509_crl(store.crl.read_bytes()).next_update_utc
    assert before is not None and after is not None and after > before


def test_refresh_crl_signs_again_only_when_its_next_update_is_near(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    store.init(now=NOW)
    assert not store.refresh_crl(now=NOW + timedelta(days=1))
    assert store.refresh_crl(now=NOW + timedelta(days=5))  # within CRL_RENEW_BEFORE of day 7
    renewed = x509.load_pem_x509_crl(store.crl.read_bytes()).next_update_utc
    assert renewed is not None and renewed > NOW + timedelta(days=10)
    assert not store.refresh_crl(now=NOW + timedelta(days=5, hours=1))


def test_missing_identity_and_ca_are_config_errors(tmp_path: Path) -> None:
    store = PkiStore(tmp_path, "dijon")
    with pytest.raises(ConfigError, match="citypost pki init"):
        store.issue(GATE, now=NOW)
    store.init(now=NOW)
    with pytest.raises(ConfigError, match="citypost pki issue gate gate"):
        store.identity(GATE)
    with pytest.raises(InvalidArgumentError, match="city"):
        store.issue(Principal("lyon", Kind.GATE, "gate"), now=NOW)


def test_device_common_name_is_its_dev_eui() -> None:
    assert Principal("dijon", Kind.DEVICE, "0011223344556677").common_name == "0011223344556677"
    with pytest.raises(InvalidArgumentError, match="DevEUI"):
        Principal("dijon", Kind.DEVICE, "bus-12")


def test_open_reads_the_city_from_the_ca(tmp_path: Path) -> None:
    PkiStore(tmp_path, "dijon").init(now=NOW)
    assert PkiStore.open(tmp_path).city == "dijon"
    with pytest.raises(ConfigError, match="no city PKI"):
        PkiStore.open(tmp_path / "elsewhere")
