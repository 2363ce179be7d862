"""Logging in through the city's OpenID Connect provider: the post checks an ID token
and maps the operator's groups to citypost roles.

The console runs the authorization-code flow with PKCE (console/oidc_login.py) and
hands the post the provider's ID token; the post then issues its own tokens as for
a local login, with `amr` ["oidc"]. The ID token is accepted only if (OpenID
Connect Core 1.0 §3.1.3.7):

- the provider is the configured one: its discovery document
  (`<issuer>/.well-known/openid-configuration`) names exactly that issuer, and
  the token's `iss` is it;
- it is signed with a key of the provider's JWKS (the document's `jwks_uri`), by
  an asymmetric algorithm the provider announces (RS*, PS*, ES*, EdDSA: never
  `none` nor HMAC, whose secret would be the client's); the keys are cached and
  fetched again when a token names a key id not among them (a key rotation), at
  most once per cooldown;
- `aud` names the city's client id (and `azp`, when present, is it);
- `exp` has not passed, `nbf` has, and `iat` is at most `max_age_s` ago (with a
  leeway for clocks), so an ID token found later is of no use;
- it was not used at this post before (one login per ID token);
- the role claim's values map to at least one citypost role (`role_map`).

The operator is `oidc:<username claim>`, so no provider's user can be taken for a
local account of the same name. A refresh of such a session keeps the roles it
was given that the role map still grants; the session ends with its refresh token
(or a logout, or an administrator's revocation of that user).

Refusals are `OidcRefused` (UNAUTHENTICATED) naming the cause: unlike a password,
nothing here tells an attacker whether an account exists. Network reads use the
standard library (`urllib`) and PyJWT's `PyJWKClient`; `authenticate` blocks, so the
AuthService runs it off its event loop.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK, PyJWKClient

from citypost.config import OidcConfig
from citypost.errors import UnauthenticatedError
from security.accounts import Authenticated
from security.identity_sources import Credentials, OidcLogin

METHOD = "oidc"
USER_PREFIX = "oidc:"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Asymmetric signatures only: an HMAC ID token is keyed with the client's secret, which
# the posts do not hold (and a console holds, so it could forge one).
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# The key type each family of algorithms signs with.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
LEEWAY_S = 30.0
MAX_DOCUMENT_BYTES = 1 << 20
DISCOVERY_TTL_S = 3600.0
JWKS_COOLDOWN_S = 30.0  # the least time between two fetches for an unknown key id
MAX_REMEMBERED = 10_000  # ID tokens remembered as used (each until it expires)


class OidcRefused(UnauthenticatedError):
    """An ID token refused; the message names why (for the caller and the audit)."""


@dataclass(frozen=True)
class Discovery:
    """What the post needs of the provider's discovery document."""

    issuer: str
    jwks_uri: str
    algorithms: frozenset[str]


FetchJson = Callable[[str], Any]


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in {"127.0.0.1", "localhost", "::1"}


