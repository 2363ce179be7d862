"""The accounts file: atomic 0600 writes under a file lock, reload on change, names,
roles against a known table, the password policy on every password set."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from citypost.errors import ConfigError, InvalidArgumentError, NotFoundError
from security.account_book import Account, AccountBook

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NOW = 1_796_558_400.0  # 2026-12-06 12:00 UTC
PASSWORD = "correct horse battery"
# Tests pay microseconds per hash, not the RFC 9106 default's tens of milliseconds.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ROLES_TABLE = {"securite", "police", "admin", "mur"}


def _book(path: Path) -> AccountBook:
    return AccountBook(path, hasher=CHEAP)


def _age(path: Path, seconds_ago: float = 3600) -> None:
    """Date the file back, past the racy window, as a file written long ago."""
    past = os.stat(path).st_mtime - seconds_ago
    os.utime(path, (past, past))


def test_add_and_get(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    assert book.get("alice") is None
    assert book.add("alice", PASSWORD, ["securite", "mur"], now=NOW) is None
    alice = book.get("alice")
    assert alice is not None
    assert (alice.user, alice.roles, alice.disabled) == ("alice", ("securite", "mur"), False)
    assert alice.totp_secret is None and not alice.has_totp
    assert alice.created_at == "2026-12-06T12:00:00+00:00"
    assert alice.password_hash.startswith("$argon2id$")
    assert CHEAP.verify(alice.password_hash, PASSWORD)
    assert PASSWORD not in (tmp_path / "accounts.json").read_text()


def test_totp_secret_is_returned_once_and_kept(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    secret = book.add("bob", PASSWORD, ["police"], totp=True, now=NOW)
    assert secret is not None and len(secret) >= 32
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")  # base32
    bob = book.get("bob")
    assert bob is not None and bob.totp_secret == secret


def test_repr_hides_hash_and_secret(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    secret = book.add("bob", PASSWORD, ["police"], totp=True, now=NOW)
    bob = book.get("bob")
    assert bob is not None and secret is not None
    assert bob.password_hash not in repr(bob) and secret not in repr(bob)


def test_file_is_0600_and_no_temp_is_left(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "accounts.json"
    book = _book(path)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(book.lock_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "accounts.json",
        "accounts.json.lock",
    ]
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and [a["user"] for a in raw["accounts"]] == ["alice"]


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "accounts.json"
    book = _book(path)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    before = path.read_bytes()

    def no_rename(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        book.add("bob", PASSWORD, ["mur"], now=NOW)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [a.user for a in _book(path).users()] == ["alice"]
    assert [a.user for a in book.users()] == ["alice"]  # the failed change is not cached


def test_a_second_book_sees_changes_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    post, cli = _book(path), _book(path)
    assert post.users() == []
    cli.add("alice", PASSWORD, ["mur"], now=NOW)
    assert [a.user for a in post.users()] == ["alice"]
    cli.disable("alice")
    alice = post.get("alice")
    assert alice is not None and alice.disabled


def test_an_unchanged_file_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "accounts.json"
    book = _book(path)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    _age(path)
    reads = []
    parse = AccountBook._parse

    def counting(self: AccountBook, data: bytes) -> dict[str, Account]:
        reads.append(len(data))
        return parse(self, data)

    monkeypatch.setattr(AccountBook, "_parse", counting)
    book.get("alice")
    book.get("alice")
    book.users()
    assert len(reads) == 1
    # Another writer (here by hand): a new mtime is read again.
    raw = json.loads(path.read_text())
    raw["accounts"][0]["roles"] = ["admin"]
    path.write_text(json.dumps(raw))
    _age(path, seconds_ago=60)
    alice = book.get("alice")
    assert len(reads) == 2 and alice is not None and alice.roles == ("admin",)


def test_writes_from_two_books_both_land(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    first, second = _book(path), _book(path)
    first.users()
    second.users()  # both have read the empty book
    first.add("alice", PASSWORD, ["mur"], now=NOW)
    second.add("bob", PASSWORD, ["mur"], now=NOW)  # read afresh under the lock: alice stays
    assert [a.user for a in first.users()] == ["alice", "bob"]


def test_a_change_waits_for_the_file_lock(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    book = _book(path)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    done = threading.Event()

    def change() -> None:
        book.disable("alice")
        done.set()

    with open(book.lock_path, "a") as held:  # another process (the CLI) holding it
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=change)
        worker.start()
        assert not done.wait(0.3)
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(10)
    assert done.is_set()
    alice = book.get("alice")
    assert alice is not None and alice.disabled


@pytest.mark.parametrize("user", ["al", "alice", "j.dupont", "op_7", "ws-12", "a" + "b" * 63])
def test_valid_user_names(tmp_path: Path, user: str) -> None:
    book = _book(tmp_path / "accounts.json")
    book.add(user, "tango-sierra-4-victor", ["mur"], now=NOW)
    assert book.get(user) is not None


@pytest.mark.parametrize(
    "user", ["", "a", "Alice", "1alice", "_ops", "alice smith", "al/ice", "a" + "b" * 64, "élodie"]
)
def test_invalid_user_names(tmp_path: Path, user: str) -> None:
    book = _book(tmp_path / "accounts.json")
    with pytest.raises(InvalidArgumentError, match="user name"):
        book.add(user, "tango-sierra-4-victor", ["mur"], now=NOW)
    assert book.get(user) is None


def test_known_roles_are_enforced_when_given(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    with pytest.raises(InvalidArgumentError, match="unknown roles: pompier, root"):
        book.add("alice", PASSWORD, ["mur", "pompier", "root"], now=NOW, known_roles=ROLES_TABLE)
    assert book.get("alice") is None
    book.add("alice", PASSWORD, ["mur"], now=NOW, known_roles=ROLES_TABLE)
    with pytest.raises(InvalidArgumentError, match="unknown roles: chef"):
        book.set_roles("alice", ["admin", "chef"], known_roles=ROLES_TABLE)
    book.set_roles("alice", ["admin", "police", "admin"], known_roles=ROLES_TABLE)
    alice = book.get("alice")
    assert alice is not None and alice.roles == ("admin", "police")  # order kept, once each
    book.set_roles("alice", ["anything-goes"])  # free strings without a table
    alice = book.get("alice")
    assert alice is not None and alice.roles == ("anything-goes",)


@pytest.mark.parametrize("roles", [[], [""], [" mur"], "mur"])
def test_bad_roles(tmp_path: Path, roles: list[str]) -> None:
    book = _book(tmp_path / "accounts.json")
    with pytest.raises(InvalidArgumentError, match="role"):
        book.add("alice", PASSWORD, roles, now=NOW)


def test_passwords_follow_the_policy(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    with pytest.raises(InvalidArgumentError, match="at least 12"):
        book.add("alice", "short", ["mur"], now=NOW)
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    with pytest.raises(InvalidArgumentError, match="user name"):
        book.set_password("alice", "alice-in-wonderland")
    alice = book.get("alice")
    assert alice is not None and CHEAP.verify(alice.password_hash, PASSWORD)


def test_set_password_disable_enable_remove(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    book.set_password("alice", "another long phrase")
    alice = book.get("alice")
    assert alice is not None and CHEAP.verify(alice.password_hash, "another long phrase")
    book.disable("alice")
    assert book.get("alice").disabled  # type: ignore[union-attr]
    book.enable("alice")
    assert not book.get("alice").disabled  # type: ignore[union-attr]
    book.remove("alice")
    assert book.get("alice") is None
    for change in (book.disable, book.enable, book.remove):
        with pytest.raises(NotFoundError, match="alice"):
            change("alice")
    with pytest.raises(NotFoundError):
        book.set_password("alice", PASSWORD)


def test_an_existing_user_is_not_added_again(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    first = book.get("alice")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        book.add("alice", "a different phrase", ["admin"], now=NOW)
    assert book.get("alice") == first


def test_replace_hash_only_over_the_expected_one(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    book.add("alice", PASSWORD, ["mur"], now=NOW)
    old = book.get("alice").password_hash  # type: ignore[union-attr]
    assert book.replace_hash("alice", "$argon2id$new", previous="$argon2id$other") is False
    assert book.get("alice").password_hash == old  # type: ignore[union-attr]
    assert book.replace_hash("alice", "$argon2id$new", previous=old) is True
    assert book.get("alice").password_hash == "$argon2id$new"  # type: ignore[union-attr]
    assert book.replace_hash("nobody", "$argon2id$new") is False


def test_users_are_sorted(tmp_path: Path) -> None:
    book = _book(tmp_path / "accounts.json")
    for user in ("mallory", "alice", "bob"):
        book.add(user, PASSWORD, ["mur"], now=NOW)
    assert [a.user for a in book.users()] == ["alice", "bob", "mallory"]


@pytest.mark.parametrize(
    "content", ["not json", '{"version": 2, "accounts": []}', '{"version": 1, "accounts": [{}]}']
)
def test_an_unreadable_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"accounts\.json"):
        _book(path).get("alice")
