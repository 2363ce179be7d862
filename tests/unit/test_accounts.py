"""Local accounts as an identity source: each refusal's precise reason and what the
caller is told, equal work for unknown users, TOTP with replay refused, lockout and
its end, rehash to current parameters, disabled accounts, the password policy."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import pyotp
import pytest
from argon2 import PasswordHasher

from citypost.errors import InvalidArgumentError, UnauthenticatedError
from security.account_book import AccountBook
from security.accounts import (
    Authenticated,
    AuthenticationError,
    AuthFailure,
    LocalAccounts,
    PasswordSource,
    check_password,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NOW = 1_796_558_400.0  # 2026-12-06 12:00:00 UTC, a TOTP step boundary
PASSWORD = "correct horse battery"
WRONG_CREDENTIALS = "user name or password is wrong"


class CountingHasher(PasswordHasher):
    """A cheap argon2id hasher (tests pay microseconds per hash) that counts verifications."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def book(tmp_path: Path, hasher: CountingHasher) -> AccountBook:
    book = AccountBook(tmp_path / "accounts.json", hasher=hasher)
    book.add("alice", PASSWORD, ["securite", "mur"], now=NOW)
    return book


@pytest.fixture
def secret(book: AccountBook) -> str:
    """Bob has a second factor."""
    secret = book.add("bob", PASSWORD, ["police"], totp=True, now=NOW)
    assert secret is not None
    return secret


@pytest.fixture
def local(book: AccountBook) -> LocalAccounts:
    return LocalAccounts(book, max_failures=3, failure_window_s=60, lockout_s=120)


def _refused(
    local: LocalAccounts, user: str, password: str, otp: str | None = None, *, now: float = NOW
) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        local.authenticate(user, password, otp, now=now)
    return caught.value


def _code(secret: str, at: float) -> str:
    return pyotp.TOTP(secret).at(at)


def test_right_password(local: LocalAccounts) -> None:
    source: PasswordSource = local
    assert source.name == "local"
    assert source.authenticate("alice", PASSWORD, None, now=NOW) == Authenticated(
        user="alice", roles=("securite", "mur"), amr=("pwd",), source="local"
    )


def test_unknown_user_and_bad_password_look_alike(local: LocalAccounts) -> None:
    unknown = _refused(local, "mallory", PASSWORD)
    wrong = _refused(local, "alice", "not the password")
    assert (unknown.failure, unknown.user) == (AuthFailure.UNKNOWN_USER, "mallory")
    assert (wrong.failure, wrong.user) == (AuthFailure.BAD_PASSWORD, "alice")
    assert unknown.message == wrong.message == WRONG_CREDENTIALS
    assert str(unknown) == str(wrong)
    assert "mallory" not in unknown.message and "alice" not in wrong.message


def test_an_unknown_user_costs_one_verification_too(
    local: LocalAccounts, book: AccountBook, hasher: CountingHasher
) -> None:
    hasher.verified.clear()
    _refused(local, "mallory", PASSWORD)
    _refused(local, "Not A Valid Name!", PASSWORD)
    assert len(hasher.verified) == 2
    # Against a hash of this hasher's parameters, as a real account's would be.
    dummy = hasher.verified[0]
    assert dummy.startswith("$argon2id$") and not hasher.check_needs_rehash(dummy)
    assert dummy not in {a.password_hash for a in book.users()}
    hasher.verified.clear()
    _refused(local, "alice", "not the password")
    assert len(hasher.verified) == 1


def test_errors_are_unauthenticated_and_keep_their_reason_across_processes(
    local: LocalAccounts,
) -> None:
    error = _refused(local, "mallory", PASSWORD)
    assert isinstance(error, UnauthenticatedError) and error.grpc_status == "UNAUTHENTICATED"
    again = pickle.loads(pickle.dumps(error))
    assert (again.failure, again.user, again.message) == (
        AuthFailure.UNKNOWN_USER,
        "mallory",
        WRONG_CREDENTIALS,
    )


