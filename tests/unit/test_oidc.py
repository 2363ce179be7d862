"""The OpenID Connect identity source: what an ID token must be for a post to accept it
(issuer, audience, times, signature by a key of the provider's JWKS, fetched again for
an unknown key id), the role map, one login per ID token; the config's rules; the
identity sources' routing; the console's PKCE."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from citypost.config import OidcConfig
from citypost.errors import UnauthenticatedError
from console.oidc_login import pkce_challenge
from security.accounts import Authenticated
from security.identity_sources import IdentitySources, OidcLogin, PasswordLogin
from security.oidc import OidcProvider, OidcRefused, OidcSource, check_role_map

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ISSUER = "https://id.dijon.example"
CLIENT = "citypost"
NOW = 1_796_558_400.0
CONFIG = OidcConfig(
    enabled=True,
    issuer=ISSUER,
    client_id=CLIENT,
    role_map={"traffic": ("traffic-control",), "night": ("supervisor", "traffic-control")},
)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_1, KEY_2, STRANGER = _rsa(), _rsa(), _rsa()


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


class _Provider:
    """The provider's documents, as served (changed by the tests), and the fetches."""

    def __init__(self) -> None:
        self.keys = [_jwk(KEY_1, "k1")]
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "jwks_uri": ISSUER + "/jwks",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }
        self.jwks_fetches = 0

    def fetch(self, url: str) -> Any:
        assert url == ISSUER + "/.well-known/openid-configuration"
        return self.discovery

    def jwks_client(self, uri: str) -> jwt.PyJWKClient:
        provider = self

        class Served(jwt.PyJWKClient):
            def fetch_data(self) -> Any:
                provider.jwks_fetches += 1
                data = {"keys": list(provider.keys)}
                if self.jwk_set_cache is not None:
                    self.jwk_set_cache.put(data)  # type: ignore[arg-type]
                return data

        return Served(uri, cooldown_duration=0)


@pytest.fixture
def provider() -> _Provider:
    return _Provider()


@pytest.fixture
def source(provider: _Provider) -> OidcSource:
    return OidcSource(
        CONFIG,
        OidcProvider(ISSUER, fetch=provider.fetch, jwks_client=provider.jwks_client),
    )


def _token(key: Any = KEY_1, kid: str | None = "k1", alg: str = "RS256", **claims: Any) -> str:
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "alice",
        "iat": NOW - 5,
        "exp": NOW + 300,
        "groups": ["traffic"],
        "nonce": "n",
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def _refused(source: OidcSource, token: str, *, now: float = NOW) -> str:
    with pytest.raises(OidcRefused) as caught:
        source.authenticate(OidcLogin(token), now=now)
    assert isinstance(caught.value, UnauthenticatedError)
    return caught.value.message


def test_an_id_token_of_the_provider_logs_in_with_the_mapped_roles(source: OidcSource) -> None:
    found = source.authenticate(OidcLogin(_token(groups=["traffic", "night", "x"])), now=NOW)
    assert found == Authenticated(
        user="oidc:alice",
        roles=("traffic-control", "supervisor"),
        amr=("oidc",),
        source="oidc",
    )


def test_a_single_group_as_a_string_maps_too(source: OidcSource) -> None:
    found = source.authenticate(OidcLogin(_token(groups="traffic")), now=NOW)
    assert found.roles == ("traffic-control",)


def test_an_unmapped_user_is_refused_naming_its_groups(source: OidcSource) -> None:
    why = _refused(source, _token(groups=["visitors"]))
    assert "no citypost role" in why and "visitors" in why
    assert "none" in _refused(source, _token(groups=None, sub="bob"))


@pytest.mark.parametrize(
    ("claims", "cause"),
    [
        ({"aud": "another-app"}, "not for this city's client"),
        ({"aud": ["another-app", CLIENT], "azp": "another-app"}, "issued to client"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"exp": NOW - 60}, "expired"),
        ({"iat": NOW - 3600, "exp": NOW + 300}, "issued 3600 s ago"),
        ({"iat": NOW + 600}, "future"),
        ({"nbf": NOW + 600}, "not valid yet"),
        ({"sub": None}, "'sub'"),
        ({"exp": "tomorrow"}, "'exp' is not a number"),
    ],
)
def test_claims_the_post_refuses(source: OidcSource, claims: dict[str, Any], cause: str) -> None:
    assert cause in _refused(source, _token(**claims))


def test_several_audiences_with_ours_as_azp_are_accepted(source: OidcSource) -> None:
    token = _token(aud=[CLIENT, "other"], azp=CLIENT)
    assert source.authenticate(OidcLogin(token), now=NOW).user == "oidc:alice"


def test_a_signature_by_another_key_is_refused(source: OidcSource) -> None:
    assert "signature" in _refused(source, _token(key=STRANGER))


def test_hmac_and_none_are_refused(source: OidcSource) -> None:
    hmac = jwt.encode({"iss": ISSUER}, "client-secret-as-key-32-bytes-long!", algorithm="HS256")
    assert "HS256" in _refused(source, hmac)
    unsigned = jwt.encode({"iss": ISSUER}, None, algorithm="none")  # type: ignore[arg-type]
    assert "'none'" in _refused(source, unsigned)
    assert "malformed" in _refused(source, "not-a-token")


def test_an_algorithm_the_provider_does_not_announce_is_refused(
    provider: _Provider, source: OidcSource
) -> None:
    provider.discovery["id_token_signing_alg_values_supported"] = ["ES256"]
    assert "RS256" in _refused(source, _token())


