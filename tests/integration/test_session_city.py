"""Sessions on a whole small city with security on (issue 13): a logged-out session
is over at both posts, for its still-unexpired access token and its refresh token,
and stays over when the post that took the logout dies and comes back; the
administrator ends every session of a user. Operators log in through a real
OpenID Connect provider (oidc-provider-mock, on 127.0.0.1): the console's
authorization-code flow with PKCE and a loopback redirect, the posts' check of the
ID token and its groups mapped to roles; an ID token for another client or a user
whose groups map to no role is refused.

One provider and one CitySystem (TLS etcd and broker, both posts on mutual TLS with
the authorizer, the provider trusted) serve every test of the module.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import grpc
import oidc_provider_mock
import pytest
import werkzeug.serving

from citypost.config import OidcConfig, SecurityConfig
from citypost.errors import UnauthenticatedError
from cluster.system import CitySystem
from console.oidc_login import OidcClient, cmd_oidc_login, obtain_id_token, oidc_login
from console.session import (
    Session,
    SessionFile,
    end_session,
    login,
    login_with_id_token,
    logout,
)
from protos.citypost.v1 import auth_pb2, auth_pb2_grpc
from security import identities
from security.grpc_tls import secure_channel_factory
from security.pki import Kind, Principal
from security.pki_store import PkiStore
from tests.integration.city_support import small_city

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"


CLIENT_ID = "citypost-dijon"
# oidc-provider-mock 0.3 takes no public client: the console shows it any secret.
CLIENT_SECRET = "console-secret"
USERS = {
    "alice": {"groups": ["traffic"], "preferred_username": "alice"},
    "mallory": {"groups": ["visitors"]},
}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """A real OpenID Connect provider on 127.0.0.1 (its own thread); its issuer URL."""
    app = oidc_provider_mock.app(
        user_claims=[
            oidc_provider_mock.User(sub=sub, claims=claims) for sub, claims in USERS.items()
        ]
    )
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, provider: str) -> Iterator[CitySystem]:
    oidc = OidcConfig(
        enabled=True,
        issuer=provider,
        client_id=CLIENT_ID,
        role_map={"traffic": ("traffic-control",)},
    )
    with small_city(
        tmp_path_factory.mktemp("sessions"), security=SecurityConfig(oidc=oidc)
    ) as system:
        yield system


def _console(city: CitySystem) -> Callable[[str], grpc.Channel]:
    store = PkiStore(city.config.pki_dir, CITY)
    return secure_channel_factory(store.ensure(Principal(CITY, Kind.CONSOLE, identities.CONSOLE)))


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _whoami(city: CitySystem, address: str, token: str) -> auth_pb2.WhoAmIResponse:
    with _console(city)(address) as channel:
        reply: auth_pb2.WhoAmIResponse = auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_pb2.WhoAmIRequest(), timeout=10, metadata=_bearer(token)
        )
        return reply


def _refresh(city: CitySystem, address: str, token: str) -> auth_pb2.LoginResponse:
    with _console(city)(address) as channel:
        reply: auth_pb2.LoginResponse = auth_pb2_grpc.AuthServiceStub(channel).Refresh(
            auth_pb2.RefreshRequest(refresh_token=token), timeout=10
        )
        return reply


def _refusal(call: Callable[[], Any], *, within_s: float = 10.0) -> str:
    """The UNAUTHENTICATED message of `call`, waiting (briefly) for a post that has not
    yet heard of the revocation from etcd."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            call()
        except grpc.RpcError as error:
            failed: Any = error
            assert failed.code() == grpc.StatusCode.UNAUTHENTICATED, failed.details()
            return str(failed.details())
        assert time.monotonic() < deadline, "still accepted"
        time.sleep(0.05)


