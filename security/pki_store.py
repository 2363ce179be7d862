"""The city's PKI on disk: the CAs, every issued certificate, an index, the CRL.

One directory (config `security.pki_dir`, by default `run_dir/pki`):

    root.crt root.key       the root CA (its key belongs offline; the demo keeps it here)
    ca.crt ca.key           the issuing CA
    trust.pem               what every peer trusts: the issuing CA then the root
    crl.pem                 the issuing CA's revocation list, rewritten on each revoke
    index.json              every certificate issued: serial, CN, kind, name, dates
    issued/<cn>.crt .key    the current certificate of each principal (key 0600)

Issuing again for a principal replaces its files atomically with a new serial
(rotation): etcd reads certificates per connection, the gRPC servers per
connection, mosquitto on SIGHUP. An exclusive file lock makes the CLI and a
running demo safe to use together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from citypost.errors import ConfigError, InvalidArgumentError
from security import pki
from security.files import PRIVATE, PUBLIC, replace_file
from security.pki import KeyPair, Kind, Principal

# `ensure` replaces a certificate once less than this share of its life remains.
RENEW_SHARE = 1 / 3
# The CRL is signed again this close to its next update: past it, OpenSSL (mosquitto)
# refuses every certificate of the CA.
CRL_RENEW_BEFORE = timedelta(days=3)


@dataclass(frozen=True)
class IdentityPem:
    """An identity's files read into memory (what gRPC takes)."""

    trust: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Identity:
    """Where one principal's certificate, key, trust bundle and the CRL are on disk
    (what etcd, mosquitto and paho take)."""

    principal: Principal
    trust: Path
    cert: Path
    key: Path
    crl: Path

    def read(self) -> IdentityPem:
        return IdentityPem(self.trust.read_bytes(), self.cert.read_bytes(), self.key.read_bytes())


@dataclass(frozen=True)
class IndexEntry:
    serial: int
    common_name: str
    kind: str
    name: str
    issued_at: str
    not_after: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _put(path: Path, data: bytes, *, private: bool = False) -> None:
    replace_file(path, data, mode=PRIVATE if private else PUBLIC)


def _ageing(entry: IndexEntry, now: datetime) -> bool:
    issued = datetime.fromisoformat(entry.issued_at)
    ends = datetime.fromisoformat(entry.not_after)
    return ends - now < (ends - issued) * RENEW_SHARE


