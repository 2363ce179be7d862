"""`citypost pki` as an integrator runs it: issue, rotate, revoke, list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from cluster.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_issue_rotate_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = ["--dir", str(tmp_path)]
    assert main(["pki", "init", *pki]) == 0
    assert main(["pki", "issue", "network-server", "lns-2", *pki]) == 0
    cert = tmp_path / "issued" / "network-server.lns-2.crt"
    first = _serial(cert)
    assert main(["pki", "issue", "network-server", "lns-2", "--days", "10", *pki]) == 0
    second = _serial(cert)
    assert second != first
    assert main(["pki", "revoke", "network-server", "lns-2", *pki]) == 0
    capsys.readouterr()
    assert main(["pki", "list", "--json", *pki]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["serial"], e["revoked_at"] is not None) for e in listed] == [
        (first, True),
        (second, True),
    ]
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert {r.serial_number for r in crl} == {first, second}


def test_refusals_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = ["--dir", str(tmp_path)]
    assert main(["pki", "issue", "device", "bus-1", *pki]) == 2
    assert "DevEUI" in capsys.readouterr().err
    assert main(["pki", "revoke", "gate", "nobody", *pki]) == 2
    assert "no unrevoked certificate" in capsys.readouterr().err