def fetch_json(url: str, *, context: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> Any:
    """GET a JSON document (https, or http on a loopback host); OidcRefused on failure."""
    scheme = urlsplit(url).scheme
    if scheme != "https" and not (scheme == "http" and _loopback(url)):
        raise OidcRefused(f"the provider's {url} is not https")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            body = answer.read(MAX_DOCUMENT_BYTES + 1)
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise OidcRefused(f"the identity provider cannot be reached ({url}): {error}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OidcRefused(f"the provider's {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise OidcRefused(f"the provider's {url} is not JSON") from None


def parse_discovery(document: Any, issuer: str) -> Discovery:
    """The parts of a discovery document the post uses, checked (OpenID Connect
    Discovery 1.0 §4.3: the issuer must be exactly the one asked)."""
    if not isinstance(document, dict):
        raise OidcRefused("the provider's discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise OidcRefused(
            f"the discovery document names issuer {document.get('issuer')!r}, not {issuer!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise OidcRefused("the discovery document has no jwks_uri")
    scheme = urlsplit(jwks_uri).scheme
    if scheme != "https" and not (scheme == "http" and _loopback(jwks_uri)):
        raise OidcRefused(f"the provider's jwks_uri {jwks_uri!r} is not https")
    announced = document.get("id_token_signing_alg_values_supported") or ["RS256"]
    if not isinstance(announced, list):
        raise OidcRefused("id_token_signing_alg_values_supported is not a list")
    algorithms = frozenset(a for a in announced if a in SIGNING_ALGORITHMS)
    if not algorithms:
        raise OidcRefused(f"the provider signs ID tokens with none of {sorted(SIGNING_ALGORITHMS)}")
    return Discovery(issuer, jwks_uri, algorithms)


class OidcProvider:
    """The provider's discovery document and signing keys, fetched when first needed
    (a post starts while the provider is down) and kept: the document for
    `discovery_ttl_s`, the keys until a token names one not among them."""

    def __init__(
        self,
        issuer: str,
        *,
        ca_file: str | None = None,
        timeout_s: float = 5.0,
        discovery_ttl_s: float = DISCOVERY_TTL_S,
        jwks_cooldown_s: float = JWKS_COOLDOWN_S,
        fetch: FetchJson | None = None,
        jwks_client: Callable[[str], PyJWKClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._fetch = fetch or (
            lambda url: fetch_json(url, context=self._context, timeout_s=timeout_s)
        )
        self._new_jwks = jwks_client or (
            lambda uri: PyJWKClient(
                uri,
                timeout=timeout_s,
                ssl_context=self._context,
                cooldown_duration=jwks_cooldown_s,
            )
        )
        self._discovery_ttl_s = discovery_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._discovery: tuple[float, Discovery] | None = None
        self._jwks: PyJWKClient | None = None

    def discovery(self) -> Discovery:
        with self._lock:
            now = self._clock()
            if self._discovery is None or now - self._discovery[0] > self._discovery_ttl_s:
                url = self.issuer.rstrip("/") + DISCOVERY_PATH
                found = parse_discovery(self._fetch(url), self.issuer)
                if self._jwks is None or self._jwks.uri != found.jwks_uri:
                    self._jwks = self._new_jwks(found.jwks_uri)
                self._discovery = (now, found)
            return self._discovery[1]

    def signing_key(self, kid: str | None) -> PyJWK:
        """The provider's key `kid` (fetched again if unknown); without a kid, its only
        signing key (OpenID Connect Core §10.1: a kid is needed once there are several)."""
        self.discovery()
        jwks = self._jwks
        assert jwks is not None
        try:
            if kid is not None:
                return jwks.get_signing_key(kid)
            keys = [k for k in jwks.get_jwk_set().keys if k.public_key_use in ("sig", None)]
        except jwt.PyJWKClientConnectionError as error:
            raise OidcRefused(f"the provider's keys cannot be fetched: {error}") from None
        except jwt.PyJWKClientError as error:
            raise OidcRefused(f"the ID token's key is not the provider's: {error}") from None
        except jwt.PyJWKSetError as error:
            raise OidcRefused(f"the provider's key set is unusable: {error}") from None
        if len(keys) != 1:
            raise OidcRefused(f"the ID token names no key id and the provider has {len(keys)} keys")
        return keys[0]


def _values(claim: Any) -> list[str]:
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list):
        return [v for v in claim if isinstance(v, str)]
    return []


class OidcSource:
    """The identity source of ID tokens (module docstring)."""

    name = "oidc"
    method = METHOD

    def __init__(
        self,
        config: OidcConfig,
        provider: OidcProvider,
        *,
        leeway_s: float = LEEWAY_S,
    ) -> None:
        self.config = config
        self.provider = provider
        self.leeway_s = leeway_s
        self._role_map: Mapping[str, tuple[str, ...]] = dict(config.role_map)
        self._granted = frozenset(r for roles in self._role_map.values() for r in roles)
        self._used: dict[str, float] = {}  # SHA-256 of an ID token used -> its exp
        self._guard = threading.Lock()

    @classmethod
    def from_config(cls, config: OidcConfig) -> OidcSource:
        ca = None if config.ca_file is None else str(config.ca_file)
        return cls(config, OidcProvider(config.issuer, ca_file=ca))

    @property
    def granted_roles(self) -> frozenset[str]:
        """Every role the map can grant (checked against the roles table at start)."""
        return self._granted

    def accepts(self, credentials: Credentials) -> bool:
        return isinstance(credentials, OidcLogin)

    def authenticate(self, credentials: Credentials, *, now: float) -> Authenticated:
        assert isinstance(credentials, OidcLogin)
        claims = self.verify(credentials.id_token, now=now)
        roles = self.roles_of(claims)
        username = claims.get(self.config.username_claim)
        if not isinstance(username, str) or not username:
            raise OidcRefused(f"the ID token has no {self.config.username_claim!r} claim")
        self._use_once(credentials.id_token, float(claims["exp"]), now)
        return Authenticated(
            user=USER_PREFIX + username, roles=roles, amr=(METHOD,), source=self.name
        )

    def roles_now(self, user: str, roles: tuple[str, ...]) -> tuple[str, ...] | None:
        kept = tuple(r for r in roles if r in self._granted)
        return kept or None

    # --- the checks ----------------------------------------------------------------------

    def verify(self, id_token: str, *, now: float) -> dict[str, Any]:
        """The claims of an ID token the post accepts (module docstring)."""
        if not isinstance(id_token, str) or id_token.count(".") != 2:
            raise OidcRefused("the ID token is malformed: not a signed JWT")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.DecodeError:
            raise OidcRefused("the ID token is malformed: its header is not readable") from None
        discovery = self.provider.discovery()
        alg = header.get("alg")
        if alg not in discovery.algorithms:
            raise OidcRefused(
                f"ID token algorithm {alg!r} refused: the provider signs with "
                f"{', '.join(sorted(discovery.algorithms))}"
            )
        kid = header.get("kid")
        key = self.provider.signing_key(kid if isinstance(kid, str) else None)
        if key.key_type != _KEY_TYPES[alg[:2]]:
            raise OidcRefused(f"the provider's key {kid!r} ({key.key_type}) is not for {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=[alg],
                audience=self.config.client_id,
                issuer=discovery.issuer,
                # Times are checked below against the `now` passed in.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "sub", "exp", "iat"],
                },
            )
        except jwt.InvalidAudienceError:
            raise OidcRefused(
                f"the ID token is not for this city's client ({self.config.client_id!r})"
            ) from None
        except jwt.InvalidIssuerError:
            raise OidcRefused(f"the ID token's issuer is not {discovery.issuer!r}") from None
        except jwt.MissingRequiredClaimError as error:
            raise OidcRefused(f"the ID token has no {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise OidcRefused("the ID token's signature does not verify") from None
        except jwt.PyJWTError as error:  # malformed, or a key unfit for the algorithm
            raise OidcRefused(f"the ID token is refused: {error}") from None
        self._check_times(claims, now)
        azp = claims.get("azp")
        if azp is not None and azp != self.config.client_id:
            raise OidcRefused(f"the ID token was issued to client {azp!r}, not this city's")
        return claims

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise OidcRefused(f"the ID token's {name!r} is not a number")
        if float(claims["exp"]) + self.leeway_s < now:
            raise OidcRefused("the ID token has expired: log in again at the provider")
        if "nbf" in claims and float(claims["nbf"]) - self.leeway_s > now:
            raise OidcRefused("the ID token is not valid yet")
        iat = float(claims["iat"])
        if iat - self.leeway_s > now:
            raise OidcRefused("the ID token is issued in the future (clocks apart?)")
        if now - iat > self.config.max_age_s + self.leeway_s:
            raise OidcRefused(
                f"the ID token was issued {now - iat:.0f} s ago, more than "
                f"{self.config.max_age_s:.0f} s: log in again at the provider"
            )

    def roles_of(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The citypost roles the role claim's values map to; OidcRefused if none."""
        values = _values(claims.get(self.config.role_claim))
        roles = tuple(
            dict.fromkeys(role for value in values for role in self._role_map.get(value, ()))
        )
        if not roles:
            raise OidcRefused(
                f"no citypost role for this user: its {self.config.role_claim!r} "
                f"({', '.join(values) or 'none'}) map to none"
            )
        return roles

    def _use_once(self, id_token: str, exp: float, now: float) -> None:
        digest = hashlib.sha256(id_token.encode()).hexdigest()
        with self._guard:
            if digest in self._used:
                raise OidcRefused("this ID token was used already: log in again at the provider")
            if len(self._used) >= MAX_REMEMBERED:
                for seen in [d for d, until in self._used.items() if until + self.leeway_s < now]:
                    del self._used[seen]
            if len(self._used) >= MAX_REMEMBERED:
                raise OidcRefused("too many OpenID Connect logins at once: try again shortly")
            self._used[digest] = exp


def check_role_map(config: OidcConfig, roles: Sequence[str]) -> list[str]:
    """The roles the role map grants that the roles table does not have."""
    known = set(roles)
    return sorted({r for mapped in config.role_map.values() for r in mapped} - known)
