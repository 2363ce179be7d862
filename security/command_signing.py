"""Commands signed by the leading post, checked by the downlink gate.

Everything a post hands the gate (a device's `command/down`, a group's
multicast) is signed with the post's certificate key (ECDSA P-256, SHA-256)
over the gate topic, the plan's properties (priority, deadline) and the payload,
whose frame carries the command id and the epoch. The signature and the
signer's certificate travel as MQTT v5 user properties. The gate forwards only
what verifies against a post certificate of the city that is not revoked, then
fences the epoch as before: a message forged by anything that can reach the
gate's inbox (a broker misconfigured, a stolen non-post certificate) is
dropped and counted, not executed.

Devices do not check these signatures (their frames stay within LoRaWAN's
payload sizes and ChirpStack holds the session keys); a per-device MAC in the
frame is possible for firmware the city controls and is left for later.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security.pki import Kind, principal_of
from security.pki_store import IdentityPem
from security.post_signers import PostSigners, key_id

SIGNATURE_PROPERTY: Final = "citypost-signature"
SIGNER_PROPERTY: Final = "citypost-signer"  # the post's certificate, base64 DER


def signed_bytes(topic: str, priority: str, deadline: str, payload: bytes) -> bytes:
    """What is signed: unambiguous, as none of the three texts holds a newline."""
    head = "\n".join((topic, priority, deadline))
    if head.count("\n") != 2:
        raise InvalidArgumentError("a signed topic or property holds a newline")
    return head.encode() + b"\n" + payload


class CommandSigner:
    """The leading post's signature over what it hands the gate."""

    def __init__(self, identity: IdentityPem) -> None:
        cert = x509.load_pem_x509_certificate(identity.cert)
        if principal_of(cert).kind is not Kind.POST:
            raise InvalidArgumentError("only a post signs commands")
        key = serialization.load_pem_private_key(identity.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgumentError("the post's key is not an EC key")
        self._key = key
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def properties(
        self, topic: str, priority: str, deadline: str, payload: bytes
    ) -> list[tuple[str, str]]:
        """The user properties carrying the signature and the signer."""
        signature = self._key.sign(
            signed_bytes(topic, priority, deadline, payload), ec.ECDSA(hashes.SHA256())
        )
        return [
            (SIGNATURE_PROPERTY, base64.b64encode(signature).decode()),
            (SIGNER_PROPERTY, self.x5c),
        ]


class CommandVerifier:
    """The gate's check: a post of the city signed exactly this, and is not revoked."""

    def __init__(
        self,
        trust_pem: bytes,
        city: str,
        *,
        revoked: Callable[[], Collection[int]] = frozenset,
    ) -> None:
        self._signers = PostSigners(trust_pem, city, what="command")
        self._revoked = revoked

    def verify(
        self,
        topic: str,
        priority: str,
        deadline: str,
        payload: bytes,
        properties: dict[str, str],
        *,
        now: float,
    ) -> str:
        """The signing post's CN; UnauthenticatedError naming what is wrong."""
        signature_b64 = properties.get(SIGNATURE_PROPERTY)
        x5c = properties.get(SIGNER_PROPERTY)
        if not signature_b64 or not x5c:
            raise UnauthenticatedError("unsigned: no post signature on the command")
        try:
            der = base64.b64decode(x5c, validate=True)
            signature = base64.b64decode(signature_b64, validate=True)
        except ValueError:
            raise UnauthenticatedError("the command's signature is not base64") from None
        signer = self._signers.signer(key_id(der), x5c, now)
        if signer.serial in self._revoked():
            raise UnauthenticatedError(
                f"command signed by {signer.principal.common_name}, whose certificate is revoked"
            )
        try:
            signer.key.verify(
                signature,
                signed_bytes(topic, priority, deadline, payload),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise UnauthenticatedError("the command's signature does not verify") from None
        return signer.principal.common_name
