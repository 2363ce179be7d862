"""The post's guard, assembled from the config: the policy, the token verifier and
issuer, the identity sources (local accounts; the OpenID Connect provider when
security.oidc is on), the ended sessions (the caller passes the
city-wide store: failover.revoked_sessions), the authorizer every call passes and
the AuthService operators log in at.

Only for a city with TLS: the policy needs to know who calls, which a
plaintext port cannot say.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from api.auth import AuthService
from api.authorization import Audit, Authorizer
from citypost.config import Config
from citypost.errors import ConfigError
from failover.revoked_sessions import SessionRevocations
from security.account_book import AccountBook
from security.accounts import LocalAccounts
from security.identity_sources import IdentitySource, IdentitySources, LocalSource
from security.oidc import OidcSource, check_role_map
from security.pki_store import Identity, PkiStore
from security.policy import DEFAULT_MACHINE_ROLES, DEFAULT_ROLES, Policy
from security.tokens import TokenIssuer, TokenVerifier


@dataclass(frozen=True)
class Guard:
    authorizer: Authorizer
    auth: AuthService


def _issuer_of(identity: Identity, city: str, lifetime_s: float) -> Callable[[], TokenIssuer]:
    """The post's token issuer, made again when its certificate file changes (rotation)."""
    made: list[tuple[tuple[int, int], TokenIssuer]] = []

    def issuer() -> TokenIssuer:
        found = os.stat(identity.cert)
        stamp = (found.st_ino, found.st_mtime_ns)
        if not made or made[0][0] != stamp:
            made[:] = [(stamp, TokenIssuer(identity.read(), city, lifetime_s=lifetime_s))]
        return made[0][1]

    return issuer


def build_guard(
    config: Config,
    identity: Identity,
    audit: Audit,
    *,
    sessions: SessionRevocations | None = None,
) -> Guard:
    security = config.security
    city = config.city.name
    store = PkiStore(config.pki_dir, city)
    policy = Policy(
        security.roles if security.roles is not None else DEFAULT_ROLES,
        security.machine_roles if security.machine_roles is not None else DEFAULT_MACHINE_ROLES,
    )
    verifier = TokenVerifier(identity.read().trust, city, revoked=store.revoked_serials)
    book = AccountBook(config.accounts_file)
    sources: list[IdentitySource] = [LocalSource(LocalAccounts(book), book)]
    if security.oidc.enabled:
        unknown = check_role_map(security.oidc, list(policy.roles))
        if unknown:
            raise ConfigError(
                f"security.oidc.role_map: unknown roles {unknown} "
                f"(known: {', '.join(sorted(policy.roles))})"
            )
        sources.append(OidcSource.from_config(security.oidc))
    auth = AuthService(
        IdentitySources(sources),
        _issuer_of(identity, city, security.access_token_s),
        verifier,
        policy,
        audit=audit,
        refresh_lifetime_s=security.refresh_token_s,
        sessions=sessions,
    )
    authorizer = Authorizer(
        policy,
        verifier,
        revoked=store.revoked_serials,
        audit=audit,
        # The AuthService's own store when none was given (in memory): the two must agree.
        sessions=auth.sessions,
    )
    return Guard(authorizer, auth)
