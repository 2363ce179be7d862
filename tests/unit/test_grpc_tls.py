"""gRPC mutual TLS without a server: the peer read from an auth context, and the
server's certificate fetcher (reload on change, never a half-rotated pair)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from citypost.errors import ConfigError
from security import pki
from security.grpc_tls import (
    PEER_CERT_KEY,
    CertificateFetcher,
    peer_principal,
    peer_serial,
    server_credentials,
)
from security.pki import Kind, Principal
from security.pki_store import Identity, IdentityPem, PkiStore

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
POST = Principal("dijon", Kind.POST, "primary")
CONSOLE = Principal("dijon", Kind.CONSOLE, "claire")


class Context:
    """Stands for a ServicerContext: only auth_context is read."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def _context(cert_pem: bytes) -> Any:
    return Context({PEER_CERT_KEY: [cert_pem], "transport_security_type": [b"ssl"]})


def test_peer_principal_and_serial_from_the_client_certificate() -> None:
    root = pki.create_root("dijon", now=NOW)
    issuing = pki.create_issuing(root, "dijon", now=NOW)
    issued = pki.issue(issuing, CONSOLE, now=NOW)
    context = _context(issued.cert_pem)
    assert peer_principal(context) == CONSOLE
    assert peer_serial(context) == issued.cert.serial_number
    assert peer_principal(context) == CONSOLE  # the second read comes from the cache


def test_no_peer_on_plaintext_or_without_a_principal() -> None:
    plaintext: Any = Context({})
    assert peer_principal(plaintext) is None
    assert peer_serial(plaintext) is None
    # A certificate naming no citypost principal (the CA's own) is no one.
    root = pki.create_root("dijon", now=NOW)
    assert peer_principal(_context(root.cert_pem)) is None
    assert peer_serial(_context(root.cert_pem)) == root.cert.serial_number
    assert peer_principal(_context(b"not a certificate")) is None


def _store(tmp_path: Path) -> PkiStore:
    store = PkiStore(tmp_path / "pki", "dijon")
    store.init(now=NOW)
    return store


def test_fetcher_reloads_only_when_the_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    identity = store.issue(POST, now=NOW)
    fetcher = CertificateFetcher(identity)
    reads: list[Identity] = []
    read = Identity.read

    def counted(self: Identity) -> IdentityPem:
        reads.append(self)
        return read(self)

    monkeypatch.setattr(Identity, "read", counted)
    assert fetcher() is None  # nothing changed: the current configuration stays
    assert reads == []  # and nothing was read (grpc calls this on every connection)
    store.issue(POST, now=NOW)  # rotation
    assert isinstance(fetcher(), grpc.ServerCertificateConfiguration)
    assert fetcher() is None  # loaded once
    assert len(reads) == 1


def test_fetcher_keeps_the_current_pair_while_a_rotation_is_half_done(tmp_path: Path) -> None:
    store = _store(tmp_path)
    identity = store.issue(POST, now=NOW)
    other = store.issue(CONSOLE, now=NOW)
    fetcher = CertificateFetcher(identity)
    # The store writes the new key first: for a moment the key is not the certificate's.
    identity.key.write_bytes(other.key.read_bytes())
    assert fetcher() is None
    assert fetcher() is None  # not read again until a file changes
    store.issue(POST, now=NOW)  # the rotation completes
    assert fetcher() is not None
    # Files gone: the server keeps what it has.
    identity.cert.unlink()
    assert fetcher() is None


def test_server_credentials_refuse_missing_or_mismatched_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    identity = store.issue(POST, now=NOW)
    other = store.issue(CONSOLE, now=NOW)
    assert isinstance(server_credentials(identity), grpc.ServerCredentials)
    identity.key.write_bytes(other.key.read_bytes())
    with pytest.raises(ConfigError, match="does not match"):
        server_credentials(identity)
    identity.cert.unlink()
    with pytest.raises(ConfigError, match=r"post\.primary"):
        server_credentials(identity)
