"""Short-lived operator tokens: issued by the post an operator logs in to, verified by
every post of the city.

A token is a JWS (JWT, ES256 only) signed with the **issuing post's own certificate
key**. Its header carries that certificate (`x5c`, base64 DER) and `kid`, the
base64url SHA-256 of the DER. A verifier needs nothing but the city's trust bundle:
it checks that the certificate chains to the city's CA, names a post of this city
and is not revoked, then checks the signature with the certificate's key. So the
standby verifies the leader's tokens without any key being shared or published,
and a failover logs no one out; a post's certificate rotation needs no key
distribution either (tokens signed with the old certificate stay valid until they
expire, five minutes by default, unless it is revoked).

Trade-off: one key serves both TLS and token signing. It is safe against
cross-protocol use because the signed inputs cannot be confused: a JWS signs
ASCII base64url text (`eyJ...`), TLS 1.3 signs 64 spaces and a context string,
TLS 1.2 signs the handshake's random binary nonces. It widens nothing: whoever
holds a post's key already acts as that post (serves its RPCs, commands through
it). It couples their fate: revoking a post's certificate also invalidates its
tokens, which is what revocation means. A token is ~1.6 KB, mostly the certificate.

Claims: `iss` (`citypost.<city>/post/<name>`, the signer), `aud` (`citypost.<city>`),
`sub`, `roles`, `sid`, `jti`, `iat`, `nbf`, `exp`, `amr`, and, when the operator's
workstation certificate is known, `cnf: {"x5t#S256": ...}` (RFC 8705): the token is
then good only on calls made with that certificate.

Every refusal is an `UnauthenticatedError` whose message names the cause; the
messages go to operators and the audit, so they never quote the token. No I/O:
callers pass the PEM bytes, the revoked serials (a callable) and `now`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security.pki import Kind, Principal, principal_of
from security.pki_store import IdentityPem
from security.post_signers import PostSigners, Signer

ALGORITHM = "ES256"
# What a token is for: calls (short) or getting a new access token (a shift long).
ACCESS = "access"
REFRESH = "refresh"
DEFAULT_LIFETIME_S = 300.0
DEFAULT_LEEWAY_S = 5.0
# Verified signer certificates kept: a city has two posts, each rotating now and then.
# Unpadded base64url, as JWS compact serialization writes it (RFC 7515 section 2).
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_ES256 = get_default_algorithms()[ALGORITHM]
# What a token's header may carry; anything else (jku, jwk, x5u, crit, b64...) is refused
# rather than ignored, so no library feature can be steered by the sender.
_HEADER_KEYS = frozenset({"alg", "typ", "kid", "x5c"})


def audience(city: str) -> str:
    return f"citypost.{city}"


def issuer_name(principal: Principal) -> str:
    return f"citypost.{principal.city}/{principal.kind.value}/{principal.name}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Strict: the standard decoder would skip characters outside the alphabet."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segments(token: str) -> tuple[str, str, str]:
    """The three parts of a compact JWS, refused unless each is base64url."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise UnauthenticatedError("token malformed: not a JWT (three dot-separated parts)")
    if not all(_BASE64URL.fullmatch(part) for part in parts):
        raise UnauthenticatedError("token malformed: a part is not base64url")
    return parts[0], parts[1], parts[2]