class PkiStore:
    def __init__(self, directory: Path, city: str) -> None:
        self.directory = Path(directory)
        self.city = city
        self.root_cert = self.directory / "root.crt"
        self.ca_cert = self.directory / "ca.crt"
        self.trust = self.directory / "trust.pem"
        self.crl = self.directory / "crl.pem"
        self.index_path = self.directory / "index.json"
        self.issued = self.directory / "issued"
        self._revoked: tuple[tuple[int, int, int], frozenset[int]] | None = None

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path) -> PkiStore:
        """The PKI in `directory`, its city read from the issuing CA (what a workstation
        that knows only the directory needs)."""
        ca = Path(directory) / "ca.crt"
        try:
            cert = x509.load_pem_x509_certificate(ca.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"{directory} holds no city PKI (no ca.crt)") from None
        names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        org = str(names[0].value) if names else ""
        if not org.startswith("citypost "):
            raise ConfigError(f"{ca} is not a citypost CA (organisation {org!r})")
        return cls(Path(directory), org.removeprefix("citypost "))

    @property
    def initialized(self) -> bool:
        return self.ca_cert.exists() and self.trust.exists()

    def identity(self, principal: Principal) -> Identity:
        """The files of an issued principal; ConfigError naming what is missing."""
        found = self._identity(principal)
        for path in (found.trust, found.cert, found.key, found.crl):
            if not path.exists():
                raise ConfigError(
                    f"no certificate for {principal.common_name} in {self.directory} "
                    f"({path.name} is missing): run `citypost pki issue "
                    f"{principal.kind.value} {principal.name}`"
                )
        return found

    def entries(self) -> list[IndexEntry]:
        if not self.index_path.exists():
            return []
        raw = json.loads(self.index_path.read_text(encoding="utf-8"))
        return [IndexEntry(**item) for item in raw]

    def index_stamp(self) -> tuple[int, int, int] | None:
        """What changes whenever a certificate is issued or revoked (None: no index yet)."""
        try:
            found = self.index_path.stat()
        except FileNotFoundError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size)

    def revoked_serials(self) -> frozenset[int]:
        """Serials revoked so far; re-read only when the index changed (servers ask on
        every call: gRPC's Python TLS has no CRL of its own)."""
        stamp = self.index_stamp()
        if stamp is None:
            return frozenset()
        if self._revoked is None or self._revoked[0] != stamp:
            serials = frozenset(e.serial for e in self.entries() if e.revoked)
            self._revoked = (stamp, serials)
        return self._revoked[1]

    def principals(self) -> list[Principal]:
        """Every principal with a current, unrevoked certificate, in issue order."""
        current: dict[str, IndexEntry] = {}
        for entry in self.entries():
            current[entry.common_name] = entry  # the last issued wins
        return [
            Principal(self.city, Kind(e.kind), e.name) for e in current.values() if not e.revoked
        ]

    # --- changing ------------------------------------------------------------------------

    def init(self, *, now: datetime | None = None) -> bool:
        """Create the root and issuing CAs if they are not there; True if created."""
        with self._locked():
            if self.initialized:
                return False
            now = now or datetime.now(UTC)
            root = pki.create_root(self.city, now=now)
            issuing = pki.create_issuing(root, self.city, now=now)
            _put(self.root_cert, root.cert_pem)
            _put(self.directory / "root.key", root.key_pem, private=True)
            _put(self.directory / "ca.key", issuing.key_pem, private=True)
            _put(self.ca_cert, issuing.cert_pem)
            _put(self.trust, issuing.cert_pem + root.cert_pem)
            self._write_crl(issuing, [], now)
            return True

    def issue(
        self,
        principal: Principal,
        *,
        now: datetime | None = None,
        lifetime: timedelta | None = None,
    ) -> Identity:
        """A new certificate for `principal` (replacing its current one)."""
        self._check_city(principal)
        with self._locked():
            return self._issue(principal, now or datetime.now(UTC), lifetime)

    def refresh_crl(self, *, now: datetime | None = None) -> bool:
        """Sign the CRL again if its next update is near; True if it did. Whoever runs
        servers for long asks now and then (the demo's supervisor every round): an
        expired CRL makes OpenSSL (mosquitto) refuse every client."""
        with self._locked():
            return self._refresh_crl(now or datetime.now(UTC))

    def ensure(self, principal: Principal, *, now: datetime | None = None) -> Identity:
        """The principal's identity, issued now if it has none, a revoked one, or one in
        the last third of its life (RENEW_SHARE)."""
        self._check_city(principal)
        now = now or datetime.now(UTC)
        with self._locked():
            self._refresh_crl(now)
            entry = self._current(principal)
            paths = self._identity(principal)
            if entry is None or entry.revoked or not paths.cert.exists() or _ageing(entry, now):
                return self._issue(principal, now, None)
            return paths

    def revoke(self, principal: Principal, *, now: datetime | None = None) -> list[int]:
        """Revoke every unrevoked certificate of `principal`; the serials revoked."""
        self._check_city(principal)
        now = now or datetime.now(UTC)
        with self._locked():
            entries = self.entries()
            hit = []
            for i, entry in enumerate(entries):
                if entry.common_name == principal.common_name and not entry.revoked:
                    entries[i] = IndexEntry(**{**asdict(entry), "revoked_at": now.isoformat()})
                    hit.append(entry.serial)
            if not hit:
                raise InvalidArgumentError(
                    f"{principal.common_name} has no unrevoked certificate in {self.directory}"
                )
            self._save_index(entries)
            self._write_crl(self._issuing(), entries, now)
            return hit

    # --- inside --------------------------------------------------------------------------

    def _check_city(self, principal: Principal) -> None:
        if principal.city != self.city:
            raise InvalidArgumentError(
                f"{principal.common_name} belongs to city {principal.city!r}, "
                f"this PKI to {self.city!r}"
            )

    def _identity(self, principal: Principal) -> Identity:
        # Not with_suffix: a CN has a dot of its own (`gate.gate`).
        cn = principal.common_name
        return Identity(
            principal, self.trust, self.issued / f"{cn}.crt", self.issued / f"{cn}.key", self.crl
        )

    def _current(self, principal: Principal) -> IndexEntry | None:
        found = [e for e in self.entries() if e.common_name == principal.common_name]
        return found[-1] if found else None

    def _issuing(self) -> KeyPair:
        if not self.initialized:
            raise ConfigError(
                f"{self.directory} holds no certificate authority: run `citypost pki init`"
            )
        return KeyPair(self.ca_cert.read_bytes(), (self.directory / "ca.key").read_bytes())

    def _issue(self, principal: Principal, now: datetime, lifetime: timedelta | None) -> Identity:
        issued = pki.issue(self._issuing(), principal, now=now, lifetime=lifetime)
        cert = issued.cert
        self.issued.mkdir(parents=True, exist_ok=True)
        paths = self._identity(principal)
        # The key first: a reader pairing the new certificate with the old key would fail.
        _put(paths.key, issued.key_pem, private=True)
        _put(paths.cert, issued.cert_pem)
        entry = IndexEntry(
            serial=cert.serial_number,
            common_name=principal.common_name,
            kind=principal.kind.value,
            name=principal.name,
            issued_at=now.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        self._save_index([*self.entries(), entry])
        return paths

    def _save_index(self, entries: list[IndexEntry]) -> None:
        data = json.dumps([asdict(e) for e in entries], indent=1) + "\n"
        _put(self.index_path, data.encode())

    def _write_crl(self, issuing: KeyPair, entries: list[IndexEntry], now: datetime) -> None:
        revoked = [
            (e.serial, datetime.fromisoformat(e.revoked_at)) for e in entries if e.revoked_at
        ]
        _put(self.crl, pki.revocation_list(issuing, revoked, now=now))

    def _refresh_crl(self, now: datetime) -> bool:
        current = x509.load_pem_x509_crl(self.crl.read_bytes()) if self.crl.exists() else None
        update = None if current is None else current.next_update_utc
        if update is None or update - now < CRL_RENEW_BEFORE:
            self._write_crl(self._issuing(), self.entries(), now)
            return True
        return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