def test_a_key_of_another_type_than_the_algorithm_is_refused(
    provider: _Provider, source: OidcSource
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    provider.keys.append(
        {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e1", "use": "sig"}
    )
    assert "is not for RS256" in _refused(source, _token(kid="e1"))


def test_an_unknown_key_id_fetches_the_keys_again(provider: _Provider, source: OidcSource) -> None:
    assert source.authenticate(OidcLogin(_token()), now=NOW).user == "oidc:alice"
    assert provider.jwks_fetches == 1
    provider.keys = [_jwk(KEY_1, "k1"), _jwk(KEY_2, "k2")]  # the provider rotates
    found = source.authenticate(OidcLogin(_token(key=KEY_2, kid="k2", sub="bea")), now=NOW)
    assert found.user == "oidc:bea" and provider.jwks_fetches == 2
    # Known keys come from the cache.
    source.authenticate(OidcLogin(_token(sub="carl")), now=NOW)
    assert provider.jwks_fetches == 2
    assert "not the provider's" in _refused(source, _token(key=STRANGER, kid="k9"))


def test_without_a_key_id_the_only_key_serves(provider: _Provider, source: OidcSource) -> None:
    assert source.authenticate(OidcLogin(_token(kid=None)), now=NOW).user == "oidc:alice"
    provider.keys = [_jwk(KEY_1, "k1"), _jwk(KEY_2, "k2")]
    rotated = OidcSource(
        CONFIG, OidcProvider(ISSUER, fetch=provider.fetch, jwks_client=provider.jwks_client)
    )
    assert "no key id" in _refused(rotated, _token(kid=None, sub="bea"))


def test_an_id_token_logs_in_once(source: OidcSource) -> None:
    token = _token()
    source.authenticate(OidcLogin(token), now=NOW)
    assert "used already" in _refused(source, token)


def test_the_discovery_document_must_be_the_issuers(provider: _Provider) -> None:
    provider.discovery["issuer"] = "https://evil.example"
    source = OidcSource(
        CONFIG, OidcProvider(ISSUER, fetch=provider.fetch, jwks_client=provider.jwks_client)
    )
    assert "names issuer" in _refused(source, _token())
    provider.discovery = {"issuer": ISSUER, "jwks_uri": "http://id.dijon.example/jwks"}
    source = OidcSource(
        CONFIG, OidcProvider(ISSUER, fetch=provider.fetch, jwks_client=provider.jwks_client)
    )
    assert "not https" in _refused(source, _token())


def test_a_refresh_keeps_the_roles_the_map_still_grants(source: OidcSource) -> None:
    assert source.roles_now("oidc:alice", ("supervisor", "auditor")) == ("supervisor",)
    assert source.roles_now("oidc:alice", ("auditor",)) is None


def test_the_role_map_is_checked_against_the_roles_table() -> None:
    assert check_role_map(CONFIG, ["traffic-control", "supervisor"]) == []
    assert check_role_map(CONFIG, ["traffic-control"]) == ["supervisor"]


@pytest.mark.parametrize(
    ("fields", "cause"),
    [
        ({"issuer": "http://id.dijon.example"}, "https"),
        ({"issuer": "https://id.example/?x=1"}, "no query"),
        ({"client_id": ""}, "client_id"),
        ({"role_map": {}}, "role_map"),
        ({"role_map": {"traffic": ()}}, "no role"),
    ],
)
def test_the_config_rules(fields: dict[str, Any], cause: str) -> None:
    base: dict[str, Any] = {
        "enabled": True,
        "issuer": ISSUER,
        "client_id": CLIENT,
        "role_map": {"traffic": ["traffic-control"]},
    }
    with pytest.raises(ValidationError, match=cause):
        OidcConfig(**{**base, **fields})
    assert OidcConfig(**{**base, "issuer": "http://127.0.0.1:8080"}).enabled  # loopback
    assert not OidcConfig().enabled  # off by default, and then nothing is required


def test_identity_sources_route_by_credentials_and_by_amr(source: OidcSource) -> None:
    only_oidc = IdentitySources([source])
    assert only_oidc.authenticate(OidcLogin(_token()), now=NOW).amr == ("oidc",)
    with pytest.raises(UnauthenticatedError, match="password is not enabled"):
        only_oidc.authenticate(PasswordLogin("alice", "pw"), now=NOW)
    assert only_oidc.roles_now("oidc:alice", ("oidc",), ("traffic-control",)) == (
        "traffic-control",
    )
    assert only_oidc.roles_now("alice", ("pwd",), ("traffic-control",)) is None
    with pytest.raises(UnauthenticatedError, match="ID token is not enabled"):
        IdentitySources([]).authenticate(OidcLogin("x"), now=NOW)


def test_pkce_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_loopback_redirect_takes_one_callback_on_127_0_0_1() -> None:
    import urllib.error
    import urllib.request

    from console.oidc_login import LoopbackRedirect

    with LoopbackRedirect() as redirect:
        assert redirect.redirect_uri.startswith("http://127.0.0.1:")
        base = redirect.redirect_uri.rsplit("/", 1)[0]
        with pytest.raises(urllib.error.HTTPError):  # only the callback path is served
            urllib.request.urlopen(base + "/favicon.ico", timeout=5)
        with urllib.request.urlopen(redirect.redirect_uri + "?code=c&state=s", timeout=5) as page:
            assert b"close this window" in page.read()
        with pytest.raises(urllib.error.HTTPError):  # one shot
            urllib.request.urlopen(redirect.redirect_uri + "?code=x&state=y", timeout=5)
        assert redirect.wait(1) == {"code": "c", "state": "s"}
    with LoopbackRedirect() as idle, pytest.raises(UnauthenticatedError, match="no answer"):
        idle.wait(0.1)
