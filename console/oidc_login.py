"""Logging in at the posts through the city's OpenID Connect provider.

The console is a native app (RFC 8252): it runs the authorization-code flow with
PKCE (RFC 7636, S256) in the operator's browser, and the provider sends the code
back to a one-shot HTTP server on 127.0.0.1, on a port the system picks, that
answers one redirect and stops. The console checks the `state` it sent, trades
the code (with the PKCE verifier) for the provider's ID token at the token
endpoint, checks the ID token's `nonce`, and hands the ID token to a post
(AuthService.Login), which verifies it against the provider's keys, maps the
operator's groups to roles and issues citypost tokens as for a password login.

The provider comes from flags or the environment: `--oidc-issuer` or
`$CITYPOST_OIDC_ISSUER`, `--oidc-client-id` or `$CITYPOST_OIDC_CLIENT_ID`; a
client secret, if the provider gives the console one, only from
`$CITYPOST_OIDC_CLIENT_SECRET` (a flag would stay in the shell's history). Nothing
here decides about access: the posts do.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from citypost.errors import CitypostError, ConfigError, InfrastructureError, UnauthenticatedError

if TYPE_CHECKING:  # gRPC loads only when a post is called: the flags come first
    import grpc

    from console.session import Session

ISSUER_ENV = "CITYPOST_OIDC_ISSUER"
CLIENT_ID_ENV = "CITYPOST_OIDC_CLIENT_ID"
CLIENT_SECRET_ENV = "CITYPOST_OIDC_CLIENT_SECRET"
CALLBACK_PATH = "/callback"
DEFAULT_SCOPE = "openid profile"
WAIT_S = 300.0  # for the operator to log in at the provider
HTTP_TIMEOUT_S = 10.0
_ANSWER = (
    b"<!doctype html><meta charset=utf-8><title>citypost</title>"
    b"<p>citypost: you may close this window and go back to the console.</p>"
)


@dataclass(frozen=True)
class OidcClient:
    """The console at the provider."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scope: str = DEFAULT_SCOPE


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)), unpadded."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_verifier() -> str:
    """43 to 128 unreserved characters (RFC 7636 §4.1): 64 random bytes give 86."""
    return _b64url(secrets.token_bytes(64))


def _get_json(url: str) -> Any:
    _check_url(url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
            return json.loads(answer.read(1 << 20))
    except (OSError, ValueError) as error:
        raise InfrastructureError(f"the identity provider at {url}: {error}") from None


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    loopback = (parts.hostname or "") in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError(f"{url}: the identity provider must be reached over https")


def discover(issuer: str) -> dict[str, Any]:
    """The provider's discovery document, checked to be the issuer's own."""
    document = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise UnauthenticatedError(f"the discovery document at {issuer} is not {issuer}'s")
    for name in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(document.get(name), str):
            raise UnauthenticatedError(f"the provider's discovery document has no {name}")
        _check_url(document[name])
    return document


class LoopbackRedirect:
    """A one-shot HTTP server on 127.0.0.1 (an ephemeral port) for the provider's
    redirect: it keeps the query of the first request to the callback path, answers
    it, and serves nothing else (RFC 8252 §7.3)."""

    def __init__(self) -> None:
        received: list[dict[str, str]] = []
        done = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != CALLBACK_PATH or done.is_set():
                    self.send_error(404)
                    return
                query = parse_qs(parts.query)
                received.append({k: v[0] for k, v in query.items() if v})
                done.set()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(_ANSWER)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the console prints what matters itself

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._received = received
        self._done = done
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{CALLBACK_PATH}"

    def __enter__(self) -> LoopbackRedirect:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait(self, timeout_s: float) -> dict[str, str]:
        if not self._done.wait(timeout_s):
            raise UnauthenticatedError(
                f"no answer from the identity provider within {timeout_s:.0f} s: log in again"
            )
        return self._received[0]


def _unverified_claims(id_token: str) -> dict[str, Any]:
    """The ID token's claims, NOT verified: only to check the nonce the console sent
    (the posts verify the token)."""
    parts = id_token.split(".")
    if len(parts) != 3:
        raise UnauthenticatedError("the provider's ID token is not a JWT")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        raise UnauthenticatedError("the provider's ID token is not readable") from None
    if not isinstance(claims, dict):
        raise UnauthenticatedError("the provider's ID token is not readable")
    return claims


def obtain_id_token(
    client: OidcClient,
    *,
    open_browser: Callable[[str], Any] = webbrowser.open,
    timeout_s: float = WAIT_S,
) -> str:
    """The authorization-code flow with PKCE through a loopback redirect (module
    docstring); returns the provider's ID token. `open_browser` gets the URL the
    operator logs in at."""
    document = discover(client.issuer)
    verifier, state, nonce = new_verifier(), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with LoopbackRedirect() as redirect:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client.client_id,
                "redirect_uri": redirect.redirect_uri,
                "scope": client.scope,
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = document["authorization_endpoint"]
        open_browser(f"{endpoint}{'&' if '?' in endpoint else '?'}{query}")
        answer = redirect.wait(timeout_s)
    if not secrets.compare_digest(answer.get("state", ""), state):
        raise UnauthenticatedError("the provider's answer is not for this login (state)")
    if "error" in answer:
        said = answer.get("error_description") or answer["error"]
        raise UnauthenticatedError(f"the identity provider refused: {said}")
    if not answer.get("code"):
        raise UnauthenticatedError("the provider's answer has no authorization code")
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": redirect.redirect_uri,
        "client_id": client.client_id,
        "code_verifier": verifier,
    }
    if client.client_secret:
        form["client_secret"] = client.client_secret  # client_secret_post
    reply = _post_form(document["token_endpoint"], form)
    id_token = reply.get("id_token")
    if not isinstance(id_token, str):
        raise UnauthenticatedError("the provider's token answer has no ID token")
    if not secrets.compare_digest(str(_unverified_claims(id_token).get("nonce", "")), nonce):
        raise UnauthenticatedError("the provider's ID token is not for this login (nonce)")
    return id_token


