"""Sessions on a whole small city with security on (issue 13): a logged-out session
is over at both posts, for its still-unexpired access token and its refresh token,
and stays over when the post that took the logout dies and comes back; the
administrator ends every session of a user.

One CitySystem (TLS etcd and broker, both posts on mutual TLS with the authorizer)
serves every test of the module.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from citypost.config import CityConfig, Config, PostConfig, SimConfig
from cluster.system import CitySystem
from console.session import Session, SessionFile, end_session, login, logout
from protos.citypost.v1 import auth_pb2, auth_pb2_grpc
from security import identities
from security.grpc_tls import secure_channel_factory
from security.pki import Kind, Principal
from security.pki_store import PkiStore
from tests.integration.failover_support import free_port_pair

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "dijon"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CitySystem]:
    run_dir = tmp_path_factory.mktemp("sessions")
    config = Config(
        city=CityConfig(name=CITY, scale=0.002),
        sim=SimConfig(speed=60.0),
        post=PostConfig(grpc_port=free_port_pair()),
        run_dir=run_dir,
    )
    system = CitySystem(config, run_dir)
    try:
        system.start()
        yield system
    finally:
        system.stop()


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
