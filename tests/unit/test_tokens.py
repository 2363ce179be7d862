"""Operator tokens: any post verifies any post's tokens through the city's trust, and
every refusal names its cause."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security import pki, post_signers, tokens
from security.pki import KeyPair, Kind, Principal
from security.pki_store import IdentityPem, PkiStore
from security.tokens import REFRESH, Claims, TokenIssuer, TokenVerifier

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CITY = "dijon"
NOW_DT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
NOW = NOW_DT.timestamp()


@dataclass(frozen=True)
class City:
    name: str
    root: KeyPair
    issuing: KeyPair

    @property
    def trust(self) -> bytes:
        return self.issuing.cert_pem + self.root.cert_pem

    def identity(self, kind: Kind, name: str) -> tuple[IdentityPem, KeyPair]:
        pair = pki.issue(self.issuing, Principal(self.name, kind, name), now=NOW_DT)
        return IdentityPem(self.trust, pair.cert_pem, pair.key_pem), pair


def _city(name: str) -> City:
    root = pki.create_root(name, now=NOW_DT)
    return City(name, root, pki.create_issuing(root, name, now=NOW_DT))


@pytest.fixture(scope="module")
def city() -> City:
    return _city(CITY)


@pytest.fixture(scope="module")
def post_a(city: City) -> IdentityPem:
    return city.identity(Kind.POST, "primary")[0]


@pytest.fixture(scope="module")
def post_b(city: City) -> IdentityPem:
    return city.identity(Kind.POST, "standby")[0]


def _issue(signer: IdentityPem, **overrides: object) -> str:
    args: dict[str, object] = {
        "subject": "claire",
        "roles": ["traffic"],
        "session_id": "s-1",
        "amr": ["pwd"],
        "now": NOW,
    }
    args.update(overrides)
    return TokenIssuer(signer, CITY).issue(**args)  # type: ignore[arg-type]


def _refused(verifier: TokenVerifier, token: str, *, now: float = NOW, **kw: str | None) -> str:
    with pytest.raises(UnauthenticatedError) as caught:
        verifier.verify(token, now=now, **kw)
    if len(token) > 8:  # the message never quotes the token
        assert token not in caught.value.message
    return caught.value.message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(tokens._b64url_decode(header)),
        json.loads(tokens._b64url_decode(payload)),
        signature,
    )


def _forge(header: dict[str, object], payload: dict[str, object], signature: str) -> str:
    encode = lambda part: _b64url(json.dumps(part).encode())  # noqa: E731
    return f"{encode(header)}.{encode(payload)}.{signature}"


# --- both posts, every claim ---------------------------------------------------------------


def test_a_token_of_either_post_verifies_on_a_verifier_that_never_saw_that_post(
    city: City, post_a: IdentityPem, post_b: IdentityPem
) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    assert verifier.verify(_issue(post_a), now=NOW).signer == Principal(CITY, Kind.POST, "primary")
    assert verifier.verify(_issue(post_b), now=NOW).signer == Principal(CITY, Kind.POST, "standby")
    # Both the issuing CA and the root are loaded from the bundle.
    assert [c.subject for c in verifier.trusted] == [
        city.root.cert.subject,
        city.issuing.cert.subject,
    ]


def test_every_claim_makes_the_round_trip(city: City, post_a: IdentityPem) -> None:
    workstation = tokens.thumbprint(city.identity(Kind.CONSOLE, "ws-a-01")[1].cert_pem)
    token = TokenIssuer(post_a, CITY, lifetime_s=120).issue(
        subject="claire",
        roles=("traffic", "lighting"),
        session_id="s-42",
        amr=["pwd", "otp"],
        now=NOW,
        workstation_thumbprint=workstation,
    )
    claims = TokenVerifier(city.trust, CITY).verify(
        token, now=NOW + 10, workstation_thumbprint=workstation
    )
    assert claims == Claims(
        subject="claire",
        roles=("traffic", "lighting"),
        session_id="s-42",
        token_id=claims.token_id,
        issued_at=NOW,
        expires_at=NOW + 120,
        amr=("pwd", "otp"),
        signer=Principal(CITY, Kind.POST, "primary"),
        workstation=workstation,
    )
    assert len(claims.token_id) == 32 and int(claims.token_id, 16) >= 0
    header, payload, _ = _parts(token)
    assert header["alg"] == "ES256"
    der = post_a_der(post_a)
    assert header["x5c"] == [base64.b64encode(der).decode()]
    assert header["kid"] == _b64url(hashlib.sha256(der).digest())
    assert payload["iss"] == "citypost.dijon/post/primary"
    assert payload["aud"] == "citypost.dijon"
    assert payload["nbf"] == NOW and payload["cnf"] == {"x5t#S256": workstation}
    assert tokens.decode_unverified_expiry(token) == NOW + 120


def post_a_der(identity: IdentityPem) -> bytes:
    return KeyPair(identity.cert, identity.key).cert.public_bytes(serialization.Encoding.DER)


def test_each_token_gets_its_own_id(city: City, post_a: IdentityPem) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    ids = {verifier.verify(_issue(post_a), now=NOW).token_id for _ in range(3)}
    assert len(ids) == 3


def test_thumbprint_is_the_same_from_pem_and_der(city: City) -> None:
    cert = city.identity(Kind.CONSOLE, "ws-a-02")[1]
    der = cert.cert.public_bytes(serialization.Encoding.DER)
    assert tokens.thumbprint(cert.cert_pem) == tokens.thumbprint(der)
    assert tokens.thumbprint(der) == _b64url(hashlib.sha256(der).digest())
    assert "=" not in tokens.thumbprint(der)


# --- the issuer ---------------------------------------------------------------------------


def test_the_issuer_takes_only_a_post_of_its_city(city: City, post_a: IdentityPem) -> None:
    console = city.identity(Kind.CONSOLE, "ws-a-01")[0]
    with pytest.raises(InvalidArgumentError, match="not one"):
        TokenIssuer(console, CITY)
    with pytest.raises(InvalidArgumentError, match="not one"):
        TokenIssuer(post_a, "beaune")
    other = city.identity(Kind.POST, "other")[0]
    with pytest.raises(InvalidArgumentError, match="does not match"):
        TokenIssuer(IdentityPem(post_a.trust, post_a.cert, other.key), CITY)
    with pytest.raises(InvalidArgumentError, match="positive"):
        TokenIssuer(post_a, CITY, lifetime_s=0)


def test_the_issuer_refuses_a_bare_string_for_a_list(post_a: IdentityPem) -> None:
    with pytest.raises(InvalidArgumentError, match="roles"):
        _issue(post_a, roles="traffic")
    with pytest.raises(InvalidArgumentError, match="amr"):
        _issue(post_a, amr=[])


def test_a_store_identity_signs_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = PkiStore(tmp_path / "pki", CITY)
    store.init(now=NOW_DT)
    identity = store.issue(Principal(CITY, Kind.POST, "primary"), now=NOW_DT).read()
    verifier = TokenVerifier(store.trust.read_bytes(), CITY, revoked=store.revoked_serials)
    assert verifier.verify(_issue(identity), now=NOW).subject == "claire"
    store.revoke(Principal(CITY, Kind.POST, "primary"), now=NOW_DT)
    assert "revoked" in _refused(verifier, _issue(identity))


# --- refusals, each named -----------------------------------------------------------------


@pytest.mark.parametrize(
    "token, cause",
    [
        ("", "not a JWT"),
        ("abc", "not a JWT"),
        ("a.b.c.d", "not a JWT"),
        ("!!!.e30.sig", "a part is not base64url"),
        ("e30=.e30.sig", "a part is not base64url"),
        (_b64url(b"\xff") + ".e30.sig", "header is not base64url JSON"),
        (_b64url(b"[1]") + ".e30.sig", "header is not a JSON object"),
    ],
)
def test_a_malformed_token_is_refused(city: City, token: str, cause: str) -> None:
    assert cause in _refused(TokenVerifier(city.trust, CITY), token)


def test_alg_none_is_refused(city: City, post_a: IdentityPem) -> None:
    header, payload, _ = _parts(_issue(post_a))
    forged = _forge({**header, "alg": "none"}, payload, "")
    assert "algorithm 'none' refused" in _refused(TokenVerifier(city.trust, CITY), forged)


def test_hs256_with_the_public_key_as_secret_is_refused(city: City, post_a: IdentityPem) -> None:
    header, payload, _ = _parts(_issue(post_a))
    h = _b64url(json.dumps({**header, "alg": "HS256"}).encode())
    p = _b64url(json.dumps(payload).encode())
    mac = hmac.new(post_a.cert, f"{h}.{p}".encode(), hashlib.sha256).digest()
    forged = f"{h}.{p}.{_b64url(mac)}"
    assert "algorithm 'HS256' refused" in _refused(TokenVerifier(city.trust, CITY), forged)


def test_a_header_parameter_not_accepted_is_refused(city: City, post_a: IdentityPem) -> None:
    header, payload, signature = _parts(_issue(post_a))
    forged = _forge({**header, "jku": "https://evil.example/jwks"}, payload, signature)
    assert "not accepted: jku" in _refused(TokenVerifier(city.trust, CITY), forged)


def test_a_token_without_x5c_or_kid_is_refused(city: City, post_a: IdentityPem) -> None:
    header, payload, signature = _parts(_issue(post_a))
    verifier = TokenVerifier(city.trust, CITY)
    no_x5c = {k: v for k, v in header.items() if k != "x5c"}
    assert "no signer certificate (x5c)" in _refused(verifier, _forge(no_x5c, payload, signature))
    no_kid = {k: v for k, v in header.items() if k != "kid"}
    assert "no key id (kid)" in _refused(verifier, _forge(no_kid, payload, signature))
    wrong_kid = {**header, "kid": _b64url(b"x" * 32)}
    assert "kid) does not match" in _refused(verifier, _forge(wrong_kid, payload, signature))
    garbage = {**header, "x5c": ["bm90IGEgY2VydA=="]}
    assert "not a DER certificate" in _refused(verifier, _forge(garbage, payload, signature))


def test_a_token_of_another_citys_pki_is_refused(city: City) -> None:
    beaune = _city("beaune")
    foreign = beaune.identity(Kind.POST, "primary")[0]
    token = TokenIssuer(foreign, "beaune").issue(
        subject="claire", roles=["traffic"], session_id="s", amr=["pwd"], now=NOW
    )
    assert "does not chain to the city's trust" in _refused(TokenVerifier(city.trust, CITY), token)


def test_a_trust_bundle_without_the_issuing_ca_chains_nothing(
    city: City, post_a: IdentityPem
) -> None:
    # The bundle's intermediate is what links a post to the root: it must be loaded.
    verifier = TokenVerifier(city.root.cert_pem, CITY)
    assert "does not chain" in _refused(verifier, _issue(post_a))
    with pytest.raises(InvalidArgumentError, match="no root"):
        TokenVerifier(city.issuing.cert_pem, CITY)


def test_a_token_of_the_same_pki_for_another_city_name_is_refused(
    city: City, post_a: IdentityPem
) -> None:
    assert "of city 'dijon', not of 'beaune'" in _refused(
        TokenVerifier(city.trust, "beaune"), _issue(post_a)
    )


def test_a_token_signed_by_a_console_certificate_is_refused(city: City) -> None:
    console = city.identity(Kind.CONSOLE, "ws-a-01")[0]
    # TokenIssuer refuses a console; a forger would sign by hand.
    der = KeyPair(console.cert, console.key).cert.public_bytes(serialization.Encoding.DER)
    headers = {
        "kid": _b64url(hashlib.sha256(der).digest()),
        "x5c": [base64.b64encode(der).decode()],
    }
    payload = {
        "iss": "citypost.dijon/console/ws-a-01",
        "aud": "citypost.dijon",
        "sub": "mallory",
        "roles": ["administrator"],
        "sid": "s",
        "jti": "j",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "amr": ["pwd"],
    }
    key = KeyPair(console.cert, console.key).private_key()
    token = jwt.encode(payload, key, algorithm="ES256", headers=headers)
    assert "console.ws-a-01, which is not a post" in _refused(
        TokenVerifier(city.trust, CITY), token
    )


def test_a_revoked_signer_is_refused_even_when_cached(city: City, post_a: IdentityPem) -> None:
    revoked: set[int] = set()
    verifier = TokenVerifier(city.trust, CITY, revoked=lambda: revoked)
    token = _issue(post_a)
    verifier.verify(token, now=NOW)  # now cached
    revoked.add(KeyPair(post_a.cert, post_a.key).cert.serial_number)
    assert "post.primary has a revoked certificate" in _refused(verifier, token)


def test_a_tampered_payload_is_refused(city: City, post_a: IdentityPem) -> None:
    header, payload, signature = _parts(_issue(post_a))
    forged = _forge(header, {**payload, "roles": ["administrator"]}, signature)
    assert "signature does not verify" in _refused(TokenVerifier(city.trust, CITY), forged)


def test_a_signature_by_another_post_under_a_posts_certificate_is_refused(
    city: City, post_a: IdentityPem, post_b: IdentityPem
) -> None:
    # B's signature carried with A's certificate: the key that signed is not the one named.
    a_header, _, _ = _parts(_issue(post_a))
    _, b_body, b_sig = _issue(post_b).split(".")
    forged = f"{_b64url(json.dumps(a_header).encode())}.{b_body}.{b_sig}"
    assert "signature does not verify" in _refused(TokenVerifier(city.trust, CITY), forged)


def test_an_issuer_claim_not_matching_the_signer_is_refused(
    city: City, post_a: IdentityPem
) -> None:
    signer = KeyPair(post_a.cert, post_a.key)
    header, payload, _ = _parts(_issue(post_a))
    headers = {k: v for k, v in header.items() if k in ("kid", "x5c")}
    token = jwt.encode(
        {**payload, "iss": "citypost.dijon/post/standby"},
        signer.private_key(),
        algorithm="ES256",
        headers=headers,
    )
    assert "issuer 'citypost.dijon/post/standby' is not its signer" in _refused(
        TokenVerifier(city.trust, CITY), token
    )


def test_an_audience_of_another_city_is_refused(city: City, post_a: IdentityPem) -> None:
    signer = KeyPair(post_a.cert, post_a.key)
    header, payload, _ = _parts(_issue(post_a))
    headers = {k: v for k, v in header.items() if k in ("kid", "x5c")}
    token = jwt.encode(
        {**payload, "aud": "citypost.beaune"}, signer.private_key(), "ES256", headers=headers
    )
    assert "audience 'citypost.beaune' is not this city" in _refused(
        TokenVerifier(city.trust, CITY), token
    )


def test_missing_claims_are_named(city: City, post_a: IdentityPem) -> None:
    signer = KeyPair(post_a.cert, post_a.key)
    header, payload, _ = _parts(_issue(post_a))
    headers = {k: v for k, v in header.items() if k in ("kid", "x5c")}
    verifier = TokenVerifier(city.trust, CITY)
    for name in ("exp", "sub", "roles"):
        token = jwt.encode(
            {k: v for k, v in payload.items() if k != name},
            signer.private_key(),
            "ES256",
            headers=headers,
        )
        assert f"claim {name!r} missing" in _refused(verifier, token)


# --- time ---------------------------------------------------------------------------------


def test_expiry_allows_the_leeway_and_no_more(city: City, post_a: IdentityPem) -> None:
    verifier = TokenVerifier(city.trust, CITY, leeway_s=5)
    token = _issue(post_a)  # exp = NOW + 300
    verifier.verify(token, now=NOW + 300)
    verifier.verify(token, now=NOW + 305)
    message = _refused(verifier, token, now=NOW + 305.5)
    assert message == "token expired at 2026-12-05T12:05:00+00:00"


def test_a_token_not_yet_valid_is_refused_beyond_the_leeway(
    city: City, post_a: IdentityPem
) -> None:
    verifier = TokenVerifier(city.trust, CITY, leeway_s=5)
    token = _issue(post_a)
    verifier.verify(token, now=NOW - 5)  # the verifying post's clock a little behind
    assert "not valid before 2026-12-05T12:00:00" in _refused(verifier, token, now=NOW - 6)


def test_a_signer_certificate_outside_its_validity_is_refused(
    city: City, post_a: IdentityPem
) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    later = NOW + 91 * 86400  # the post's certificate lives 90 days
    token = _issue(post_a, now=later)
    verifier.verify(_issue(post_a), now=NOW)  # cached while valid
    assert "does not chain" in _refused(verifier, token, now=later)


# --- workstation binding ------------------------------------------------------------------


def test_a_bound_token_needs_its_workstation(city: City, post_a: IdentityPem) -> None:
    mine = tokens.thumbprint(city.identity(Kind.CONSOLE, "ws-a-01")[1].cert_pem)
    other = tokens.thumbprint(city.identity(Kind.CONSOLE, "ws-a-02")[1].cert_pem)
    verifier = TokenVerifier(city.trust, CITY)
    token = _issue(post_a, workstation_thumbprint=mine)
    assert verifier.verify(token, now=NOW, workstation_thumbprint=mine).workstation == mine
    assert _refused(verifier, token, workstation_thumbprint=other) == (
        "token bound to another workstation"
    )
    assert "bound to a workstation, but the call presents no" in _refused(verifier, token)


def test_an_unbound_token_is_good_from_any_workstation(city: City, post_a: IdentityPem) -> None:
    claims = TokenVerifier(city.trust, CITY).verify(
        _issue(post_a), now=NOW, workstation_thumbprint="anything"
    )
    assert claims.workstation is None


# --- the cache ----------------------------------------------------------------------------


def test_the_chain_is_checked_once_per_signer_certificate(
    city: City, post_a: IdentityPem, post_b: IdentityPem
) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    for _ in range(3):
        verifier.verify(_issue(post_a), now=NOW)
    assert verifier.chain_verifications == 1
    verifier.verify(_issue(post_b), now=NOW)
    verifier.verify(_issue(post_b), now=NOW)
    assert verifier.chain_verifications == 2
    # A rotated certificate is a new kid: checked once more.
    rotated = city.identity(Kind.POST, "primary")[0]
    verifier.verify(_issue(rotated), now=NOW)
    assert verifier.chain_verifications == 3


def test_a_cached_kid_with_another_certificate_is_checked_again(
    city: City, post_a: IdentityPem, post_b: IdentityPem
) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    a_header, _, _ = _parts(_issue(post_a))
    verifier.verify(_issue(post_a), now=NOW)
    # B's token under A's kid: not a cache hit, and the kid is found not to match.
    b_header, b_payload, b_signature = _parts(_issue(post_b))
    forged = _forge({**b_header, "kid": a_header["kid"]}, b_payload, b_signature)
    assert "kid) does not match" in _refused(verifier, forged)
    assert verifier.chain_verifications == 2


def test_the_cache_is_bounded(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(post_signers, "CACHE_SIZE", 2)
    verifier = TokenVerifier(city.trust, CITY)
    posts = [city.identity(Kind.POST, f"p{i}")[0] for i in range(3)]
    for post in posts:
        verifier.verify(_issue(post), now=NOW)
    assert len(verifier._post_signers._signers) == 2
    verifier.verify(_issue(posts[0]), now=NOW)  # evicted first, so checked again
    assert verifier.chain_verifications == 4


# --- unverified expiry --------------------------------------------------------------------


def test_decode_unverified_expiry(post_a: IdentityPem) -> None:
    assert tokens.decode_unverified_expiry(_issue(post_a, now=1000.5)) == 1300.5
    assert tokens.decode_unverified_expiry("nope") is None
    assert tokens.decode_unverified_expiry("a.!!!.c") is None
    assert tokens.decode_unverified_expiry(f"a.{_b64url(b'{}')}.c") is None


def test_a_refresh_token_is_not_an_access_token_and_back(city: City, post_a: IdentityPem) -> None:
    verifier = TokenVerifier(city.trust, CITY)
    refresh = _issue(post_a, use=REFRESH, lifetime_s=8 * 3600)
    with pytest.raises(UnauthenticatedError, match="the token is for refresh, not access"):
        verifier.verify(refresh, now=NOW)
    claims = verifier.verify(refresh, now=NOW + 4 * 3600, use=REFRESH)
    assert claims.expires_at == NOW + 8 * 3600
    access = _issue(post_a)
    with pytest.raises(UnauthenticatedError, match="the token is for access, not refresh"):
        verifier.verify(access, now=NOW, use=REFRESH)