def _post_form(url: str, form: Mapping[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
            body = json.loads(answer.read(1 << 20))
    except urllib.error.HTTPError as error:
        try:
            said = json.loads(error.read(1 << 16))
            detail = said.get("error_description") or said.get("error") or error.reason
        except ValueError:
            detail = error.reason
        raise UnauthenticatedError(f"the identity provider refused the code: {detail}") from None
    except (OSError, ValueError) as error:
        raise InfrastructureError(f"the identity provider's token endpoint: {error}") from None
    if not isinstance(body, dict):
        raise UnauthenticatedError("the provider's token answer is not a JSON object")
    return body


def oidc_login(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    client: OidcClient,
    *,
    open_browser: Callable[[str], Any] = webbrowser.open,
    timeout_s: float = WAIT_S,
) -> Session:
    """Log in at the provider, then at the posts."""
    from console.session import login_with_id_token

    id_token = obtain_id_token(client, open_browser=open_browser, timeout_s=timeout_s)
    return login_with_id_token(channel_factory, posts, id_token)


# --- the console's command ----------------------------------------------------------------


def add_oidc_flags(parser: argparse.ArgumentParser) -> None:
    """--oidc and the provider's flags, for `citypost console login`."""
    parser.add_argument(
        "--oidc",
        action="store_true",
        help="log in through the city's OpenID Connect provider (in the browser)",
    )
    parser.add_argument("--oidc-issuer", help=f"the provider's issuer URL (default: ${ISSUER_ENV})")
    parser.add_argument(
        "--oidc-client-id", help=f"the console's client id there (default: ${CLIENT_ID_ENV})"
    )


def client_from(args: argparse.Namespace, environ: Mapping[str, str]) -> OidcClient:
    issuer = getattr(args, "oidc_issuer", None) or environ.get(ISSUER_ENV)
    client_id = getattr(args, "oidc_client_id", None) or environ.get(CLIENT_ID_ENV)
    if not issuer or not client_id:
        raise ConfigError(
            f"name the identity provider: --oidc-issuer or ${ISSUER_ENV}, "
            f"and --oidc-client-id or ${CLIENT_ID_ENV}"
        )
    _check_url(issuer)
    return OidcClient(issuer, client_id, environ.get(CLIENT_SECRET_ENV) or None)


def _show(url: str) -> None:
    print(f"log in at your identity provider in the browser; if none opened, go to:\n  {url}")
    webbrowser.open(url)


def cmd_oidc_login(
    args: argparse.Namespace,
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    *,
    open_browser: Callable[[str], Any] = _show,
) -> int:
    """`citypost console login --oidc`: 0 logged in (the session saved as a password
    login's), 1 refused or the provider or the posts failed (said on stderr)."""
    from console.session import keep_session

    try:
        client = client_from(args, os.environ)
        session = oidc_login(channel_factory, posts, client, open_browser=open_browser)
    except CitypostError as error:
        print(f"citypost console: {error.message}", file=sys.stderr)
        return 1
    return keep_session(args, session)
