"""Ended sessions: the in-memory set every post checks on each call (pure), and what
the AuthService and the authorizer make of it: a logged-out session's access and
refresh tokens are refused with the reason, audited; an administrator's revocation
of a user ends the sessions begun before it and not those after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from api.auth import AuthService
from api.authorization import Authorizer, Caller, current
from citypost.errors import InvalidArgumentError, UnauthenticatedError
from failover.revoked_sessions import (
    REVOKED_SESSION,
    REVOKED_USER,
    InMemoryRevocations,
    RevokedSet,
    revocation_key,
)
from protos.citypost.v1 import auth_pb2, control_state_pb2
from security import pki
from security.account_book import AccountBook
from security.accounts import LocalAccounts
from security.grpc_tls import PEER_CERT_KEY
from security.identity_sources import IdentitySources, LocalSource
from security.pki import Kind, Principal
from security.pki_store import IdentityPem
from security.policy import Policy
from security.tokens import TokenIssuer, TokenVerifier

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CITY = "dijon"
NOW_DT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
NOW = NOW_DT.timestamp()
PASSWORD = "correct horse battery"
WHOAMI = "/citypost.v1.AuthService/WhoAmI"
KEEP_S = 12 * 3600.0


def _revocation(**fields: Any) -> auth_pb2.SessionRevocation:
    fields.setdefault("revoked_at_ms", int(NOW * 1000))
    return auth_pb2.SessionRevocation(**fields)


# --- the set -------------------------------------------------------------------------


def test_a_logged_out_session_is_refused_naming_who_and_when() -> None:
    revoked = RevokedSet(KEEP_S)
    revoked.add(_revocation(session_id="s-1", user="claire", by="claire"))
    why = revoked.refusal("s-1", "claire", NOW - 10)
    assert why is not None
    assert "session s-1 was ended (logout) by claire at 2026-12-05T12:00:00+00:00" in why
    assert revoked.refusal("s-2", "claire", NOW - 10) is None


def test_an_administrators_revocation_says_so_and_why() -> None:
    revoked = RevokedSet(KEEP_S)
    revoked.add(_revocation(session_id="s-1", by="admin", reason="laptop stolen"))
    why = revoked.refusal("s-1", "claire", NOW)
    assert why is not None and "revoked by admin" in why and "laptop stolen" in why


def test_a_users_revocation_ends_what_began_before_it_only() -> None:
    revoked = RevokedSet(KEEP_S)
    revoked.add(_revocation(user="claire", by="admin"))
    assert revoked.refusal("s-1", "claire", NOW - 1) is not None
    assert revoked.refusal("s-1", "claire", NOW) is not None  # the same millisecond
    assert revoked.refusal("s-2", "claire", NOW + 1) is None  # logged in again after
    assert revoked.refusal("s-1", "bob", NOW - 1) is None


def test_a_later_revocation_of_a_user_is_kept_over_an_earlier_one() -> None:
    revoked = RevokedSet(KEEP_S)
    revoked.add(_revocation(user="claire", revoked_at_ms=int(NOW * 1000) + 5000))
    revoked.add(_revocation(user="claire"))  # arrives late (another post's watch)
    assert revoked.refusal("s", "claire", NOW + 4) is not None


def test_changes_from_the_watch_add_and_remove() -> None:
    revoked = RevokedSet(KEEP_S)
    session = _revocation(session_id="a/b", user="claire", by="claire")
    user = _revocation(user="bob", by="admin")
    revoked.apply(revocation_key(session), session.SerializeToString())
    revoked.apply(revocation_key(user), user.SerializeToString())
    assert revocation_key(session) == REVOKED_SESSION + "a%2Fb"
    assert revocation_key(user) == REVOKED_USER + "bob"
    assert len(revoked) == 2
    assert revoked.refusal("a/b", "claire", NOW) is not None
    revoked.apply(revocation_key(session), None)  # the lease ended
    revoked.apply(revocation_key(user), None)
    assert len(revoked) == 0 and revoked.refusal("a/b", "claire", NOW) is None


def test_a_value_that_is_no_revocation_is_ignored() -> None:
    revoked = RevokedSet(KEEP_S)
    revoked.apply(REVOKED_SESSION + "x", b"\xff\xff\xff")
    revoked.apply(REVOKED_SESSION + "y", auth_pb2.SessionRevocation().SerializeToString())
    assert len(revoked) == 0


def test_a_revocation_names_a_session_or_a_user() -> None:
    with pytest.raises(InvalidArgumentError):
        revocation_key(auth_pb2.SessionRevocation(by="admin"))
    with pytest.raises(InvalidArgumentError):
        RevokedSet(0)


def test_entries_are_forgotten_once_no_token_can_outlive_them() -> None:
    revoked = RevokedSet(60)
    revoked.add(_revocation(session_id="s-1", by="x"))
    revoked.prune(int((NOW + 59) * 1000))
    assert len(revoked) == 1
    revoked.prune(int((NOW + 61) * 1000))
    assert len(revoked) == 0


async def test_in_memory_revocations_prune_as_they_add() -> None:
    clock = [NOW]
    store = InMemoryRevocations(60, now=lambda: clock[0])
    await store.revoke(_revocation(session_id="s-1", by="x"))
    clock[0] = NOW + 120
    await store.revoke(_revocation(session_id="s-2", by="x", revoked_at_ms=int(clock[0] * 1000)))
    assert store.refusal("s-1", "x", NOW) is None  # its tokens have all expired by now
    assert store.refusal("s-2", "x", NOW) is not None


# --- the AuthService and the authorizer ------------------------------------------------


class _Context:
    """What the servicers and the authorizer read of a call: the peer's certificate."""

    def __init__(self, cert_pem: bytes) -> None:
        self._auth = {PEER_CERT_KEY: [cert_pem]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


class _Room:
    def __init__(self, tmp_path: Path) -> None:
        root = pki.create_root(CITY, now=NOW_DT)
        issuing = pki.create_issuing(root, CITY, now=NOW_DT)
        trust = issuing.cert_pem + root.cert_pem
        post = pki.issue(issuing, Principal(CITY, Kind.POST, "primary"), now=NOW_DT)
        console = pki.issue(issuing, Principal(CITY, Kind.CONSOLE, "room"), now=NOW_DT)
        self.context = _Context(console.cert_pem)
        self.clock = [NOW]
        self.audit: list[control_state_pb2.AuditEntry] = []
        book = AccountBook(
            tmp_path / "accounts.json",
            hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
        )
        book.add("claire", PASSWORD, ["traffic-control"], now=NOW)
        book.add("admin", PASSWORD, ["administrator"], now=NOW)
        issuer = TokenIssuer(IdentityPem(trust, post.cert_pem, post.key_pem), CITY)
        verifier = TokenVerifier(trust, CITY)
        policy = Policy()
        self.auth = AuthService(
            IdentitySources([LocalSource(LocalAccounts(book), book)]),
            lambda: issuer,
            verifier,
            policy,
            audit=self.audit.append,
            now=lambda: self.clock[0],
        )
        self.authorizer = Authorizer(
            policy,
            verifier,
            revoked=frozenset,
            audit=self.audit.append,
            sessions=self.auth.sessions,
            now=lambda: self.clock[0],
        )

    def login(self, user: str) -> auth_pb2.LoginResponse:
        request = auth_pb2.LoginRequest(user=user, password=PASSWORD)
        return asyncio.run(self.auth.Login(request, self.context))  # type: ignore[arg-type]

    def admit(self, token: str, method: str = WHOAMI) -> Caller:
        metadata: Sequence[tuple[str, str]] = (("authorization", f"Bearer {token}"),)
        return self.authorizer.admit(method, metadata, self.context, None)

    def refresh(self, token: str) -> auth_pb2.LoginResponse:
        request = auth_pb2.RefreshRequest(refresh_token=token)
        return asyncio.run(self.auth.Refresh(request, self.context))  # type: ignore[arg-type]

    def as_caller(self, caller: Caller, call: Callable[[], Any]) -> Any:
        async def run() -> Any:
            current.set(caller)
            return await call()

        return asyncio.run(run())


@pytest.fixture
def room(tmp_path: Path) -> _Room:
    return _Room(tmp_path)


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(UnauthenticatedError) as caught:
        call()
    return caught.value.message


def test_logout_ends_the_session_for_its_access_and_refresh_tokens(room: _Room) -> None:
    session = room.login("claire")
    assert room.admit(session.access_token).name == "claire"
    other = room.login("claire")  # another session of the same user stays
    reply = room.as_caller(
        Caller(""),
        lambda: room.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=session.refresh_token),
            room.context,  # type: ignore[arg-type]
        ),
    )
    assert (reply.session_id, reply.user) == (session.session_id, "claire")
    why = _refused(lambda: room.admit(session.access_token))
    assert f"session {session.session_id} was ended (logout) by claire" in why
    assert "log in again" in _refused(lambda: room.refresh(session.refresh_token))
    assert room.admit(other.access_token).name == "claire"
    actions = [(e.action, e.outcome) for e in room.audit]
    assert ("auth.logout", control_state_pb2.AUDIT_OK) in actions
    assert ("rpc.refused", control_state_pb2.AUDIT_REFUSED) in actions
    assert ("auth.refresh", control_state_pb2.AUDIT_REFUSED) in actions
    refused = next(e for e in room.audit if e.action == "rpc.refused")
    assert refused.target == WHOAMI and "ended (logout)" in refused.detail