def test_disabled_account_only_after_the_right_password(
    local: LocalAccounts, book: AccountBook
) -> None:
    book.disable("alice")
    refused = _refused(local, "alice", PASSWORD)
    assert refused.failure is AuthFailure.DISABLED and "disabled" in refused.message
    # A wrong password on a disabled account says no more than on any other.
    assert _refused(local, "alice", "not the password").failure is AuthFailure.BAD_PASSWORD
    book.enable("alice")
    assert local.authenticate("alice", PASSWORD, None, now=NOW).user == "alice"


def test_totp_required_then_right(local: LocalAccounts, secret: str) -> None:
    for missing in (None, ""):
        refused = _refused(local, "bob", PASSWORD, missing)
        assert refused.failure is AuthFailure.OTP_REQUIRED
        assert "second factor" in refused.message
    found = local.authenticate("bob", PASSWORD, _code(secret, NOW), now=NOW)
    assert found == Authenticated("bob", ("police",), ("pwd", "otp"), "local")


def test_a_wrong_password_is_refused_before_the_code_is_asked(
    local: LocalAccounts, secret: str
) -> None:
    refused = _refused(local, "bob", "not the password", _code(secret, NOW))
    assert refused.failure is AuthFailure.BAD_PASSWORD


@pytest.mark.parametrize("offset_s", [-30, 0, 30])
def test_totp_window_is_one_step_either_side(
    local: LocalAccounts, secret: str, offset_s: int
) -> None:
    found = local.authenticate("bob", PASSWORD, _code(secret, NOW + offset_s), now=NOW + 5)
    assert found.amr == ("pwd", "otp")


@pytest.mark.parametrize("otp", ["two steps", "000000x", "12345", "1234567", "١٢٣٤٥٦"])
def test_wrong_codes(local: LocalAccounts, secret: str, otp: str) -> None:
    if otp == "two steps":
        otp = _code(secret, NOW - 60)
    refused = _refused(local, "bob", PASSWORD, otp, now=NOW + 5)
    assert refused.failure is AuthFailure.BAD_OTP
    assert refused.message == "the one-time code is wrong or was already used"


def test_a_code_is_used_once(local: LocalAccounts, secret: str) -> None:
    code = _code(secret, NOW)
    local.authenticate("bob", PASSWORD, code, now=NOW)
    replayed = _refused(local, "bob", PASSWORD, code, now=NOW + 10)
    assert replayed.failure is AuthFailure.OTP_REUSED
    assert replayed.message == "the one-time code is wrong or was already used"
    # An older step's code after a newer one is refused too; the next step's passes.
    older = _refused(local, "bob", PASSWORD, _code(secret, NOW - 30), now=NOW + 10)
    assert older.failure is AuthFailure.OTP_REUSED
    found = local.authenticate("bob", PASSWORD, _code(secret, NOW + 30), now=NOW + 31)
    assert found.amr == ("pwd", "otp")


def test_steps_are_remembered_per_user(book: AccountBook, local: LocalAccounts) -> None:
    carol_secret = book.add("carol", PASSWORD, ["mur"], totp=True, now=NOW)
    dave_secret = book.add("dave", PASSWORD, ["mur"], totp=True, now=NOW)
    assert carol_secret is not None and dave_secret is not None
    local.authenticate("carol", PASSWORD, _code(carol_secret, NOW), now=NOW)
    local.authenticate("dave", PASSWORD, _code(dave_secret, NOW), now=NOW)


def test_lockout_and_its_end(local: LocalAccounts, hasher: CountingHasher) -> None:
    for _ in range(3):
        assert _refused(local, "alice", "not the password").failure is AuthFailure.BAD_PASSWORD
    hasher.verified.clear()
    locked = _refused(local, "alice", PASSWORD, now=NOW + 119)
    assert locked.failure is AuthFailure.LOCKED
    assert locked.message == "too many failed logins: try again later"
    assert hasher.verified == []  # a locked name costs no hash
    assert local.authenticate("alice", PASSWORD, None, now=NOW + 120).user == "alice"


def test_failures_outside_the_window_do_not_add_up(local: LocalAccounts) -> None:
    for at in (NOW, NOW + 30, NOW + 61):
        _refused(local, "alice", "not the password", now=at)
    # The first had aged out of the 60 s window when the third came: only two in it.
    assert local.authenticate("alice", PASSWORD, None, now=NOW + 61).user == "alice"
    for at in (NOW + 2, NOW + 31, NOW + 61):  # three within 60 s
        _refused(local, "mallory", "not the password", now=at)
    assert _refused(local, "mallory", PASSWORD, now=NOW + 62).failure is AuthFailure.LOCKED


