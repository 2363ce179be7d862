"""Operator accounts checked by password: who is logging in, and the password policy.

`AuthService.Login` asks the identity sources (security.identity_sources, where every
kind of source, this one and the OpenID Connect provider's, stands behind one
interface) and, on success, issues the post's own short-lived token (security.md §3:
citypost is its own token issuer). `PasswordSource` is what a source checking a user
name and password offers; `LocalAccounts` is the one there is.

`LocalAccounts` checks the accounts file (security.account_book):
- argon2id passwords (RFC 9106 parameters), rehashed on login when the parameters
  change;
- an unknown user costs one hash verification too, so the answer's timing does not
  tell who exists (ThingsBoard's unknown-user logins were invisible, §1: here every
  failure carries its precise reason for the audit, while the caller's message
  never says whether the user exists);
- TOTP (RFC 6238, 30 s, one step either side) with each step usable once per user;
- lockout after repeated failures (IEC 62443 SR 1.11, ETSI EN 303 645 5.1-5).

Everything here is computation: time is passed in (`now`, Unix seconds).
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NoReturn, Protocol

import pyotp
import pyotp.utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from citypost.errors import InvalidArgumentError, UnauthenticatedError

if TYPE_CHECKING:  # account_book imports check_password from here
    from security.account_book import AccountBook

log = logging.getLogger(__name__)

TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_WINDOW = 1  # steps accepted either side of now: clock skew and a slow typist


@dataclass(frozen=True)
class Authenticated:
    """Who logged in, as the token will say it: `amr` per RFC 8176 ("pwd", "otp")."""

    user: str
    roles: tuple[str, ...]
    amr: tuple[str, ...]
    source: str


class PasswordSource(Protocol):
    """Checks a user name and password. Raises AuthenticationError (or another
    CitypostError) on refusal."""

    name: str

    def authenticate(
        self, user: str, password: str, otp: str | None, *, now: float
    ) -> Authenticated: ...


class AuthFailure(StrEnum):
    """Why a login was refused: for the audit, never all of it for the caller."""

    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"
    OTP_REQUIRED = "otp_required"
    BAD_OTP = "bad_otp"
    OTP_REUSED = "otp_reused"
    LOCKED = "locked"
    DISABLED = "disabled"


_CALLER_MESSAGE = {
    # The same words for both: the caller must not learn whether the user exists.
    AuthFailure.UNKNOWN_USER: "user name or password is wrong",
    AuthFailure.BAD_PASSWORD: "user name or password is wrong",
    # The rest only follow a right password, or (LOCKED) strike unknown names alike.
    AuthFailure.OTP_REQUIRED: "a second factor is required: give the one-time code",
    AuthFailure.BAD_OTP: "the one-time code is wrong or was already used",
    AuthFailure.OTP_REUSED: "the one-time code is wrong or was already used",
    AuthFailure.LOCKED: "too many failed logins: try again later",
    AuthFailure.DISABLED: "this account is disabled",
}


class AuthenticationError(UnauthenticatedError):
    """A refused login. `message` is for the caller; `failure` and `user` for the audit."""

    def __init__(self, failure: AuthFailure, user: str) -> None:
        super().__init__(_CALLER_MESSAGE[failure])
        self.failure = failure
        self.user = user


# --- password policy (ETSI EN 303 645 5.1, IEC 62443 SR 1.7) ---------------------------

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; this only bounds the work per login
# The most common passwords long enough to pass the length rule (shorter ones fail it
# anyway), with the French ones of a French city. Compared in lower case.
COMMON_PASSWORDS = frozenset(
    {
        "123456789012",
        "1234567890123",
        "111111111111",
        "000000000000",
        "password1234",
        "password12345",
        "passwordpassword",
        "qwerty123456",
        "qwertyuiop12",
        "azertyuiop12",
        "iloveyou1234",
        "motdepasse123",
        "administrateur",
        "administrator",
    }
)


def check_password(password: str, user: str) -> None:
    """InvalidArgumentError naming the rule `password` breaks, for the account `user`."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgumentError(
            f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgumentError(
            f"the password must have at most {MAX_PASSWORD_LENGTH} characters"
        )
    lowered = password.lower()
    # A two-letter name would forbid every password holding that letter pair.
    if len(user) >= 3 and user.lower() in lowered:
        raise InvalidArgumentError("the password must not contain the user name")
    if lowered in COMMON_PASSWORDS:
        raise InvalidArgumentError("the password is one of the most common passwords")


# --- the local source --------------------------------------------------------------------


@dataclass
class _Attempts:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    locked_until: float = 0.0