def test_logout_with_the_calls_own_access_token(room: _Room) -> None:
    session = room.login("claire")
    caller = room.admit(session.access_token)
    room.as_caller(
        caller,
        lambda: room.auth.Logout(auth_pb2.LogoutRequest(), room.context),  # type: ignore[arg-type]
    )
    assert "ended (logout)" in _refused(lambda: room.admit(session.access_token))


def test_logout_needs_a_credential_of_the_session(room: _Room) -> None:
    why = _refused(
        lambda: room.as_caller(
            Caller(""),
            lambda: room.auth.Logout(
                auth_pb2.LogoutRequest(),
                room.context,  # type: ignore[arg-type]
            ),
        )
    )
    assert "refresh token" in why
    session = room.login("claire")
    why = _refused(
        lambda: room.as_caller(
            Caller(""),
            lambda: room.auth.Logout(
                # An access token is not a refresh token.
                auth_pb2.LogoutRequest(refresh_token=session.access_token),
                room.context,  # type: ignore[arg-type]
            ),
        )
    )
    assert "not refresh" in why


def test_the_administrator_revokes_every_session_of_a_user_begun_before(room: _Room) -> None:
    first, second = room.login("claire"), room.login("claire")
    admin = room.admit(room.login("admin").access_token)
    room.clock[0] = NOW + 1
    reply = room.as_caller(
        admin,
        lambda: room.auth.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(user="claire", reason="left the city"),
            room.context,  # type: ignore[arg-type]
        ),
    )
    assert reply.user == "claire" and reply.revoked_at_ms == int((NOW + 1) * 1000)
    for session in (first, second):
        why = _refused(lambda s=session: room.admit(s.access_token))  # type: ignore[misc]
        assert "every session of claire" in why and "left the city" in why
        _refused(lambda s=session: room.refresh(s.refresh_token))  # type: ignore[misc]
    room.clock[0] = NOW + 2
    again = room.login("claire")  # a new login is a new session, after the revocation
    assert room.admit(again.access_token).name == "claire"
    audited = [e for e in room.audit if e.action == "auth.revoke"]
    assert audited and audited[0].actor == "admin"
    assert audited[0].target.startswith("every session of claire")


