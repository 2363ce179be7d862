"""The PKI's certificates and CRL checked by an independent implementation: openssl."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from security import pki
from security.pki import Kind, Principal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def openssl_verify(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", *args], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )


def test_openssl_accepts_the_chain_and_refuses_a_revoked_certificate(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    root = pki.create_root("dijon", now=now)
    issuing = pki.create_issuing(root, "dijon", now=now)
    post = pki.issue(issuing, Principal("dijon", Kind.POST, "primary"), now=now)
    gate = pki.issue(issuing, Principal("dijon", Kind.GATE, "gate"), now=now)
    crl = pki.revocation_list(issuing, [(gate.cert.serial_number, now)], now=now)
    for name, pem in [
        ("root.pem", root.cert_pem),
        ("issuing.pem", issuing.cert_pem),
        ("post.pem", post.cert_pem),
        ("gate.pem", gate.cert_pem),
        ("crl.pem", crl),
    ]:
        (tmp_path / name).write_bytes(pem)
    chain = ["-CAfile", "root.pem", "-untrusted", "issuing.pem"]
    ok = openssl_verify(tmp_path, *chain, "-purpose", "sslserver", "post.pem")
    assert ok.returncode == 0 and "post.pem: OK" in ok.stdout, ok.stderr
    # With the CRL: the post still verifies, the revoked gate does not.
    crl_check = [*chain, "-crl_check", "-CRLfile", "crl.pem"]
    assert openssl_verify(tmp_path, *crl_check, "post.pem").returncode == 0
    revoked = openssl_verify(tmp_path, *crl_check, "gate.pem")
    assert revoked.returncode != 0 and "revoked" in (revoked.stdout + revoked.stderr)
    # A client-only kind is no server for openssl either.
    console = pki.issue(issuing, Principal("dijon", Kind.CONSOLE, "op-claire"), now=now)
    (tmp_path / "console.pem").write_bytes(console.cert_pem)
    assert openssl_verify(tmp_path, *chain, "-purpose", "sslserver", "console.pem").returncode != 0
    assert openssl_verify(tmp_path, *chain, "-purpose", "sslclient", "console.pem").returncode == 0
