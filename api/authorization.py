"""Who calls, and may they: every RPC of a post passes here before its servicer.

The caller is established from, in order:
1. an operator's access token (`authorization: Bearer …`), verified against the
   city's trust (security.tokens): signed by any post, not expired, of this
   city, bound to the workstation certificate the call comes with, and of a
   session nobody ended (failover.revoked_sessions: logout, an administrator's
   revocation; a set lookup, held at both posts);
2. else the peer's certificate, when its kind has a machine role (the chaos
   tools: `sre`);
3. else nobody, which only `PUBLIC` methods accept (health checks, logging in).

A revoked peer certificate is refused whatever the call carries (gRPC's
Python TLS has no CRL: the serial is checked here). Then the policy decides
(security.policy), with the request at hand for rules scoped by asset class.
Every refusal is audited with the reason the caller is told, which names what
was missing: "no operator token…", "token expired at…", "permission
commands.send:bollard is needed…".
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from citypost.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from failover.revoked_sessions import SessionRevocations
from protos.citypost.v1 import control_state_pb2
from security.grpc_tls import peer_certificate, peer_principal, peer_serial
from security.policy import Grants, Policy, missing_rules
from security.tokens import TokenVerifier, thumbprint

AUTHORIZATION = "authorization"
BEARER = "bearer "


@dataclass(frozen=True)
class Caller:
    """Who a call is from, as established by `Authorizer.admit`."""

    name: str  # the operator, or the machine certificate's CN; "" for nobody
    roles: tuple[str, ...] = ()
    session_id: str = ""
    expires_at: float = 0.0  # the access token's end; 0 for a machine
    machine: bool = False
    # What the roles allow; None where no authorization is in force (a plaintext port,
    # the benchmarks' baseline). For the checks a servicer makes on what it reads: a
    # rule that needs the record, not only the request (ending an override).
    grants: Grants | None = None

    @property
    def known(self) -> bool:
        return bool(self.name)


NOBODY = Caller("")
current: contextvars.ContextVar[Caller] = contextvars.ContextVar("citypost_caller", default=NOBODY)

Audit = Callable[[control_state_pb2.AuditEntry], None]


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() != BEARER:
                raise UnauthenticatedError("authorization metadata is not 'Bearer <token>'")
            return text[len(BEARER) :].strip()
    return None


class Guard(Protocol):
    """What a server asks of whoever decides who may call it: the operators' port has
    the Authorizer below, the citizens' listener its own (api.citizen_guard)."""

    def check_methods(self, methods: Collection[str]) -> None: ...

    def admit(
        self, method: str, metadata: Sequence[tuple[str, Any]], context: Any, request: Any
    ) -> Caller: ...


class Authorizer:
    def __init__(
        self,
        policy: Policy,
        verifier: TokenVerifier,
        *,
        revoked: Callable[[], Collection[int]],
        audit: Audit | None = None,
        sessions: SessionRevocations | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.verifier = verifier
        self._revoked = revoked
        self._sessions = sessions
        self._audit = audit
        self._now = now

    def check_methods(self, methods: Collection[str]) -> None:
        """The server's start: every method it serves must have a rule."""
        missing = missing_rules(methods, self.policy.rules)
        if missing:
            raise ConfigError(
                "these RPCs have no access rule (security.policy.RULES); the server will "
                "not serve them unguarded: " + ", ".join(missing)
            )

    def identify(self, metadata: Sequence[tuple[str, Any]], context: Any) -> Caller:
        """The caller of a call; UnauthenticatedError for a bad credential (never for none)."""
        serial = peer_serial(context)
        if serial is not None and serial in self._revoked():
            raise UnauthenticatedError(f"the client certificate (serial {serial:x}) is revoked")
        token = _bearer(metadata)
        if token is not None:
            cert = peer_certificate(context)
            presented = None if cert is None else thumbprint(cert.public_bytes(Encoding.DER))
            claims = self.verifier.verify(token, now=self._now(), workstation_thumbprint=presented)
            if self._sessions is not None:
                ended = self._sessions.refusal(claims.session_id, claims.subject, claims.issued_at)
                if ended is not None:
                    raise UnauthenticatedError(ended)
            return Caller(
                claims.subject,
                claims.roles,
                claims.session_id,
                claims.expires_at,
                grants=self.policy.grants(claims.roles),
            )
        principal = peer_principal(context)
        if principal is not None:
            role = self.policy.machine_roles.get(principal.kind.value)
            if role is not None:
                return Caller(
                    principal.common_name,
                    (role,),
                    machine=True,
                    grants=self.policy.grants((role,)),
                )
        return NOBODY

    def admit(
        self, method: str, metadata: Sequence[tuple[str, Any]], context: Any, request: Any
    ) -> Caller:
        """The caller if the policy lets it make this call; the typed refusal otherwise,
        audited."""
        caller = NOBODY
        try:
            caller = self.identify(metadata, context)
            rule = self.policy.rule(method)
            if rule is not None and rule.public:
                return caller
            if not caller.known:
                principal = peer_principal(context)
                who = f" ({principal.common_name})" if principal is not None else ""
                raise UnauthenticatedError(
                    "no operator token: log in (citypost console login), and no machine "
                    f"certificate with a role{who}"
                )
            self.policy.check(method, caller.roles, request)
            return caller
        except (UnauthenticatedError, PermissionDeniedError) as error:
            self.refused(method, caller, error, context)
            raise

    def refused(self, method: str, caller: Caller, error: Exception, context: Any) -> None:
        if self._audit is None:
            return
        principal = peer_principal(context)
        actor = caller.name or (principal.common_name if principal else "") or "unknown"
        self._audit(
            control_state_pb2.AuditEntry(
                at_ms=int(self._now() * 1000),
                actor=actor,
                action="rpc.refused",
                target=method,
                outcome=control_state_pb2.AUDIT_REFUSED,
                detail=f"{type(error).__name__}: {getattr(error, 'message', str(error))}",
            )
        )