def _audit(city: CitySystem) -> list[dict[str, Any]]:
    lines = []
    for path in city.run_dir.glob("audit-*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def _assert_over_at_both_posts(city: CitySystem, session: Session | auth_pb2.LoginResponse) -> None:
    for address in city.addresses():
        why = _refusal(lambda a=address: _whoami(city, a, session.access_token))
        assert session.session_id in why or "every session of" in why, why
        assert "log in again" in _refusal(
            lambda a=address: _refresh(city, a, session.refresh_token)
        )


def test_a_logged_out_session_is_over_at_both_posts_and_after_a_restart(
    city: CitySystem,
) -> None:
    primary, backup = city.addresses()
    session = login(_console(city), [primary], "auditor", city.passwords["auditor"])
    kept = login(_console(city), [backup], "auditor", city.passwords["auditor"])
    for address in (primary, backup):
        assert _whoami(city, address, session.access_token).caller == "auditor"
    assert session.access_expires_at > time.time() + 60  # the token itself is still good

    reply = logout(_console(city), [primary], session)
    assert reply.session_id == session.session_id

    _assert_over_at_both_posts(city, session)
    why = _refusal(lambda: _whoami(city, backup, session.access_token))
    assert f"session {session.session_id} was ended (logout) by auditor" in why
    # The user's other session is not touched.
    assert _whoami(city, backup, kept.access_token).caller == "auditor"
    # Each post audited its own refusals, with the reason.
    files = sorted(city.run_dir.glob("audit-*.jsonl"))
    assert len(files) == 2
    for path in files:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        assert any(
            e.get("action") == "rpc.refused" and "ended (logout)" in e.get("detail", "")
            for e in lines
        ), path.name
    assert any(e.get("action") == "auth.logout" for e in _audit(city))

    # The post that took the logout dies and comes back: its memory is gone, etcd is not.
    city.crash_post("primary")
    city.restart_post("primary")
    _assert_over_at_both_posts(city, session)
    assert _whoami(city, city.addresses()[0], kept.access_token).caller == "auditor"


def test_the_console_ends_its_session_at_the_posts(city: CitySystem, tmp_path: Path) -> None:
    posts = city.addresses()
    session = login(_console(city), posts, "wallboard", city.passwords["wallboard"])
    path = tmp_path / "session.json"
    SessionFile(path).save(session)
    args = argparse.Namespace(session=path, workstation=None, insecure=False)
    assert end_session(args, _console(city), posts) == 0
    assert not path.exists()
    _assert_over_at_both_posts(city, session)
    # Once more: nothing left to end here.
    assert end_session(args, _console(city), posts) == 0


def test_the_administrator_ends_every_session_of_a_user(city: CitySystem) -> None:
    posts = city.addresses()
    sessions = [
        login(_console(city), [address], "help-line", city.passwords["help-line"])
        for address in posts
    ]
    admin = login(_console(city), posts, "administrator", city.passwords["administrator"])
    time.sleep(0.01)  # the revocation is later than every token of these sessions
    with _console(city)(posts[1]) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        reply = stub.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user="help-line", reason="security test"),
            timeout=10,
            metadata=_bearer(admin.access_token),
        )
        assert reply.user == "help-line"
        # Not for anyone else to do.
        with pytest.raises(grpc.RpcError) as caught:
            stub.RevokeSessions(
                auth_pb2.RevokeSessionsRequest(user="administrator"),
                timeout=10,
                metadata=_bearer(sessions[0].access_token),
            )
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # its session is over already
    for session in sessions:
        _assert_over_at_both_posts(city, session)
    why = _refusal(lambda: _whoami(city, posts[0], sessions[0].access_token))
    assert "every session of help-line" in why and "security test" in why
    # A login after the revocation is a new session, and works.
    again = login(_console(city), posts, "help-line", city.passwords["help-line"])
    assert _whoami(city, posts[0], again.access_token).caller == "help-line"
    wallboard = login(_console(city), posts, "wallboard", city.passwords["wallboard"])
    with _console(city)(posts[0]) as channel, pytest.raises(grpc.RpcError) as caught:
        auth_pb2_grpc.AuthServiceStub(channel).RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user="help-line"),
            timeout=10,
            metadata=_bearer(wallboard.access_token),
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "accounts.admin" in error.details()


# --- logging in through the provider ------------------------------------------------------


