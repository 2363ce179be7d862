"""Commands signed by a post, checked as the gate checks them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security import pki
from security.command_signing import (
    SIGNATURE_PROPERTY,
    SIGNER_PROPERTY,
    CommandSigner,
    CommandVerifier,
)
from security.pki import Kind, Principal
from security.pki_store import IdentityPem

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NOW_DT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NOW = NOW_DT.timestamp()
TOPIC = "citypost/dijon/gate/application/a/device/0011223344556677/command/down"
PAYLOAD = b'{"devEui":"0011223344556677","fPort":10,"data":"AQI="}'


def _city(name: str) -> tuple[bytes, pki.KeyPair]:
    root = pki.create_root(name, now=NOW_DT)
    issuing = pki.create_issuing(root, name, now=NOW_DT)
    return issuing.cert_pem + root.cert_pem, issuing


def _identity(trust: bytes, issuing: pki.KeyPair, city: str, kind: Kind, name: str) -> IdentityPem:
    pair = pki.issue(issuing, Principal(city, kind, name), now=NOW_DT)
    return IdentityPem(trust, pair.cert_pem, pair.key_pem)


@pytest.fixture(scope="module")
def dijon() -> tuple[bytes, pki.KeyPair]:
    return _city("dijon")


def _props(signer: CommandSigner, payload: bytes = PAYLOAD, deadline: str = "99") -> dict[str, str]:
    return dict(signer.properties(TOPIC, "1", deadline, payload))


def test_a_post_signature_verifies_and_names_the_post(dijon: tuple[bytes, pki.KeyPair]) -> None:
    trust, issuing = dijon
    signer = CommandSigner(_identity(trust, issuing, "dijon", Kind.POST, "backup"))
    verifier = CommandVerifier(trust, "dijon")
    assert verifier.verify(TOPIC, "1", "99", PAYLOAD, _props(signer), now=NOW) == "post.backup"


def test_anything_changed_after_signing_is_refused(dijon: tuple[bytes, pki.KeyPair]) -> None:
    trust, issuing = dijon
    signer = CommandSigner(_identity(trust, issuing, "dijon", Kind.POST, "primary"))
    verifier = CommandVerifier(trust, "dijon")
    props = _props(signer)
    for topic, priority, deadline, payload in [
        (TOPIC.replace("0011223344556677", "8899aabbccddeeff"), "1", "99", PAYLOAD),
        (TOPIC, "0", "99", PAYLOAD),
        (TOPIC, "1", "100", PAYLOAD),
        (TOPIC, "1", "99", PAYLOAD + b" "),
    ]:
        with pytest.raises(UnauthenticatedError, match="does not verify"):
            verifier.verify(topic, priority, deadline, payload, props, now=NOW)
    with pytest.raises(UnauthenticatedError, match="unsigned"):
        verifier.verify(TOPIC, "1", "99", PAYLOAD, {}, now=NOW)


def test_only_a_post_of_this_city_not_revoked(dijon: tuple[bytes, pki.KeyPair]) -> None:
    trust, issuing = dijon
    console = _identity(trust, issuing, "dijon", Kind.CONSOLE, "room")
    with pytest.raises(InvalidArgumentError, match="only a post"):
        CommandSigner(console)
    # a workstation's key posing as a signer, with its own certificate
    forged = CommandSigner.__new__(CommandSigner)
    forged._key = serialization.load_pem_private_key(console.key, password=None)  # type: ignore[assignment]
    forged.x5c = base64.b64encode(
        pki.KeyPair(console.cert, console.key).cert.public_bytes(serialization.Encoding.DER)
    ).decode()
    verifier = CommandVerifier(trust, "dijon")
    with pytest.raises(UnauthenticatedError, match="not a post"):
        verifier.verify(TOPIC, "1", "99", PAYLOAD, _props(forged), now=NOW)
    lyon_trust, lyon_issuing = _city("lyon")
    lyon = CommandSigner(_identity(lyon_trust, lyon_issuing, "lyon", Kind.POST, "primary"))
    with pytest.raises(UnauthenticatedError, match="chain"):
        verifier.verify(TOPIC, "1", "99", PAYLOAD, _props(lyon), now=NOW)
    post = _identity(trust, issuing, "dijon", Kind.POST, "primary")
    serial = pki.KeyPair(post.cert, post.key).cert.serial_number
    revoked = CommandVerifier(trust, "dijon", revoked=lambda: {serial})
    with pytest.raises(UnauthenticatedError, match="revoked"):
        revoked.verify(TOPIC, "1", "99", PAYLOAD, _props(CommandSigner(post)), now=NOW)
    bad = dict(_props(CommandSigner(post)))
    bad[SIGNATURE_PROPERTY] = "not base64!"
    with pytest.raises(UnauthenticatedError, match="not base64"):
        verifier.verify(TOPIC, "1", "99", PAYLOAD, bad, now=NOW)
    assert SIGNER_PROPERTY in bad
