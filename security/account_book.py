"""The operator accounts file: who may log in locally, with which roles.

One JSON file (by default beside the PKI) holds every local account: its user
name, roles, argon2id password hash, TOTP secret (if it has a second factor),
whether it is disabled and when it was made. The `citypost` CLI changes it and
both posts read it, so:

- every read-modify-write holds an exclusive `flock` on a sibling lock file and
  reads the file afresh under it, so no writer loses another's change;
- the file is replaced atomically (written to a temporary file, synced, renamed)
  with mode 0600: a reader sees the old book or the new one, never half, and
  nobody but the owner reads the hashes and TOTP secrets;
- readers re-read when the file changed (inode, mtime, size), so a running post
  sees a new account without a restart.

Passwords set here must pass `security.accounts.check_password`. Roles are free
strings here; the authorization policy owns the roles table, and passes it as
`known_roles` when it should be enforced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
from argon2 import PasswordHasher

from citypost.errors import ConfigError, InvalidArgumentError, NotFoundError
from security.accounts import check_password
from security.files import replace_file

USER_NAME = re.compile(r"[a-z][a-z0-9._-]{1,63}")
FORMAT_VERSION = 1
# File times come from a coarse kernel clock (one tick): two writes within a tick can
# leave the same mtime (and, after a rename, a reused inode and the same size). A file
# changed this recently is read again whatever its stat says (git's "racy" rule).
_RACY_NS = 2_000_000_000


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


class AccountBook:
    """The accounts file at `path`; `hasher` hashes new passwords (argon2id, RFC 9106
    parameters by default; tests pass a cheap one)."""

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.hasher = hasher if hasher is not None else PasswordHasher()
        self._cache: dict[str, Account] = {}
        self._cache_key: tuple[int, int, int] | None = None  # (inode, mtime_ns, size)
        self._guard = threading.Lock()  # the cache, between threads of one process

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
        with self._changing() as accounts:
            if accounts.pop(user, None) is None:
                raise NotFoundError(f"no account {user!r} in {self.path}")

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

    def _update(self, user: str, **changes: Any) -> None:
        with self._changing() as accounts:
            account = accounts.get(user)
            if account is None:
                raise NotFoundError(f"no account {user!r} in {self.path}")
            accounts[user] = replace(account, **changes)

    def _current(self) -> dict[str, Account]:
        """The accounts, read again only if the file changed since the last read."""
        with self._guard:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self._cache, self._cache_key = {}, None
                return self._cache
            # Stat and read the same open file, so the key always matches the content.
            with os.fdopen(fd, "rb") as file:
                st = os.fstat(file.fileno())
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
                if key != self._cache_key or racy:
                    self._cache = self._parse(file.read())
                    self._cache_key = key
            return self._cache

    def _parse(self, data: bytes) -> dict[str, Account]:
        try:
            raw = json.loads(data)
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {raw.get('version')!r}")
            accounts = {}
            for item in raw["accounts"]:
                account = Account(**{**item, "roles": tuple(item["roles"])})
                accounts[account.user] = account
            return accounts
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"the accounts file {self.path} cannot be read: {error}") from error

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Account]]:
        """The accounts read afresh under the file lock; saved if the block ends normally."""
        with self._locked():
            with self._guard:
                self._cache_key = None  # another process may have written since
            accounts = dict(self._current())
            yield accounts
            self._save(accounts)

    def _save(self, accounts: dict[str, Account]) -> None:
        body = {
            "version": FORMAT_VERSION,
            "accounts": [asdict(accounts[user]) for user in sorted(accounts)],
        }
        replace_file(self.path, json.dumps(body, indent=1) + "\n")
        with self._guard:
            self._cache_key = None  # the next read takes the file just written

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
