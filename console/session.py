"""An operator's session at the posts: log in once, carry a short access token,
renew it with the refresh token before it ends.

`TokenSource` hands PostClient the current access token before each call and
renews it (AuthService.Refresh) when it has less than `RENEW_BEFORE_S` left;
programs that hold a password (the drills' operator load, the tests) may log
in again when the refresh token itself ends. `SessionFile` keeps the console's
session between commands (0600; tokens are bound to this workstation's
certificate, so a copied file is useless elsewhere). `logout` ends the session at
the posts (AuthService.Logout: both posts refuse its tokens from then on) before
the console forgets it (`end_session`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from citypost.errors import ConfigError, InfrastructureError, UnauthenticatedError
from console.workstation import DEFAULT_WORKSTATION, SESSION_ENV, WORKSTATION_ENV
from protos.citypost.v1 import auth_pb2, auth_pb2_grpc
from security.files import replace_file

RENEW_BEFORE_S = 60.0


R = TypeVar("R")


@dataclass(frozen=True)
class Session:
    user: str
    roles: tuple[str, ...]
    session_id: str
    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float

    @classmethod
    def of(cls, reply: auth_pb2.LoginResponse) -> Session:
        return cls(
            user=reply.user,
            roles=tuple(reply.roles),
            session_id=reply.session_id,
            access_token=reply.access_token,
            access_expires_at=reply.access_expires_at_ms / 1000,
            refresh_token=reply.refresh_token,
            refresh_expires_at=reply.refresh_expires_at_ms / 1000,
        )


def _call(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    call: Callable[[Any], auth_pb2.LoginResponse],
) -> Session:
    """A session from the first post that answers: any post logs in (tokens hold at
    every post)."""
    return Session.of(_first_answer(channel_factory, posts, call))


def _first_answer(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    call: Callable[[Any], R],
) -> R:
    """`call` on the AuthService of the first post that answers. UnauthenticatedError when
    a post refuses it; InfrastructureError when none answers, or for any other refusal."""
    unreachable = []
    for address in posts:
        with channel_factory(address) as channel:
            try:
                return call(auth_pb2_grpc.AuthServiceStub(channel))
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    unreachable.append(address)
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise UnauthenticatedError(error.details() or "refused") from None
                raise InfrastructureError(f"{address}: {code.name}: {error.details()}") from None
    raise InfrastructureError(f"no post answers at {', '.join(unreachable)}")


def login(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    user: str,
    password: str,
    otp: str | None = None,
    *,
    timeout_s: float = 10.0,
) -> Session:
    request = auth_pb2.LoginRequest(user=user, password=password, otp=otp or "")
    return _call(channel_factory, posts, lambda stub: stub.Login(request, timeout=timeout_s))


def login_with_id_token(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    id_token: str,
    *,
    timeout_s: float = 10.0,
) -> Session:
    """Citypost tokens for an ID token of the city's OpenID Connect provider
    (console.oidc_login obtains it), from the first post that answers."""
    request = auth_pb2.LoginRequest(oidc_id_token=id_token)
    return _call(channel_factory, posts, lambda stub: stub.Login(request, timeout=timeout_s))


def refresh(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    session: Session,
    *,
    timeout_s: float = 10.0,
) -> Session:
    request = auth_pb2.RefreshRequest(refresh_token=session.refresh_token)
    return _call(channel_factory, posts, lambda stub: stub.Refresh(request, timeout=timeout_s))


def logout(
    channel_factory: Callable[[str], grpc.Channel],
    posts: Sequence[str],
    session: Session,
    *,
    timeout_s: float = 10.0,
) -> auth_pb2.LogoutResponse:
    """End the session at the posts (any post: the revocation holds at every one).
    UnauthenticatedError when the posts refuse the refresh token (it expired, or the
    session was ended already elsewhere: nothing is left to end); InfrastructureError
    when no post answers."""
    request = auth_pb2.LogoutRequest(refresh_token=session.refresh_token)
    reply: auth_pb2.LogoutResponse = _first_answer(
        channel_factory, posts, lambda stub: stub.Logout(request, timeout=timeout_s)
    )
    return reply


def keep_session(args: Any, session: Session) -> int:
    """A login's end, whichever way it was made: the session saved for the next commands,
    who it is said; the exit status (0)."""
    session_file(args).save(session)
    until = time.strftime("%H:%M", time.localtime(session.refresh_expires_at))
    print(f"logged in as {session.user} ({', '.join(session.roles)}) until {until}")
    return 0


def end_session(args: Any, factory: Callable[[str], grpc.Channel], posts: Sequence[str]) -> int:
    """`citypost console logout`: end this workstation's session at the posts, then
    forget it; says what happened and returns the exit status. 0 when the posts ended
    it (or had ended it already: its refresh token expired or was revoked); 1 when no
    post answered: the session is then kept, so that a later logout can end it (its
    tokens hold until they expire)."""
    file = session_file(args)
    session = file.load()
    if session is None:
        print("nobody was logged in on this workstation")
        return 0
    if not getattr(args, "insecure", False):  # without TLS there are no tokens to end
        try:
            logout(factory, posts, session)
        except UnauthenticatedError as error:
            file.remove()
            print(f"logged out (the posts had ended the session already: {error.message})")
            return 0
        except InfrastructureError as error:
            print(
                f"citypost console: not logged out: {error.message}; "
                "the session is kept: try again",
                file=sys.stderr,
            )
            return 1
    file.remove()
    print("logged out: the session is ended at every post")
    return 0


class TokenSource:
    """The current access token, renewed on demand; thread-safe."""

    def __init__(
        self,
        channel_factory: Callable[[str], grpc.Channel],
        posts: Sequence[str],
        session: Session,
        *,
        password: str | None = None,
        on_renew: Callable[[Session], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._factory = channel_factory
        self._posts = list(posts)
        self._session = session
        self._password = password
        self._on_renew = on_renew
        self._now = now
        self._lock = threading.Lock()

    @classmethod
    def logged_in(
        cls,
        channel_factory: Callable[[str], grpc.Channel],
        posts: Sequence[str],
        user: str,
        password: str,
    ) -> TokenSource:
        """A program's session: it may log in again with its password when the refresh
        token ends."""
        session = login(channel_factory, posts, user, password)
        return cls(channel_factory, posts, session, password=password)

    @property
    def session(self) -> Session:
        return self._session

    def __call__(self) -> str:
        with self._lock:
            now = self._now()
            session = self._session
            if session.access_expires_at - now > RENEW_BEFORE_S:
                return session.access_token
            if session.refresh_expires_at - now > RENEW_BEFORE_S:
                renewed = refresh(self._factory, self._posts, session)
            elif self._password is not None:
                renewed = login(self._factory, self._posts, session.user, self._password)
            else:
                raise UnauthenticatedError(
                    "the session has ended: log in again (citypost console login)"
                )
            self._session = renewed
            if self._on_renew is not None:
                self._on_renew(renewed)
            return renewed.access_token


class SessionFile:
    """The console's session on disk, between commands."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls, flag: Path | None, workstation: str) -> SessionFile:
        if flag is not None:
            return cls(flag)
        env = os.environ.get(SESSION_ENV)
        if env:
            return cls(Path(env))
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return cls(base / "citypost" / f"session-{workstation}.json")

    def load(self) -> Session | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ConfigError(f"session file {self.path} is unreadable: {error}") from None
        raw["roles"] = tuple(raw.get("roles", ()))
        try:
            return Session(**raw)
        except TypeError:
            raise ConfigError(f"session file {self.path} is not a session: log in again") from None

    def save(self, session: Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.path, json.dumps(asdict(session)))

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def session_file(args: Any) -> SessionFile:
    """The session file of the console's flags (--session, --workstation)."""
    name = args.workstation or os.environ.get(WORKSTATION_ENV)
    return SessionFile.default(args.session, name or DEFAULT_WORKSTATION)


def token_source(
    args: Any, factory: Callable[[str], grpc.Channel], posts: Sequence[str]
) -> TokenSource | None:
    """The logged-in operator's tokens, renewed and saved as they are used; None when
    nobody logged in on this workstation (or the city runs without TLS)."""
    if args.insecure:
        return None
    file = session_file(args)
    session = file.load()
    if session is None:
        return None
    return TokenSource(factory, posts, session, on_renew=file.save)