def _as_user(sub: str) -> Callable[[str], None]:
    """The operator's browser: at the provider's page they pick `sub` (the mock's form),
    and the browser follows the provider's redirect to the console's loopback server."""

    def browse(url: str) -> None:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.request(
                "POST",
                f"{parts.path}?{parts.query}",
                body=urlencode({"sub": sub}),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 302, answer.status
            location = answer.getheader("Location") or ""
        finally:
            connection.close()
        assert location.startswith("http://127.0.0.1:"), location  # RFC 8252 loopback
        with urllib.request.urlopen(location, timeout=10) as page:
            assert b"close this window" in page.read()

    return browse


def _client(provider: str, client_id: str = CLIENT_ID) -> OidcClient:
    return OidcClient(provider, client_id, CLIENT_SECRET)


def test_an_operator_logs_in_through_the_provider(city: CitySystem, provider: str) -> None:
    posts = city.addresses()
    session = oidc_login(_console(city), posts, _client(provider), open_browser=_as_user("alice"))
    assert (session.user, session.roles) == ("oidc:alice", ("traffic-control",))
    for address in posts:  # either post's tokens hold at both
        who = _whoami(city, address, session.access_token)
        assert who.caller == "oidc:alice" and list(who.roles) == ["traffic-control"]
        assert "commands.send:traffic_signal" in who.permissions
        assert "commands.send:street_lamp" not in who.permissions
    renewed = _refresh(city, posts[1], session.refresh_token)
    assert renewed.user == "oidc:alice" and list(renewed.roles) == ["traffic-control"]
    logins = [e for e in _audit(city) if e.get("action") == "auth.login"]
    assert any(e["actor"] == "oidc:alice" and "oidc" in e.get("detail", "") for e in logins)
    # An OpenID Connect session ends like any other.
    logout(_console(city), posts, session)
    assert "ended (logout)" in _refusal(lambda: _whoami(city, posts[1], session.access_token))


def test_the_console_command_logs_in_through_the_provider(
    city: CitySystem, provider: str, tmp_path: Path
) -> None:
    path = tmp_path / "session.json"
    args = argparse.Namespace(
        session=path,
        workstation=None,
        insecure=False,
        oidc_issuer=provider,
        oidc_client_id=CLIENT_ID,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CITYPOST_OIDC_CLIENT_SECRET", CLIENT_SECRET)
        status = cmd_oidc_login(
            args, _console(city), city.addresses(), open_browser=_as_user("alice")
        )
    assert status == 0
    saved = SessionFile(path).load()
    assert saved is not None and saved.user == "oidc:alice"
    assert _whoami(city, city.addresses()[0], saved.access_token).caller == "oidc:alice"


def test_an_id_token_for_another_client_is_refused(city: CitySystem, provider: str) -> None:
    foreign = obtain_id_token(_client(provider, "another-app"), open_browser=_as_user("alice"))
    with pytest.raises(UnauthenticatedError) as caught:
        login_with_id_token(_console(city), city.addresses(), foreign)
    assert "not for this city's client" in caught.value.message
    refused = [
        e
        for e in _audit(city)
        if e.get("action") == "auth.login" and "not for this city's client" in e.get("detail", "")
    ]
    assert refused and refused[-1]["actor"] == "oidc"


def test_a_user_whose_groups_map_to_no_role_is_refused(city: CitySystem, provider: str) -> None:
    token = obtain_id_token(_client(provider), open_browser=_as_user("mallory"))
    with pytest.raises(UnauthenticatedError) as caught:
        login_with_id_token(_console(city), city.addresses(), token)
    assert "no citypost role" in caught.value.message and "visitors" in caught.value.message


def test_an_id_token_logs_in_once(city: CitySystem, provider: str) -> None:
    posts = city.addresses()[:1]
    token = obtain_id_token(_client(provider), open_browser=_as_user("alice"))
    assert login_with_id_token(_console(city), posts, token).user == "oidc:alice"
    with pytest.raises(UnauthenticatedError, match="used already"):
        login_with_id_token(_console(city), posts, token)


def test_the_administrator_ends_sessions_from_the_console(
    city: CitySystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.cli import run

    victim = login(_console(city), city.addresses(), "snow-control", city.passwords["snow-control"])
    session = tmp_path / "session.json"
    flags = ["--pki-dir", str(city.config.pki_dir), "--session", str(session)]
    posts = ["--post", ",".join(city.addresses())]
    monkeypatch.setattr("getpass.getpass", lambda _prompt: city.passwords["administrator"])
    assert run([*posts, *flags, "login", "--user", "administrator"]) == 0
    time.sleep(0.01)  # the revocation is later than every token of the victim's session
    revoke = ["sessions", "revoke", "--user", "snow-control", "--reason", "badge lost"]
    assert run([*posts, *flags, *revoke]) == 0
    _assert_over_at_both_posts(city, victim)
    assert "badge lost" in _refusal(lambda: _whoami(city, city.addresses()[1], victim.access_token))
    # The console's logout ends the administrator's own session at the posts too.
    admin = SessionFile(session).load()
    assert admin is not None
    assert run([*posts, *flags, "logout"]) == 0
    _assert_over_at_both_posts(city, admin)