def test_the_administrator_revokes_named_sessions(room: _Room) -> None:
    one, two = room.login("claire"), room.login("claire")
    admin = room.admit(room.login("admin").access_token)
    room.as_caller(
        admin,
        lambda: room.auth.RevokeSessions(
            auth_pb2.RevokeSessionsRequest(session_ids=[one.session_id]),
            room.context,  # type: ignore[arg-type]
        ),
    )
    assert "revoked by admin" in _refused(lambda: room.admit(one.access_token))
    assert room.admit(two.access_token).name == "claire"


def test_revoke_sessions_names_something(room: _Room) -> None:
    admin = room.admit(room.login("admin").access_token)
    with pytest.raises(InvalidArgumentError, match="name the sessions"):
        room.as_caller(
            admin,
            lambda: room.auth.RevokeSessions(
                auth_pb2.RevokeSessionsRequest(),
                room.context,  # type: ignore[arg-type]
            ),
        )


def test_only_the_administrator_may_revoke(room: _Room) -> None:
    from citypost.errors import PermissionDeniedError

    claire = room.login("claire")
    with pytest.raises(PermissionDeniedError, match=r"accounts\.admin"):
        room.admit(claire.access_token, "/citypost.v1.AuthService/RevokeSessions")
    admin = room.login("admin")
    assert room.admit(admin.access_token, "/citypost.v1.AuthService/RevokeSessions").name
