"""The demo's operator accounts: one per role, named after it, each with a password
generated on first use (never a shipped default, ETSI EN 303 645 5.1-1).

The passwords are kept beside the accounts file, readable by its owner only
(`<accounts>.passwords.json`, 0600), so `make demo` can print them and the
drills and tests of a running city can log in. A real city creates its
accounts with its own passwords and has no such file.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from citypost.errors import ConfigError
from security.account_book import AccountBook
from security.files import load_secrets, save_secrets

# Roles no person logs in with: machines hold them by certificate.
MACHINE_ONLY = frozenset({"sre"})


def passwords_path(accounts_file: Path) -> Path:
    return accounts_file.with_name(accounts_file.stem + ".passwords.json")


def _new_password() -> str:
    # 16 random URL-safe characters: ~96 bits, past every policy rule.
    return secrets.token_urlsafe(12)


def ensure_demo_accounts(accounts_file: Path, roles: Iterable[str]) -> dict[str, str]:
    """An account per role (the user is the role's name) with its password; the ones
    already there keep theirs. Returns user -> password."""
    book = AccountBook(accounts_file)
    path = passwords_path(accounts_file)
    known = load_secrets(path)
    wanted = [role for role in roles if role not in MACHINE_ONLY]
    for role in wanted:
        if book.get(role) is not None and role in known:
            continue
        password = _new_password()
        if book.get(role) is None:
            book.add(role, password, [role], now=time.time())
        else:
            book.set_password(role, password)
        known[role] = password
    save_secrets(path, known)
    return {user: known[user] for user in wanted}


def demo_password(accounts_file: Path, user: str) -> str:
    found = load_secrets(passwords_path(accounts_file)).get(user)
    if found is None:
        raise ConfigError(
            f"no demo password for {user!r} beside {accounts_file} (a city with its own "
            "accounts: log in with yours)"
        )
    return found
