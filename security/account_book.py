"""The operator accounts file: who may log in locally, with which roles.

One JSON file (by default beside the PKI) holds every local account: its user
name, roles, argon2id password hash, TOTP secret (if it has a second factor),
whether it is disabled and when it was made. The `citypost` CLI changes it and
both posts read it, so it is a security.json_book: changed under an exclusive
`flock`, replaced atomically with mode 0600 (nobody but the owner reads the
hashes and TOTP secrets), and re-read by a running post when it changed, so a
new account needs no restart.

Passwords set here must pass `security.accounts.check_password`. Roles are free
strings here; the authorization policy owns the roles table, and passes it as
`known_roles` when it should be enforced.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
from argon2 import PasswordHasher

from citypost.errors import InvalidArgumentError
from security.accounts import check_password
from security.json_book import JsonBook

USER_NAME = re.compile(r"[a-z][a-z0-9._-]{1,63}")


@dataclass(frozen=True)
class Account:
    """One local operator account. The hash and the secret stay out of repr (logs)."""

    user: str
    roles: tuple[str, ...]
    password_hash: str = field(repr=False)
    totp_secret: str | None = field(default=None, repr=False)
    disabled: bool = False
    created_at: str = ""

    @property
    def has_totp(self) -> bool:
        return self.totp_secret is not None


def check_user_name(user: str) -> None:
    """InvalidArgumentError unless `user` is a valid account name."""
    if not USER_NAME.fullmatch(user):
        raise InvalidArgumentError(
            f"user name {user!r} is not valid: a lower-case letter, then 1 to 63 of a-z 0-9 . _ -"
        )


def _checked_roles(roles: Iterable[str], known_roles: Collection[str] | None) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise InvalidArgumentError("roles must be a list of role names, not one string")
    # Order kept, duplicates dropped: the file shows roles as the administrator gave them.
    result = tuple(dict.fromkeys(roles))
    if not result:
        raise InvalidArgumentError("an account needs at least one role")
    blank = [r for r in result if not r.strip() or r != r.strip()]
    if blank:
        raise InvalidArgumentError(f"role names must be non-empty without spaces: {blank!r}")
    if known_roles is not None:
        unknown = [r for r in result if r not in known_roles]
        if unknown:
            raise InvalidArgumentError(
                f"unknown roles: {', '.join(unknown)} (known: {', '.join(sorted(known_roles))})"
            )
    return result


class AccountBook(JsonBook[Account]):
    """The accounts file at `path`; `hasher` hashes new passwords (argon2id, RFC 9106
    parameters by default; tests pass a cheap one)."""

    section = "accounts"
    noun = "account"

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        super().__init__(path)
        self.hasher = hasher if hasher is not None else PasswordHasher()

    # --- reading -------------------------------------------------------------------------

    def get(self, user: str) -> Account | None:
        """The account named `user`, or None (also for a name that cannot exist)."""
        return self._current().get(user)

    def users(self) -> list[Account]:
        """Every account, by user name."""
        return sorted(self._current().values(), key=lambda a: a.user)

    # --- changing ------------------------------------------------------------------------

    def add(
        self,
        user: str,
        password: str,
        roles: Iterable[str],
        *,
        totp: bool = False,
        now: float,
        known_roles: Collection[str] | None = None,
    ) -> str | None:
        """Create an account; returns its new TOTP secret (base32, to show once) when
        `totp`, else None. InvalidArgumentError for a bad name, an existing user, a
        password against the policy or a bad or unknown role."""
        check_user_name(user)
        checked = _checked_roles(roles, known_roles)
        check_password(password, user)
        secret = pyotp.random_base32() if totp else None
        # Hash before taking the lock: it costs tens of milliseconds.
        account = Account(
            user=user,
            roles=checked,
            password_hash=self.hasher.hash(password),
            totp_secret=secret,
            created_at=datetime.fromtimestamp(now, UTC).isoformat(),
        )
        with self._changing() as accounts:
            if user in accounts:
                raise InvalidArgumentError(f"account {user!r} already exists")
            accounts[user] = account
        return secret

    def set_password(self, user: str, password: str) -> None:
        check_password(password, user)
        new_hash = self.hasher.hash(password)
        self._update(user, password_hash=new_hash)

    def set_roles(
        self, user: str, roles: Iterable[str], *, known_roles: Collection[str] | None = None
    ) -> None:
        self._update(user, roles=_checked_roles(roles, known_roles))

    def disable(self, user: str) -> None:
        self._update(user, disabled=True)

    def enable(self, user: str) -> None:
        self._update(user, disabled=False)

    def remove(self, user: str) -> None:
        self._remove(user)

    def replace_hash(self, user: str, new_hash: str, *, previous: str | None = None) -> bool:
        """Store a new hash of the same password (a rehash to current parameters).
        With `previous`, only if the stored hash is still that one: a password changed
        meanwhile must not be overwritten by the old one's rehash. True if stored."""
        with self._changing() as accounts:
            account = accounts.get(user)
            if account is None or (previous is not None and account.password_hash != previous):
                return False
            accounts[user] = replace(account, password_hash=new_hash)
            return True

    # --- inside --------------------------------------------------------------------------

    def _record(self, item: dict[str, Any]) -> Account:
        return Account(**{**item, "roles": tuple(item["roles"])})

    def _name(self, record: Account) -> str:
        return record.user