def test_a_success_clears_the_failures(local: LocalAccounts) -> None:
    for _ in range(2):
        _refused(local, "alice", "not the password")
    local.authenticate("alice", PASSWORD, None, now=NOW)
    for _ in range(2):
        _refused(local, "alice", "not the password")
    assert local.authenticate("alice", PASSWORD, None, now=NOW).user == "alice"


def test_unknown_names_lock_alike(local: LocalAccounts) -> None:
    for _ in range(3):
        _refused(local, "mallory", PASSWORD)
    assert _refused(local, "mallory", PASSWORD).failure is AuthFailure.LOCKED
    assert local.authenticate("alice", PASSWORD, None, now=NOW).user == "alice"  # per name


def test_wrong_and_replayed_codes_count_missing_ones_do_not(
    local: LocalAccounts, secret: str
) -> None:
    for _ in range(5):
        _refused(local, "bob", PASSWORD, None)  # a client asking for the code first
    code = _code(secret, NOW)
    local.authenticate("bob", PASSWORD, code, now=NOW)
    _refused(local, "bob", PASSWORD, code)  # reused
    _refused(local, "bob", PASSWORD, "000000" if code != "000000" else "111111")
    _refused(local, "bob", PASSWORD, None)  # does not reset the count either
    _refused(local, "bob", PASSWORD, "12345")
    refused = _refused(local, "bob", PASSWORD, _code(secret, NOW + 30), now=NOW + 30)
    assert refused.failure is AuthFailure.LOCKED


def test_rehash_to_the_current_parameters(tmp_path: Path) -> None:
    old = CountingHasher(time_cost=1)
    book = AccountBook(tmp_path / "accounts.json", hasher=old)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    before = book.get("alice").password_hash  # type: ignore[union-attr]
    current = CountingHasher(time_cost=2)
    assert current.check_needs_rehash(before)
    LocalAccounts(book, hasher=current).authenticate("alice", PASSWORD, None, now=NOW)
    after = book.get("alice").password_hash  # type: ignore[union-attr]
    assert after != before and ",t=2," in after and not current.check_needs_rehash(after)
    assert current.verify(after, PASSWORD)


def test_no_rehash_when_the_parameters_hold(local: LocalAccounts, book: AccountBook) -> None:
    before = book.get("alice").password_hash  # type: ignore[union-attr]
    local.authenticate("alice", PASSWORD, None, now=NOW)
    assert book.get("alice").password_hash == before  # type: ignore[union-attr]


def test_a_new_account_is_seen_without_restart(
    tmp_path: Path, local: LocalAccounts, hasher: CountingHasher
) -> None:
    AccountBook(tmp_path / "accounts.json", hasher=hasher).add("erin", PASSWORD, ["admin"], now=NOW)
    assert local.authenticate("erin", PASSWORD, None, now=NOW).roles == ("admin",)


def test_lockout_settings_are_checked(book: AccountBook) -> None:
    with pytest.raises(InvalidArgumentError, match="max_failures"):
        LocalAccounts(book, max_failures=0)


# --- password policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "user", "rule"),
    [
        ("short", "alice", "at least 12"),
        ("elevenchars", "alice", "at least 12"),
        ("x" * 1025, "alice", "at most 1024"),
        ("my-name-is-alice", "alice", "user name"),
        ("MY-NAME-IS-ALICE", "alice", "user name"),
        ("Password1234", "alice", "most common"),
        ("azertyuiop12", "alice", "most common"),
    ],
)
def test_password_policy_refuses(password: str, user: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rule):
        check_password(password, user)


@pytest.mark.parametrize(
    ("password", "user"),
    [
        ("correct horse battery", "alice"),
        ("twelve chars", "alice"),
        ("x" * 1024, "alice"),
        ("balmy evening walks", "al"),  # a two-letter name may appear by chance
    ],
)
def test_password_policy_accepts(password: str, user: str) -> None:
    check_password(password, user)