def thumbprint(cert_pem_or_der: bytes) -> str:
    """A certificate's RFC 8705 `x5t#S256`: base64url (unpadded) SHA-256 of its DER."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = cert_pem_or_der
    return _b64url(hashlib.sha256(der).digest())


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Claims:
    """What a verified token establishes."""

    subject: str
    roles: tuple[str, ...]
    session_id: str
    token_id: str
    issued_at: float
    expires_at: float
    amr: tuple[str, ...]
    signer: Principal
    workstation: str | None


def _strings(what: str, values: Sequence[str]) -> list[str]:
    # A bare str is a Sequence[str] too: "operator" would become its letters.
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise InvalidArgumentError(f"{what} must be a list of non-empty strings")
    return list(values)


class TokenIssuer:
    """Signs tokens with a post's certificate key (see the module docstring).

    The certificate is read once: when the post's certificate is reissued, build a
    new issuer from the new files.
    """

    def __init__(
        self, signer: IdentityPem, city: str, *, lifetime_s: float = DEFAULT_LIFETIME_S
    ) -> None:
        if lifetime_s <= 0:
            raise InvalidArgumentError(f"token lifetime must be positive, got {lifetime_s}")
        cert = x509.load_pem_x509_certificate(signer.cert)
        principal = principal_of(cert)
        if principal.kind is not Kind.POST or principal.city != city:
            raise InvalidArgumentError(
                f"tokens are signed by a post of {city!r}; "
                f"{principal.common_name} of {principal.city!r} is not one"
            )
        key = serialization.load_pem_private_key(signer.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise InvalidArgumentError(f"{principal.common_name}'s key is not EC P-256")
        if key.public_key() != cert.public_key():
            raise InvalidArgumentError(
                f"{principal.common_name}'s key does not match its certificate"
            )
        der = cert.public_bytes(serialization.Encoding.DER)
        self.city = city
        self.principal = principal
        self.lifetime_s = float(lifetime_s)
        self._key = key
        self._headers = {
            "typ": "JWT",
            "kid": _b64url(hashlib.sha256(der).digest()),
            "x5c": [base64.b64encode(der).decode("ascii")],  # x5c is plain base64 (RFC 7515)
        }

    def issue(
        self,
        *,
        subject: str,
        roles: Sequence[str],
        session_id: str,
        amr: Sequence[str],
        now: float,
        workstation_thumbprint: str | None = None,
        use: str = ACCESS,
        lifetime_s: float | None = None,
    ) -> str:
        """An access token (`use` ACCESS, the issuer's lifetime) or a refresh token (REFRESH,
        with the session's longer `lifetime_s`): the same signature, told apart by `use`, so
        one can never stand for the other."""
        if use not in (ACCESS, REFRESH):
            raise InvalidArgumentError(f"use must be {ACCESS!r} or {REFRESH!r}, got {use!r}")
        if not subject or not session_id:
            raise InvalidArgumentError("a token needs a subject and a session id")
        claims: dict[str, Any] = {
            "iss": issuer_name(self.principal),
            "aud": audience(self.city),
            "sub": subject,
            "roles": _strings("roles", roles),
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + (self.lifetime_s if lifetime_s is None else lifetime_s),
            "amr": _strings("amr", amr),
            "use": use,
        }
        if not claims["amr"]:
            raise InvalidArgumentError("amr must name at least one authentication method")
        if workstation_thumbprint is not None:
            claims["cnf"] = {"x5t#S256": workstation_thumbprint}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers=self._headers)


class TokenVerifier:
    """Verifies any post's tokens against the city's trust bundle (issuing CA + root).

    The chain check runs once per signer certificate (cached by `kid`, bounded); the
    revocation check, the signature and the claims run on every call.
    """

    def __init__(
        self,
        trust_pem: bytes,
        city: str,
        *,
        revoked: Callable[[], Collection[int]] = frozenset,
        leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        self._post_signers = PostSigners(trust_pem, city, what="token")
        self.city = city
        self.audience = audience(city)
        self.leeway_s = leeway_s
        self._revoked = revoked

    @property
    def trusted(self) -> tuple[x509.Certificate, ...]:
        """Every certificate loaded from the bundle: the anchors, then the links."""
        return self._post_signers.trusted

    @property
    def chain_verifications(self) -> int:
        """How often the cold path (the chain check) ran: tests, metrics."""
        return self._post_signers.chain_verifications

    def verify(
        self,
        token: str,
        *,
        now: float,
        workstation_thumbprint: str | None = None,
        use: str = ACCESS,
    ) -> Claims:
        header_part, payload_part, signature_part = _segments(token)
        header = self._header(header_part)
        signer = self._signer(header, now)
        if signer.serial in self._revoked():
            raise UnauthenticatedError(
                f"token signer {signer.principal.common_name} has a revoked certificate "
                f"(serial {signer.serial:x})"
            )
        # The verifier picks the algorithm object (ES256), never the header: that is the
        # pin. PyJWS.decode would do the same but rescans the whole token (the x5c makes
        # it ~1.5 KB) in Python, doubling the cost of a call.
        signed = f"{header_part}.{payload_part}".encode("ascii")
        if not _ES256.verify(signed, signer.key, _b64url_decode(signature_part)):
            raise UnauthenticatedError("token signature does not verify")
        try:
            claims = json.loads(_b64url_decode(payload_part))
        except (ValueError, UnicodeDecodeError):
            raise UnauthenticatedError("token malformed: the payload is not JSON") from None
        if not isinstance(claims, dict):
            raise UnauthenticatedError("token malformed: the payload is not a JSON object")
        return self._claims(claims, signer, now, workstation_thumbprint, use)

    # --- inside --------------------------------------------------------------------------

    @staticmethod
    def _header(part: str) -> dict[str, Any]:
        try:
            header = json.loads(_b64url_decode(part))
        except (ValueError, UnicodeDecodeError):
            raise UnauthenticatedError(
                "token malformed: the header is not base64url JSON"
            ) from None
        if not isinstance(header, dict):
            raise UnauthenticatedError("token malformed: the header is not a JSON object")
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise UnauthenticatedError(
                f"token algorithm {alg!r} refused: only {ALGORITHM} is accepted"
            )
        extra = set(header) - _HEADER_KEYS
        if extra:
            raise UnauthenticatedError(
                f"token header has parameters not accepted: {', '.join(sorted(extra))}"
            )
        x5c = header.get("x5c")
        if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
            raise UnauthenticatedError("token has no signer certificate (x5c)")
        if not isinstance(header.get("kid"), str):
            raise UnauthenticatedError("token has no key id (kid)")
        return header

    def _signer(self, header: dict[str, Any], now: float) -> Signer:
        return self._post_signers.signer(header["kid"], header["x5c"][0], now)

    def _claims(
        self,
        claims: dict[str, Any],
        signer: Signer,
        now: float,
        workstation_thumbprint: str | None,
        use: str,
    ) -> Claims:
        if claims.get("use", ACCESS) != use:
            raise UnauthenticatedError(f"the token is for {claims.get('use')}, not {use}")
        aud = claims.get("aud")
        if aud != self.audience:
            raise UnauthenticatedError(
                f"token audience {aud!r} is not this city ({self.audience!r})"
            )
        iss = claims.get("iss")
        if iss != issuer_name(signer.principal):
            raise UnauthenticatedError(
                f"token issuer {iss!r} is not its signer {issuer_name(signer.principal)!r}"
            )
        times = {name: claims.get(name) for name in ("iat", "nbf", "exp")}
        for name, value in times.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UnauthenticatedError(f"token claim {name!r} missing or not a number")
        exp, nbf = float(times["exp"]), float(times["nbf"])  # type: ignore[arg-type]
        if exp + self.leeway_s < now:
            raise UnauthenticatedError(f"token expired at {_iso(exp)}")
        if nbf - self.leeway_s > now:
            raise UnauthenticatedError(f"token not valid before {_iso(nbf)}")
        for name in ("sub", "sid", "jti"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise UnauthenticatedError(f"token claim {name!r} missing or not a string")
        lists = {name: claims.get(name) for name in ("roles", "amr")}
        for name, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UnauthenticatedError(f"token claim {name!r} missing or not a list of strings")
        workstation = self._binding(claims.get("cnf"), workstation_thumbprint)
        return Claims(
            subject=claims["sub"],
            roles=tuple(claims["roles"]),
            session_id=claims["sid"],
            token_id=claims["jti"],
            issued_at=float(times["iat"]),  # type: ignore[arg-type]
            expires_at=exp,
            amr=tuple(claims["amr"]),
            signer=signer.principal,
            workstation=workstation,
        )

    @staticmethod
    def _binding(cnf: object, presented: str | None) -> str | None:
        """The workstation a token is bound to (RFC 8705), checked against the call's."""
        if cnf is None:
            return None
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(bound, str) or not bound:
            raise UnauthenticatedError("token claim 'cnf' malformed: no x5t#S256 thumbprint")
        if presented is None:
            raise UnauthenticatedError(
                "token bound to a workstation, but the call presents no workstation certificate"
            )
        if not hmac.compare_digest(bound, presented):
            raise UnauthenticatedError("token bound to another workstation")
        return bound


def decode_unverified_expiry(token: str) -> float | None:
    """The `exp` of a token, read WITHOUT verifying anything: for a holder (the console)
    to know when to renew its own token; never for a decision about access. None if the
    token is malformed or has no numeric `exp`."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
