"""The city's PKI, pure: a root CA, an issuing CA, a certificate per component, a CRL.

All keys are EC P-256 and all signatures ECDSA-SHA256. The root signs only the
issuing CA; the issuing CA signs every component's certificate and the
revocation list, so the root's key can stay offline.

A component's certificate names it twice:
- its **principal** as the subject's CN, `<kind>.<name>` (`post.primary`,
  `gate.gate`; a device: its bare DevEUI): etcd takes the CN as the user and
  mosquitto as the user name, so their access rules key on it;
- a URI SAN `spiffe://citypost.<city>/<kind>/<name>`, which gRPC shows a
  server as the peer's identity.

Server kinds also carry `localhost` and `127.0.0.1` (every server here binds
the loopback) and may serve as well as connect; the others may only connect.
Lifetimes are per kind (`LIFETIMES`). No I/O here: the store that keeps the
files is `security.pki_store`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from citypost.errors import InvalidArgumentError


class Kind(StrEnum):
    """What a certificate is for."""

    POST = "post"
    GATE = "gate"
    NETWORK_SERVER = "network-server"
    ETCD = "etcd"
    BROKER = "broker"
    CONSOLE = "console"
    CHAOS = "chaos"
    DEVICE = "device"


SERVER_KINDS = frozenset({Kind.POST, Kind.GATE, Kind.NETWORK_SERVER, Kind.ETCD, Kind.BROKER})

# Short for what a process holds on disk and can renew without a restart; longer for
# what someone has to install (a device).
LIFETIMES: dict[Kind, timedelta] = {
    Kind.POST: timedelta(days=90),
    Kind.GATE: timedelta(days=90),
    Kind.NETWORK_SERVER: timedelta(days=90),
    Kind.ETCD: timedelta(days=90),
    Kind.BROKER: timedelta(days=90),
    Kind.CONSOLE: timedelta(days=30),
    Kind.CHAOS: timedelta(days=30),
    Kind.DEVICE: timedelta(days=365),
}
ROOT_LIFETIME = timedelta(days=3650)
ISSUING_LIFETIME = timedelta(days=730)
# Issued a little in the past, so a clock a minute behind still accepts it.
BACKDATE = timedelta(minutes=5)

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DEV_EUI = re.compile(r"[0-9a-f]{16}")


def _check_name(what: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r}: lowercase letters, digits and '-', 1 to 63 characters"
        )


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgumentError("the CA key is not an EC key")
        return key


@dataclass(frozen=True)
class Principal:
    """Who a certificate names: its kind and name, in one city."""

    city: str
    kind: Kind
    name: str

    def __post_init__(self) -> None:
        _check_name("city", self.city)
        _check_name("name", self.name)
        if self.kind is Kind.DEVICE and not _DEV_EUI.fullmatch(self.name):
            raise InvalidArgumentError(
                f"a device is named by its DevEUI, 16 lowercase hex digits, got {self.name!r}"
            )

    @property
    def common_name(self) -> str:
        # A device's CN is its bare DevEUI, so the broker's ACL can match it against
        # the topic's device level (%u); it cannot collide with `<kind>.<name>`.
        if self.kind is Kind.DEVICE:
            return self.name
        return f"{self.kind.value}.{self.name}"

    @property
    def uri(self) -> str:
        return f"spiffe://citypost.{self.city}/{self.kind.value}/{self.name}"


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a component signs its handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca_name(city: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"citypost {city}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"citypost {city} {role} CA"),
        ]
    )


def _ca(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    path_length: int,
    now: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def create_root(city: str, *, now: datetime) -> KeyPair:
    """The city's root CA (self-signed); it signs the issuing CA only."""
    _check_name("city", city)
    key = _new_key()
    name = _ca_name(city, "root")
    cert = _ca(name, key, name, key, path_length=1, now=now, lifetime=ROOT_LIFETIME)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def create_issuing(root: KeyPair, city: str, *, now: datetime) -> KeyPair:
    """The issuing CA under the root: it signs components' certificates and the CRL."""
    key = _new_key()
    cert = _ca(
        _ca_name(city, "issuing"),
        key,
        root.cert.subject,
        root.private_key(),
        path_length=0,
        now=now,
        lifetime=min(ISSUING_LIFETIME, root.cert.not_valid_after_utc - now),
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def issue(
    issuing: KeyPair,
    principal: Principal,
    *,
    now: datetime,
    lifetime: timedelta | None = None,
) -> KeyPair:
    """A certificate for one component, signed by the issuing CA; never outlives it."""
    ca = issuing.cert
    wanted = LIFETIMES[principal.kind] if lifetime is None else lifetime
    if wanted <= timedelta(0):
        raise InvalidArgumentError(f"lifetime must be positive, got {wanted}")
    key = _new_key()
    public = key.public_key()
    server = principal.kind in SERVER_KINDS
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(principal.uri)]
    if server:
        names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"citypost {principal.city}"),
            x509.NameAttribute(NameOID.COMMON_NAME, principal.common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + wanted, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing.private_key().public_key()),
            critical=False,
        )
        .sign(issuing.private_key(), hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def principal_of(cert: x509.Certificate) -> Principal:
    """Who a certificate of this PKI names, read back from its URI SAN."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidArgumentError("the certificate has no subject alternative name") from None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        found = re.fullmatch(r"spiffe://citypost\.([^/]+)/([^/]+)/([^/]+)", uri)
        if found and found.group(2) in {kind.value for kind in Kind}:
            return Principal(found.group(1), Kind(found.group(2)), found.group(3))
    raise InvalidArgumentError("the certificate names no citypost principal")


def revocation_list(
    issuing: KeyPair,
    revoked: Iterable[tuple[int, datetime]],
    *,
    now: datetime,
    next_update: timedelta = timedelta(days=7),
) -> bytes:
    """The CRL (PEM) of the issuing CA: each (serial, revoked at)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuing.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + next_update)
    )
    for serial, at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
        )
    crl = builder.sign(issuing.private_key(), hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)
