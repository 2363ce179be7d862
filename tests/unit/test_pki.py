"""The city's PKI: chains that verify, names where etcd, mosquitto and gRPC look, a CRL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from citypost.errors import InvalidArgumentError
from security import pki
from security.pki import Kind, Principal

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cas() -> tuple[pki.KeyPair, pki.KeyPair]:
    root = pki.create_root("dijon", now=NOW)
    return root, pki.create_issuing(root, "dijon", now=NOW)


def _builder(root: pki.KeyPair, at: datetime = NOW) -> PolicyBuilder:
    return PolicyBuilder().store(Store([root.cert])).time(at)


def test_a_server_certificate_verifies_for_localhost_through_the_issuing_ca(cas) -> None:  # type: ignore[no-untyped-def]
    root, issuing = cas
    post = pki.issue(issuing, Principal("dijon", Kind.POST, "primary"), now=NOW)
    verifier = _builder(root).build_server_verifier(x509.DNSName("localhost"))
    chain = verifier.verify(post.cert, [issuing.cert])
    assert [c.subject for c in chain] == [
        post.cert.subject,
        issuing.cert.subject,
        root.cert.subject,
    ]
    cn = post.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "post.primary"  # what etcd and mosquitto take as the user
    assert pki.principal_of(post.cert) == Principal("dijon", Kind.POST, "primary")
    key = post.private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert post.cert.not_valid_after_utc - NOW == pki.LIFETIMES[Kind.POST]


def test_a_client_only_kind_may_connect_but_not_serve(cas) -> None:  # type: ignore[no-untyped-def]
    root, issuing = cas
    console = pki.issue(issuing, Principal("dijon", Kind.CONSOLE, "op-claire"), now=NOW)
    usages = console.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _builder(root).build_client_verifier().verify(console.cert, [issuing.cert])
    with pytest.raises(VerificationError):
        _builder(root).build_server_verifier(x509.DNSName("localhost")).verify(
            console.cert, [issuing.cert]
        )


def test_a_certificate_from_another_root_or_past_its_lifetime_does_not_verify(cas) -> None:  # type: ignore[no-untyped-def]
    root, issuing = cas
    rogue_root = pki.create_root("dijon", now=NOW)
    rogue = pki.issue(
        pki.create_issuing(rogue_root, "dijon", now=NOW),
        Principal("dijon", Kind.GATE, "gate"),
        now=NOW,
    )
    verifier = _builder(root).build_server_verifier(x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        verifier.verify(rogue.cert, [issuing.cert])
    gate = pki.issue(issuing, Principal("dijon", Kind.GATE, "gate"), now=NOW)
    late = NOW + pki.LIFETIMES[Kind.GATE] + timedelta(days=1)
    with pytest.raises(VerificationError):
        _builder(root, late).build_server_verifier(x509.DNSName("localhost")).verify(
            gate.cert, [issuing.cert]
        )


def test_no_certificate_outlives_its_issuing_ca(cas) -> None:  # type: ignore[no-untyped-def]
    _, issuing = cas
    device = pki.issue(
        issuing,
        Principal("dijon", Kind.DEVICE, "0011223344556677"),
        now=NOW,
        lifetime=timedelta(days=5000),
    )
    assert device.cert.not_valid_after_utc == issuing.cert.not_valid_after_utc


def test_the_crl_is_signed_by_the_issuing_ca_and_lists_the_revoked_serials(cas) -> None:  # type: ignore[no-untyped-def]
    _, issuing = cas
    revoked = pki.issue(issuing, Principal("dijon", Kind.NETWORK_SERVER, "ns"), now=NOW)
    crl = x509.load_pem_x509_crl(
        pki.revocation_list(issuing, [(revoked.cert.serial_number, NOW)], now=NOW)
    )
    assert crl.is_signature_valid(issuing.private_key().public_key())
    assert crl.get_revoked_certificate_by_serial_number(revoked.cert.serial_number) is not None
    assert len(crl) == 1


@pytest.mark.parametrize(
    ("city", "name"), [("Dijon", "primary"), ("dijon", ""), ("dijon", "a/b"), ("dijon", "x" * 64)]
)
def test_names_that_cannot_be_a_principal_are_refused(city: str, name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="lowercase letters"):
        Principal(city, Kind.POST, name)
