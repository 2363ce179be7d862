"""The posts' certificates as signers: what a signed thing names (an operator token,
a command handed to the gate, an audit checkpoint) is checked here against the
city's trust bundle, once per certificate.

A signed thing carries its signer's certificate (`x5c`, base64 DER) and its key
id (`kid`, base64url SHA-256 of the DER). The certificate must chain to the
city's CA, name a post of this city and hold an EC P-256 key; verified
certificates are cached by `kid` (bounded) for as long as the whole chain is
valid. Revocation is the caller's, on every use: it changes without the
certificate changing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security.pki import Kind, Principal, principal_of

CACHE_SIZE = 64


def key_id(der: bytes) -> str:
    """base64url (no padding) SHA-256 of a certificate's DER: `kid` and RFC 8705's x5t#S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Signer:
    """A signer certificate whose chain was verified; valid for [not_before, not_after]."""

    x5c: str
    key: ec.EllipticCurvePublicKey
    principal: Principal
    serial: int
    not_before: float
    not_after: float


class PostSigners:
    def __init__(self, trust_pem: bytes, city: str, *, what: str) -> None:
        certs = x509.load_pem_x509_certificates(trust_pem)
        # Self-signed certificates are the anchors; the rest (the issuing CA) only link.
        self._roots = [c for c in certs if c.subject == c.issuer]
        self._intermediates = [c for c in certs if c.subject != c.issuer]
        if not self._roots:
            raise InvalidArgumentError("the trust bundle holds no root certificate")
        self.city = city
        self.what = what  # "token", "command"...: how refusals name the signed thing
        self._store = Store(self._roots)
        self._signers: dict[str, Signer] = {}
        self.chain_verifications = 0  # how often the cold path ran (tests, metrics)

    @property
    def trusted(self) -> tuple[x509.Certificate, ...]:
        """Every certificate loaded from the bundle: the anchors, then the links."""
        return (*self._roots, *self._intermediates)

    def signer(self, kid: str, x5c: str, now: float) -> Signer:
        """The verified signer: from the cache if its exact certificate was verified
        before and is in its validity period, else through the chain check."""
        known = self._signers.get(kid)
        if known is not None and known.x5c == x5c and known.not_before <= now <= known.not_after:
            return known
        signer = self._verify_chain(kid, x5c, now)
        if len(self._signers) >= CACHE_SIZE and kid not in self._signers:
            del self._signers[next(iter(self._signers))]  # the oldest entry
        self._signers[kid] = signer
        return signer

    def _verify_chain(self, kid: str, x5c: str, now: float) -> Signer:
        what = self.what
        self.chain_verifications += 1
        try:
            der = base64.b64decode(x5c, validate=True)
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise UnauthenticatedError(
                f"{what} signer certificate (x5c) is not a DER certificate"
            ) from None
        if not hmac.compare_digest(kid, key_id(der)):
            raise UnauthenticatedError(f"{what} key id (kid) does not match its signer certificate")
        at = datetime.fromtimestamp(now, UTC)
        verifier = PolicyBuilder().store(self._store).time(at).build_client_verifier()
        try:
            chain = verifier.verify(cert, self._intermediates).chain
        except VerificationError as error:
            raise UnauthenticatedError(
                f"{what} signer certificate does not chain to the city's trust ({error})"
            ) from None
        try:
            principal = principal_of(cert)
        except InvalidArgumentError as error:
            raise UnauthenticatedError(f"{what} signer certificate: {error.message}") from None
        if principal.city != self.city:
            raise UnauthenticatedError(
                f"{what} signed by {principal.common_name} of city {principal.city!r}, "
                f"not of {self.city!r}"
            )
        if principal.kind is not Kind.POST:
            raise UnauthenticatedError(
                f"{what} signed by {principal.common_name}, which is not a post"
            )
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise UnauthenticatedError(f"{what} signer {principal.common_name} has no EC P-256 key")
        return Signer(
            x5c=x5c,
            key=key,
            principal=principal,
            serial=cert.serial_number,
            not_before=max(c.not_valid_before_utc.timestamp() for c in chain),
            not_after=min(c.not_valid_after_utc.timestamp() for c in chain),
        )
