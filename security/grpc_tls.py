"""Mutual TLS for gRPC: server and channel credentials from a PKI identity, and the
peer's principal as the server sees it.

Every gRPC server of the city asks for a client certificate of the city's PKI and
every client shows one (DESIGN.md, Security in layers), except the posts' citizen
listeners, whose callers are phones (`server_only_credentials`). This is transport
only: who may call what is decided later, from `peer_principal`.

- Servers re-read their certificate when its files change (`citypost pki issue`
  rotates by replacing them): grpc asks the fetcher before every new
  connection's handshake, so the fetcher only stats the files unless one
  changed; connections already open keep the certificate they began with.
- Clients cannot reload a certificate in place (grpc has no client-side fetcher),
  so the channel factories read the files each time they open a channel: a
  channel opened after a rotation shows the new certificate.
- Clients dial `127.0.0.1:<port>` or `localhost:<port>`; the target's host is the
  name checked, and server certificates carry both (security.pki).
- Python gRPC has no CRL option: a revoked certificate still completes the
  handshake, so `peer_serial` is there for a denylist (`PkiStore.revoked_serials`).

`channel` and `aio_channel` open plaintext channels when given no identity: the
benchmark baseline runs without TLS (config `security.tls = false`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from citypost.errors import ConfigError, InvalidArgumentError
from security.pki import Principal, principal_of
from security.pki_store import Identity, IdentityPem

log = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]
# The auth_context key holding the peer's certificate (PEM), set on every TLS connection.
PEER_CERT_KEY = "x509_pem_cert"

# What identifies a file's version without reading it: (inode, size, mtime in ns).
# The store replaces files by rename, so a rotation changes the inode even within one
# mtime tick.
_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(identity: Identity) -> _Stamp:
    found = []
    for path in (identity.trust, identity.cert, identity.key):
        status = os.stat(path)
        found.append((status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(found)


def _matching(pem: IdentityPem) -> bool:
    """Whether the certificate is the key's: the store writes the key, then the
    certificate, so a reader in between holds a new key and the old certificate."""
    cert = x509.load_pem_x509_certificate(pem.cert)
    key = serialization.load_pem_private_key(pem.key, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _read(identity: Identity) -> IdentityPem:
    try:
        return identity.read()
    except OSError as error:
        raise ConfigError(
            f"cannot read the TLS files of {identity.principal.common_name}: {error}"
        ) from None


def _server_configuration(pem: IdentityPem) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], pem.trust)


class CertificateFetcher:
    """The server's certificate configuration, read again when its files changed.

    Made from the files as they are now (`initial`); ConfigError if they cannot be
    read or the certificate is not the key's. Then called by grpc before each new
    connection's TLS handshake: None keeps the current configuration. A read that
    fails or finds a certificate not matching its key (a rotation half done) keeps
    it too, and the next connection tries again.
    """

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        who = identity.principal.common_name
        try:
            # Stamped before reading: a change while reading is seen at the next call.
            self._loaded = _stamp(identity)
            pem = identity.read()
            matching = _matching(pem)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the TLS files of {who}: {error}") from None
        if not matching:
            raise ConfigError(
                f"{identity.cert} does not match {identity.key}: was it being issued again? "
                "Start the server again"
            )
        self.initial = _server_configuration(pem)
        self._refused: _Stamp | None = None
        self._lock = threading.Lock()  # grpc may call from several threads at once

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        who = self._identity.principal.common_name
        with self._lock:
            try:
                stamp = _stamp(self._identity)
                # Unchanged, or the same mismatched pair as last time: nothing read.
                if stamp in (self._loaded, self._refused):
                    return None
                pem = self._identity.read()
                if not _matching(pem):
                    self._refused = stamp
                    log.warning(
                        "%s: key and certificate differ (being issued?); keeping the current", who
                    )
                    return None
            except (OSError, ValueError) as error:
                log.warning(
                    "cannot reload the TLS certificate of %s, keeping the current: %s", who, error
                )
                return None
            self._loaded = stamp
            log.info("TLS certificate of %s reloaded", who)
            return _server_configuration(pem)


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Mutual TLS for a server: its certificate, and a client certificate of the same
    PKI required; the certificate is reloaded when its files change."""
    fetcher = CertificateFetcher(identity)
    # grpc's stubs say the fetcher never returns None; its documentation says None
    # keeps the current configuration.
    typed = cast("Callable[[], grpc.ServerCertificateConfiguration]", fetcher)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, typed, require_client_authentication=True
    )


def server_only_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS for a server whose clients have no certificate of the city (the citizen
    listener: phones): its certificate, reloaded when its files change, and no client
    certificate asked for. Who calls is then the listener's own business
    (api.citizen_guard)."""
    fetcher = CertificateFetcher(identity)
    typed = cast("Callable[[], grpc.ServerCertificateConfiguration]", fetcher)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, typed, require_client_authentication=False
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """Mutual TLS for a client: the PKI's trust bundle, its key and certificate, read now."""
    pem = _read(identity)
    return grpc.ssl_channel_credentials(
        root_certificates=pem.trust, private_key=pem.key, certificate_chain=pem.cert
    )


def channel(
    address: str, identity: Identity | None, *, options: ChannelOptions | None = None
) -> grpc.Channel:
    """A channel to `address` (HOST:PORT): mutual TLS with `identity`, plaintext without."""
    if identity is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(identity), options=options)


def aio_channel(
    address: str, identity: Identity | None, *, options: ChannelOptions | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `address`: mutual TLS with `identity`, plaintext without."""
    if identity is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(identity), options=options)


def secure_channel_factory(
    identity: Identity, *, options: ChannelOptions | None = None
) -> Callable[[str], grpc.Channel]:
    """`address -> channel` with mutual TLS, for a `channel_factory` (console.client);
    each channel reads the files again, so one opened after a rotation uses the new ones."""
    return functools.partial(channel, identity=identity, options=options)


def aio_secure_channel_factory(
    identity: Identity, *, options: ChannelOptions | None = None
) -> Callable[[str], grpc.aio.Channel]:
    """`address -> asyncio channel` with mutual TLS, for a `channel_factory`
    (failover.follow_client)."""
    return functools.partial(aio_channel, identity=identity, options=options)


# --- the peer, server side -----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _certificate(pem: bytes) -> x509.Certificate:
    # A connection's calls all show the same certificate: parse it once.
    return x509.load_pem_x509_certificate(pem)


def peer_certificate(
    context: grpc.aio.ServicerContext | grpc.ServicerContext,
) -> x509.Certificate | None:
    """The client's certificate on a TLS connection; None on a plaintext one."""
    found = context.auth_context().get(PEER_CERT_KEY)
    # A list of values per key in practice; the stubs also allow bare bytes.
    pem = found if isinstance(found, bytes) or found is None else next(iter(found), None)
    if not pem:
        return None
    try:
        return _certificate(bytes(pem))
    except ValueError:
        return None


def peer_principal(context: grpc.aio.ServicerContext | grpc.ServicerContext) -> Principal | None:
    """Who calls, from the client certificate's SPIFFE URI; None without a certificate
    or if it names no citypost principal."""
    cert = peer_certificate(context)
    if cert is None:
        return None
    try:
        return principal_of(cert)
    except InvalidArgumentError:
        return None


def peer_serial(context: grpc.aio.ServicerContext | grpc.ServicerContext) -> int | None:
    """The client certificate's serial (to check against the revoked ones); None without."""
    cert = peer_certificate(context)
    return None if cert is None else cert.serial_number
