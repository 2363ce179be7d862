"""The citizen apps file: which apps may call a post's citizen listener, by credential.

A phone has no certificate of the city, so the citizen listener is server-only
TLS and each call names its app with `x-citypost-app: <app id>:<secret>`. This
file (JSON, by default `run_dir/apps.json`, beside the operators' accounts)
holds every app: its id, the SHA-256 of its secret, whether it is disabled,
when it was made. `citypost apps` changes it; the posts read it and see a
change without a restart.

Why SHA-256 and not argon2 (the operators' passwords): the secret is 32 random
bytes made here, not something a person chose, so no guessing beats 2^256 work
whatever the hash's speed; argon2 would only make every citizen call cost tens
of milliseconds of a 2-core post's CPU, and a flood of wrong credentials a way
to exhaust it. Compared in constant time.

What the credential is not: a secret from a determined attacker. It ships in
every copy of the app, so anyone can extract it; it keeps out casual scripts
and anything that is not the city's app, and names the app, so a leaked one is
rotated (`citypost apps rotate`) or removed. The limits keyed on it and on the
peer's address are what hold an abuser back (api.citizen_guard).

The same file discipline as security.account_book (both are a
security.json_book): writes under an exclusive flock, the file replaced
atomically with mode 0600, readers re-reading when the file's inode, mtime or
size changed (and always within 2 s of a write).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citypost.config import Config
from citypost.errors import InvalidArgumentError
from security.files import load_secrets, save_secrets
from security.json_book import JsonBook

APP_ID = re.compile(r"[a-z][a-z0-9-]{1,63}")
HASH_PREFIX = "sha256:"
# The demo's one app (CitySystem creates it, its secret kept beside the demo passwords).
DEMO_APP = "citizen-app"


def apps_path(config: Config) -> Path:
    """The apps file of a config: `security.apps_file`, else `run_dir/apps.json`."""
    return config.security.apps_file or config.run_dir / "apps.json"


@dataclass(frozen=True)
class App:
    """One app allowed on the citizen listener. The hash stays out of repr (logs)."""

    app: str
    secret_hash: str = field(repr=False)
    disabled: bool = False
    created_at: str = ""


@dataclass(frozen=True)
class AppCredential:
    """What an app presents (and what `apps add` prints once)."""

    app: str
    secret: str = field(repr=False)

    @property
    def header(self) -> str:
        """The `x-citypost-app` metadata value."""
        return f"{self.app}:{self.secret}"


def check_app_id(app: str) -> None:
    if not APP_ID.fullmatch(app):
        raise InvalidArgumentError(
            f"app id {app!r} is not valid: a lower-case letter, then 1 to 63 of a-z 0-9 -"
        )


def hash_secret(secret: str) -> str:
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    # 32 random bytes, URL-safe: 43 characters, no ':' (the header's separator).
    return secrets.token_urlsafe(32)


class AppBook(JsonBook[App]):
    """The apps file at `path`."""

    section = "apps"
    noun = "app"

    # --- reading -------------------------------------------------------------------------

    def get(self, app: str) -> App | None:
        return self._current().get(app)

    def apps(self) -> list[App]:
        return sorted(self._current().values(), key=lambda a: a.app)

    def refusal(self, app: str, secret: str) -> str | None:
        """None if `secret` is the app's and the app is enabled; else the precise reason
        (for the audit: the caller hears one message for all of them)."""
        found = self.get(app)
        # Hashed whatever happens, so an unknown app takes as long as a wrong secret.
        presented = hash_secret(secret)
        if found is None:
            return f"unknown app {app!r}"
        if not hmac.compare_digest(presented, found.secret_hash):
            return f"wrong secret for app {app!r}"
        if found.disabled:
            return f"app {app!r} is disabled"
        return None

    # --- changing ------------------------------------------------------------------------

    def add(self, app: str, *, now: float) -> AppCredential:
        """A new app and its secret (shown once: only its hash is kept)."""
        check_app_id(app)
        secret = new_secret()
        record = App(
            app, hash_secret(secret), created_at=datetime.fromtimestamp(now, UTC).isoformat()
        )
        with self._changing() as apps:
            if app in apps:
                raise InvalidArgumentError(f"app {app!r} already exists (rotate its secret?)")
            apps[app] = record
        return AppCredential(app, secret)

    def rotate(self, app: str) -> AppCredential:
        """A new secret for an existing app; the old one stops working at once."""
        secret = new_secret()
        self._update(app, secret_hash=hash_secret(secret))
        return AppCredential(app, secret)

    def disable(self, app: str) -> None:
        self._update(app, disabled=True)

    def enable(self, app: str) -> None:
        self._update(app, disabled=False)

    def remove(self, app: str) -> None:
        self._remove(app)

    # --- inside --------------------------------------------------------------------------

    def _record(self, item: dict[str, Any]) -> App:
        app = App(**item)
        if not app.secret_hash.startswith(HASH_PREFIX):
            raise ValueError(f"app {app.app!r}: the secret's hash is not {HASH_PREFIX}…")
        return app

    def _name(self, record: App) -> str:
        return record.app


# --- the demo's app ----------------------------------------------------------------------


def secrets_path(apps_file: Path) -> Path:
    """Where the demo keeps its apps' secrets: beside the apps file (and the demo's
    passwords), `<apps>.secrets.json`, mode 0600. A real city has no such file."""
    return apps_file.with_name(apps_file.stem + ".secrets.json")


def ensure_demo_app(apps_file: Path, app: str = DEMO_APP) -> AppCredential:
    """The demo's app with its secret: made (or its secret made again, if the kept one
    was lost) on first use; the same afterwards."""
    book = AppBook(apps_file)
    known = load_secrets(secrets_path(apps_file))
    secret = known.get(app)
    if secret is None or book.refusal(app, secret) is not None:
        existing = book.get(app)
        if existing is not None and existing.disabled:
            book.enable(app)
        credential = book.rotate(app) if existing is not None else book.add(app, now=time.time())
        known[app] = credential.secret
        save_secrets(secrets_path(apps_file), known)
        return credential
    return AppCredential(app, secret)