class LocalAccounts:
    """The accounts file as an identity source.

    Lockout and TOTP replay state are kept in memory, per post process: each post
    counts its own failures and remembers the steps used at it. A name is locked for
    `lockout_s` after `max_failures` failures (wrong password, wrong or replayed code)
    within `failure_window_s`; unknown names are counted and locked alike, so a lock
    tells nothing about who exists. A locked name is refused without a hash check.
    """

    name: str = "local"

    # Names whose failures have all aged out are forgotten past this many tracked
    # names, so random names cannot grow the table without bound.
    _PRUNE_ABOVE = 10_000

    def __init__(
        self,
        book: AccountBook,
        *,
        hasher: PasswordHasher | None = None,
        max_failures: int = 5,
        failure_window_s: float = 300,
        lockout_s: float = 300,
    ) -> None:
        if max_failures < 1 or failure_window_s <= 0 or lockout_s < 0:
            raise InvalidArgumentError(
                "lockout needs max_failures >= 1, failure_window_s > 0 and lockout_s >= 0"
            )
        self.book = book
        self.hasher = hasher if hasher is not None else book.hasher
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        self.lockout_s = lockout_s
        # Verified for unknown users. Hashed here with this hasher, so it costs what a
        # real account's verification costs.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self._attempts: dict[str, _Attempts] = {}
        self._last_step: dict[str, int] = {}
        self._guard = threading.Lock()

    def authenticate(
        self, user: str, password: str, otp: str | None, *, now: float
    ) -> Authenticated:
        if self._locked(user, now):
            raise AuthenticationError(AuthFailure.LOCKED, user)
        account = self.book.get(user)
        if account is None:
            self._verify(self._dummy_hash, password, user)
            self._fail(AuthFailure.UNKNOWN_USER, user, now)
        if not self._verify(account.password_hash, password, user):
            self._fail(AuthFailure.BAD_PASSWORD, user, now)
        # Only after the password: before it, "disabled" would tell that the user exists.
        if account.disabled:
            raise AuthenticationError(AuthFailure.DISABLED, user)
        amr: tuple[str, ...] = ("pwd",)
        if account.totp_secret is not None:
            if not otp:
                # Not a failure: the usual first step of a two-factor login.
                raise AuthenticationError(AuthFailure.OTP_REQUIRED, user)
            self._check_otp(user, account.totp_secret, otp, now)
            amr = ("pwd", "otp")
        with self._guard:
            self._attempts.pop(user, None)
        self._rehash_if_needed(user, account.password_hash, password)
        return Authenticated(user=user, roles=account.roles, amr=amr, source=self.name)

    # --- inside --------------------------------------------------------------------------

    def _verify(self, password_hash: str, password: str, user: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except VerificationError:  # the mismatch and argon2's other refusals
            return False
        except InvalidHashError:
            log.error("the stored password hash of %r is not an argon2 hash", user)
            return False

    def _check_otp(self, user: str, secret: str, otp: str, now: float) -> None:
        step = _matching_step(secret, otp, now)
        with self._guard:
            if step is None:
                failure = AuthFailure.BAD_OTP
            # A step at or before the last one used: a replay, or an older code after
            # a newer one (RFC 6238 §5.2).
            elif step <= self._last_step.get(user, -1):
                failure = AuthFailure.OTP_REUSED
            else:
                self._last_step[user] = step
                return
        self._fail(failure, user, now)

    def _locked(self, user: str, now: float) -> bool:
        with self._guard:
            attempts = self._attempts.get(user)
            return attempts is not None and now < attempts.locked_until

    def _fail(self, failure: AuthFailure, user: str, now: float) -> NoReturn:
        with self._guard:
            attempts = self._attempts.setdefault(user, _Attempts())
            failures = attempts.failures
            failures.append(now)
            while failures and failures[0] <= now - self.failure_window_s:
                failures.popleft()
            if len(failures) >= self.max_failures:
                attempts.locked_until = now + self.lockout_s
                failures.clear()
            if len(self._attempts) > self._PRUNE_ABOVE:
                self._prune(now)
        raise AuthenticationError(failure, user)

    def _prune(self, now: float) -> None:
        stale = [
            name
            for name, a in self._attempts.items()
            if now >= a.locked_until
            and (not a.failures or a.failures[-1] <= now - self.failure_window_s)
        ]
        for name in stale:
            del self._attempts[name]

    def _rehash_if_needed(self, user: str, password_hash: str, password: str) -> None:
        try:
            if not self.hasher.check_needs_rehash(password_hash):
                return
            self.book.replace_hash(user, self.hasher.hash(password), previous=password_hash)
        except OSError as error:
            # The login stands: the old hash still verifies, and the next login retries.
            log.warning("could not store the rehashed password of %r: %s", user, error)


def _matching_step(secret: str, otp: str, now: float) -> int | None:
    """The TOTP time step within the window whose code is `otp`, or None."""
    if len(otp) != TOTP_DIGITS or not (otp.isascii() and otp.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    current = int(now // TOTP_STEP_S)
    # Each step of the window is compared (in constant time), not stopped at the first.
    matched = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if pyotp.utils.strings_equal(otp, totp.generate_otp(step)) and matched is None:
            matched = step
    return matched
