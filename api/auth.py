"""AuthService: operators log in and renew their tokens at any post.

A login checks the user against the identity source (local accounts: argon2id
and TOTP), then the post signs two tokens with its own certificate: a short
access token for calls and a refresh token for the shift. Both are bound to
the workstation certificate the login came with (RFC 8705), so a token copied
to another machine is refused. A refresh asks the identity source's book
again: an account disabled or with changed roles takes effect at the next
renewal, within the access token's lifetime.

Every login, refused or not, is audited with the precise reason (the caller
only hears "user name or password is wrong").
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
from citypost.errors import UnauthenticatedError
from protos.citypost.v1 import auth_pb2, auth_pb2_grpc, control_state_pb2
from security.accounts import AuthenticationError, IdentitySource
from security.grpc_tls import peer_certificate, peer_principal
from security.policy import Policy
from security.tokens import REFRESH, TokenIssuer, TokenVerifier, thumbprint

SERVICE_NAME = "citypost.v1.AuthService"
# A shift: the console renews its access token without a password until then.
REFRESH_LIFETIME_S = 12 * 3600.0

# The user's current roles, or None if the account is gone or disabled.
RolesOf = Callable[[str], tuple[str, ...] | None]


def _workstation(context: Any) -> str | None:
    cert = peer_certificate(context)
    return None if cert is None else thumbprint(cert.public_bytes(Encoding.DER))


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        source: IdentitySource,
        roles_of: RolesOf,
        issuer: Callable[[], TokenIssuer],
        verifier: TokenVerifier,
        policy: Policy,
        *,
        audit: Audit,
        refresh_lifetime_s: float = REFRESH_LIFETIME_S,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._roles_of = roles_of
        self._issuer = issuer  # rebuilt when the post's certificate is renewed
        self._verifier = verifier
        self._policy = policy
        self._audit = audit
        self._refresh_lifetime_s = refresh_lifetime_s
        self._now = now

    def _note(self, actor: str, action: str, ok: bool, detail: str, context: Any) -> None:
        principal = peer_principal(context)
        where = f" from {principal.common_name}" if principal is not None else ""
        self._audit(
            control_state_pb2.AuditEntry(
                at_ms=int(self._now() * 1000),
                actor=actor or "unknown",
                action=action,
                target=f"session{where}",
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
        try:
            # argon2id costs tens of milliseconds of CPU: not on the event loop.
            who = await asyncio.to_thread(
                self._source.authenticate,
                request.user,
                request.password,
                request.otp or None,
                now=self._now(),
            )
        except AuthenticationError as error:
            self._note(request.user[:64], "auth.login", False, error.failure.value, context)
            raise
        sid = uuid.uuid4().hex
        self._note(who.user, "auth.login", True, f"session {sid}, {'+'.join(who.amr)}", context)
        return self._tokens(who.user, who.roles, who.amr, sid, context)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LoginResponse:
        try:
            claims = self._verifier.verify(
                request.refresh_token,
                now=self._now(),
                workstation_thumbprint=_workstation(context),
                use=REFRESH,
            )
        except UnauthenticatedError as error:
            self._note("", "auth.refresh", False, error.message, context)
            raise
        roles = self._roles_of(claims.subject)
        if roles is None:
            self._note(claims.subject, "auth.refresh", False, "account gone or disabled", context)
            raise UnauthenticatedError("the account is disabled or gone: log in again")
        return self._tokens(claims.subject, roles, claims.amr, claims.session_id, context)

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


def auth_service(servicer: AuthService) -> Service:
    return Service(SERVICE_NAME, auth_pb2_grpc.add_AuthServiceServicer_to_server, servicer)
