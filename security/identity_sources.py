"""Who may log in, from where: every identity source behind one interface.

`AuthService.Login` hands the credentials it got to `IdentitySources`, which asks
the source that takes that kind of credentials: a user name and password (the
local accounts, security.accounts) or an ID token of the city's OpenID Connect
provider (security.oidc). Whatever the source, the post then issues its own
tokens (citypost is its own token issuer); their `amr` says how the operator
logged in ("pwd", "otp", "oidc"), and a refresh goes back to the source that
made the session, which says which roles the session keeps (or ends it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from citypost.errors import UnauthenticatedError
from security.account_book import AccountBook
from security.accounts import Authenticated, LocalAccounts


@dataclass(frozen=True)
class PasswordLogin:
    user: str
    password: str = field(repr=False)
    otp: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OidcLogin:
    id_token: str = field(repr=False)


Credentials = PasswordLogin | OidcLogin


class IdentitySource(Protocol):
    """One way of logging in."""

    # For the audit ("local", "oidc"); `method` is the amr value its sessions carry.
    name: str
    method: str

    def accepts(self, credentials: Credentials) -> bool: ...

    def authenticate(self, credentials: Credentials, *, now: float) -> Authenticated:
        """Who logs in; UnauthenticatedError (naming the cause) on refusal."""
        ...

    def roles_now(self, user: str, roles: tuple[str, ...]) -> tuple[str, ...] | None:
        """At a refresh of a session this source made, holding `roles`: the roles it
        keeps, or None to end it (the account is gone or disabled)."""
        ...


class LocalSource:
    """The local accounts (argon2id passwords, TOTP, lockout)."""

    name = "local"
    method = "pwd"

    def __init__(self, accounts: LocalAccounts, book: AccountBook) -> None:
        self._accounts = accounts
        self._book = book

    def accepts(self, credentials: Credentials) -> bool:
        return isinstance(credentials, PasswordLogin)

    def authenticate(self, credentials: Credentials, *, now: float) -> Authenticated:
        assert isinstance(credentials, PasswordLogin)
        return self._accounts.authenticate(
            credentials.user, credentials.password, credentials.otp, now=now
        )

    def roles_now(self, user: str, roles: tuple[str, ...]) -> tuple[str, ...] | None:
        # The book's current roles: a change takes effect at the next renewal.
        account = self._book.get(user)
        return None if account is None or account.disabled else account.roles


class IdentitySources:
    """The post's sources, each asked for the credentials it takes."""

    def __init__(self, sources: Sequence[IdentitySource]) -> None:
        methods = [source.method for source in sources]
        if len(set(methods)) != len(methods):
            raise ValueError(f"two identity sources mark their sessions alike: {methods}")
        self.sources = tuple(sources)

    def authenticate(self, credentials: Credentials, *, now: float) -> Authenticated:
        for source in self.sources:
            if source.accepts(credentials):
                return source.authenticate(credentials, now=now)
        kind = "an OpenID Connect ID token" if isinstance(credentials, OidcLogin) else "a password"
        raise UnauthenticatedError(f"logging in with {kind} is not enabled on this city's posts")

    def roles_now(
        self, user: str, amr: Sequence[str], roles: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        """The roles a session keeps at a refresh, from the source that made it (by its
        amr); None if no source of this post made it."""
        for source in self.sources:
            if source.method in amr:
                return source.roles_now(user, roles)
        return None
