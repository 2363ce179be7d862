"""AuthService: operators log in and renew their tokens at any post.

A login checks the credentials against the identity source that takes them
(security.identity_sources: the local accounts, argon2id and TOTP; or the city's
OpenID Connect provider, whose ID token the console brings), then the post signs
two tokens with its own certificate: a short access token for calls and a
refresh token for the shift. Both are bound to the workstation certificate the
login came with (RFC 8705), so a token copied to another machine is refused. A
refresh asks the source that made the session again: a local account disabled
or with changed roles takes effect at the next renewal, within the access
token's lifetime.

A session ends at every post at once: Logout (the operator's) and RevokeSessions
(the administrator's: named sessions, or all of a user's begun before now) write
a revocation that both posts hold (failover.revoked_sessions); the authorizer
then refuses the session's access tokens and Refresh its refresh tokens.

Every login, logout and revocation, refused or not, is audited with the precise
reason (the caller only hears "user name or password is wrong").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding

from api.authorization import Audit, current
from api.server import Service
from citypost.errors import InvalidArgumentError, UnauthenticatedError
from failover.revoked_sessions import InMemoryRevocations, SessionRevocations
from protos.citypost.v1 import auth_pb2, auth_pb2_grpc, control_state_pb2
from security.accounts import AuthenticationError
from security.grpc_tls import peer_certificate, peer_principal
from security.identity_sources import Credentials, IdentitySources, OidcLogin, PasswordLogin
from security.policy import Policy
from security.tokens import (
    DEFAULT_LEEWAY_S,
    REFRESH,
    Claims,
    TokenIssuer,
    TokenVerifier,
    thumbprint,
)

SERVICE_NAME = "citypost.v1.AuthService"
# A shift: the console renews its access token without a password until then.
REFRESH_LIFETIME_S = 12 * 3600.0

# What one RevokeSessions call may name: an administrator's act, not a bulk import.
MAX_REVOKED_PER_CALL = 100
MAX_SESSION_ID = 128


def _workstation(context: Any) -> str | None:
    cert = peer_certificate(context)
    return None if cert is None else thumbprint(cert.public_bytes(Encoding.DER))


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        sources: IdentitySources,
        issuer: Callable[[], TokenIssuer],
        verifier: TokenVerifier,
        policy: Policy,
        *,
        audit: Audit,
        refresh_lifetime_s: float = REFRESH_LIFETIME_S,
        sessions: SessionRevocations | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._sources = sources
        self._issuer = issuer  # rebuilt when the post's certificate is renewed
        self._verifier = verifier
        self._policy = policy
        self._audit = audit
        self._refresh_lifetime_s = refresh_lifetime_s
        # Without a city-wide store (tests, a post alone): this process's memory.
        self._sessions: SessionRevocations = (
            InMemoryRevocations(refresh_lifetime_s + DEFAULT_LEEWAY_S)
            if sessions is None
            else sessions
        )
        self._now = now

    @property
    def sessions(self) -> SessionRevocations:
        """Where this service records ended sessions (the authorizer checks the same)."""
        return self._sessions

    def _note(
        self,
        actor: str,
        action: str,
        ok: bool,
        detail: str,
        context: Any,
        *,
        target: str = "session",
    ) -> None:
        principal = peer_principal(context)
        where = f" from {principal.common_name}" if principal is not None else ""
        self._audit(
            control_state_pb2.AuditEntry(
                at_ms=int(self._now() * 1000),
                actor=actor or "unknown",
                action=action,
                target=f"{target}{where}",
                outcome=control_state_pb2.AUDIT_OK if ok else control_state_pb2.AUDIT_REFUSED,
                detail=detail,
            )
        )

    def _tokens(
        self, user: str, roles: tuple[str, ...], amr: tuple[str, ...], sid: str, context: Any
    ) -> auth_pb2.LoginResponse:
        now = self._now()
        bound = _workstation(context)
        issuer = self._issuer()
        access = issuer.issue(
            subject=user,
            roles=roles,
            session_id=sid,
            amr=amr,
            now=now,
            workstation_thumbprint=bound,
        )
        refresh = issuer.issue(
            subject=user,
            roles=roles,
            session_id=sid,
            amr=amr,
            now=now,
            workstation_thumbprint=bound,
            use=REFRESH,
            lifetime_s=self._refresh_lifetime_s,
        )
        return auth_pb2.LoginResponse(
            access_token=access,
            access_expires_at_ms=int((now + issuer.lifetime_s) * 1000),
            refresh_token=refresh,
            refresh_expires_at_ms=int((now + self._refresh_lifetime_s) * 1000),
            user=user,
            roles=list(roles),
            session_id=sid,
        )

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LoginResponse:
        if _workstation(context) is None:
            raise UnauthenticatedError("log in from a workstation with the city's certificate")
        credentials: Credentials
        if request.oidc_id_token:
            if request.user or request.password or request.otp:
                raise InvalidArgumentError("log in with an ID token or a password, not both")
            credentials = OidcLogin(request.oidc_id_token)
            who_tried = "oidc"
        else:
            credentials = PasswordLogin(request.user, request.password, request.otp or None)
            who_tried = request.user[:64]
        try:
            # argon2id costs tens of milliseconds of CPU, the provider's keys a round
            # trip: not on the event loop.
            who = await asyncio.to_thread(self._sources.authenticate, credentials, now=self._now())
        except UnauthenticatedError as error:
            detail = (
                error.failure.value if isinstance(error, AuthenticationError) else error.message
            )
            self._note(who_tried, "auth.login", False, detail, context)
            raise
        sid = uuid.uuid4().hex
        self._note(
            who.user,
            "auth.login",
            True,
            f"session {sid}, {'+'.join(who.amr)} ({who.source})",
            context,
        )
        return self._tokens(who.user, who.roles, who.amr, sid, context)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LoginResponse:
        claims = self._refresh_claims(request.refresh_token, "auth.refresh", context)
        revoked = self._sessions.refusal(claims.session_id, claims.subject, claims.issued_at)
        if revoked is not None:
            self._note(claims.subject, "auth.refresh", False, revoked, context)
            raise UnauthenticatedError(revoked)
        roles = self._sources.roles_now(claims.subject, claims.amr, claims.roles)
        if roles is None:
            self._note(claims.subject, "auth.refresh", False, "account gone or disabled", context)
            raise UnauthenticatedError("the account is disabled or gone: log in again")
        return self._tokens(claims.subject, roles, claims.amr, claims.session_id, context)

    def _refresh_claims(self, token: str, action: str, context: Any) -> Claims:
        """A refresh token's claims, bound to this workstation; a refusal is audited."""
        try:
            return self._verifier.verify(
                token, now=self._now(), workstation_thumbprint=_workstation(context), use=REFRESH
            )
        except UnauthenticatedError as error:
            self._note("", action, False, error.message, context)
            raise

    async def WhoAmI(
        self, request: auth_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.WhoAmIResponse:
        who = current.get()
        grants = self._policy.grants(who.roles)
        permissions = sorted(grants.plain) + sorted(
            f"{name}:{scope}" for name, scopes in grants.scoped.items() for scope in scopes
        )
        return auth_pb2.WhoAmIResponse(
            caller=who.name,
            roles=list(who.roles),
            permissions=permissions,
            session_id=who.session_id,
            expires_at_ms=int(who.expires_at * 1000),
        )

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        if request.refresh_token:
            claims = self._refresh_claims(request.refresh_token, "auth.logout", context)
            user, sid = claims.subject, claims.session_id
        else:
            who = current.get()  # the authorizer verified the call's access token
            if not who.session_id:
                self._note(who.name, "auth.logout", False, "no session named", context)
                raise UnauthenticatedError(
                    "log out with the session's refresh token, or its access token"
                )
            user, sid = who.name, who.session_id
        await self._sessions.revoke(
            auth_pb2.SessionRevocation(
                session_id=sid, user=user, revoked_at_ms=int(self._now() * 1000), by=user
            )
        )
        self._note(user, "auth.logout", True, f"session {sid} ended", context)
        return auth_pb2.LogoutResponse(session_id=sid, user=user)

    async def RevokeSessions(
        self, request: auth_pb2.RevokeSessionsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeSessionsResponse:
        who = current.get()
        sids = list(dict.fromkeys(request.session_ids))
        if not sids and not request.user:
            raise InvalidArgumentError("name the sessions to revoke, or a user")
        if len(sids) > MAX_REVOKED_PER_CALL:
            raise InvalidArgumentError(
                f"at most {MAX_REVOKED_PER_CALL} sessions a call, got {len(sids)}"
            )
        bad = [s for s in sids if not s or len(s) > MAX_SESSION_ID or not s.isprintable()]
        if bad or len(request.user) > MAX_SESSION_ID or not request.user.isprintable():
            raise InvalidArgumentError(
                "a session id or user name is empty, too long or unprintable"
            )
        at_ms = int(self._now() * 1000)
        reason = request.reason[:200]
        revocations = [
            auth_pb2.SessionRevocation(
                session_id=s, revoked_at_ms=at_ms, by=who.name, reason=reason
            )
            for s in sids
        ]
        if request.user:
            revocations.append(
                auth_pb2.SessionRevocation(
                    user=request.user, revoked_at_ms=at_ms, by=who.name, reason=reason
                )
            )
        for revocation in revocations:
            await self._sessions.revoke(revocation)
            target = (
                f"session {revocation.session_id}"
                if revocation.session_id
                else f"every session of {revocation.user}"
            )
            self._note(
                who.name, "auth.revoke", True, reason or "no reason given", context, target=target
            )
        return auth_pb2.RevokeSessionsResponse(
            session_ids=sids, user=request.user, revoked_at_ms=at_ms
        )


def auth_service(servicer: AuthService) -> Service:
    return Service(SERVICE_NAME, auth_pb2_grpc.add_AuthServiceServicer_to_server, servicer)
