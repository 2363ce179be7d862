"""The audit's tamper evidence: a SHA-256 hash chain with signed checkpoints. Pure; no I/O.

A post's audit file holds one JSON object a line. Once the chain has started, every
line carries `prev` (the previous line's `hash`; `GENESIS` for the chain's first line)
and `hash`, the SHA-256 (hex) of the line's canonical bytes without `hash` (so with
`prev`): change, remove, insert or reorder a line and the chain no longer links.

A chain alone proves nothing against whoever can write the file: they can rewrite it
from the change on. So every N records the writer adds a **checkpoint**, itself a line
of the chain:

    {"checkpoint": {"count": <records since the chain's start>,
                    "hash": <the hash of the line before it>, "at_ms": <wall clock>},
     "signer": <the post's principal CN>, "x5c": <its certificate, base64 DER>,
     "signature": <base64 DER ECDSA P-256 SHA-256 over canonical(checkpoint)>,
     "prev": ..., "hash": ...}

signed with the post's certificate key (as its tokens are: security/tokens.py), so a
verifier needs only the city's trust bundle. Rewriting anything up to a checkpoint
then needs a post's key. What follows the last checkpoint is only chained: the
verifier says how many records that is. Witnessing (a copy outside the writer's
reach) is what the other post's file is: both posts keep the whole audit.

Canonical bytes: the record as compact JSON (no spaces), keys sorted, UTF-8, only
what JSON escapes must be escaped. For what records hold (strings, integers of at most
53 bits, booleans, null, nested objects and lists with ASCII keys) this is byte for
byte what RFC 8785 (JCS) gives, without the `rfc8785` package (not a dependency).
The two differ only on floats (JCS formats them the ECMAScript way) and on keys
outside the Basic Multilingual Plane (JCS sorts by UTF-16 units), so `canonical`
refuses floats and larger integers instead of writing something only Python would
read the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from citypost.errors import InvalidArgumentError
from security.pki import Kind, Principal, principal_of
from security.pki_store import IdentityPem

GENESIS = "0" * 64  # the `prev` of a chain's first line
CHAIN_START = "audit.chain.start"  # the action of the record a writer starts a chain with
# The largest integer every JSON reader holds exactly (I-JSON, RFC 7493).
_MAX_INT = 2**53 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_FIELDS = frozenset({"checkpoint", "signer", "x5c", "signature", "prev", "hash"})

# What `verify` reports; tests and the CLI match on these.
ALTERED = "hash mismatch (record altered)"
UNLINKED = "prev does not match the previous record's hash (record removed or reordered)"
BAD_SIGNATURE = "checkpoint signature invalid"
NOT_A_POST = "checkpoint signer not a post of this city"
CHECKPOINT_OFF_CHAIN = "checkpoint hash does not match the chain"
CHECKPOINT_MISCOUNTED = "checkpoint count does not match the chain"
UNPARSABLE = "unparsable line"
NOT_FROM_GENESIS = "the chain does not start at genesis (records removed before it)"
UNHASHED = "record without a hash inside the chain (inserted, or its chain fields removed)"


# --- canonical bytes and links --------------------------------------------------------------


def _check_value(value: Any) -> None:
    if isinstance(value, str | bool) or value is None:
        return
    if isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            raise InvalidArgumentError(f"audit record: integer {value} exceeds 53 bits")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(f"audit record: key {key!r} is not a string")
            _check_value(item)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item)
        return
    # Floats included: their text is not the same in every canonical JSON (see above).
    raise InvalidArgumentError(f"audit record: {type(value).__name__} values are not recorded")


def canonical(record: Mapping[str, Any]) -> bytes:
    """A record's canonical bytes: sorted-key compact JSON, UTF-8 (module docstring)."""
    _check_value(dict(record))
    try:
        return json.dumps(
            record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("audit record: a string holds a lone surrogate") from None


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash a linked record should carry: over everything but `hash` itself."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def link(record: Mapping[str, Any], prev_hash: str) -> dict[str, Any]:
    """`record` with `prev` (the previous line's hash, GENESIS first) and its `hash`."""
    if "prev" in record or "hash" in record:
        raise InvalidArgumentError("audit record: 'prev' and 'hash' are the chain's own fields")
    if not _HEX64.fullmatch(prev_hash):
        raise InvalidArgumentError(f"prev_hash must be 64 lowercase hex digits, got {prev_hash!r}")
    linked = {**record, "prev": prev_hash}
    linked["hash"] = hashlib.sha256(canonical(linked)).hexdigest()
    return linked


def line_of(linked: Mapping[str, Any]) -> str:
    """The file line of a linked record (its canonical form and a newline)."""
    return canonical(linked).decode("utf-8") + "\n"


def parse_line(text: str) -> dict[str, Any]:
    """One line as a JSON object; ValueError naming why not. Strict where a reader and
    the verifier could disagree: no duplicate keys, no NaN or Infinity."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(pairs)
        if len(found) != len(pairs):
            raise ValueError("a key appears twice")
        return found

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def is_checkpoint(record: Mapping[str, Any]) -> bool:
    return "checkpoint" in record


# --- signing checkpoints --------------------------------------------------------------------


class CheckpointSigner:
    """Signs checkpoints with a post's certificate key; the certificate is read once."""

    def __init__(self, identity: IdentityPem) -> None:
        cert = x509.load_pem_x509_certificate(identity.cert)
        self.principal: Principal = principal_of(cert)
        key = serialization.load_pem_private_key(identity.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise InvalidArgumentError(f"{self.principal.common_name}'s key is not EC P-256")
        if key.public_key() != cert.public_key():
            raise InvalidArgumentError(
                f"{self.principal.common_name}'s key does not match its certificate"
            )
        self._key = key
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def checkpoint(self, *, count: int, chain_hash: str, at_ms: int) -> dict[str, Any]:
        """The checkpoint record (not yet linked) over a chain of `count` records whose
        last line's hash is `chain_hash`."""
        body = {"count": count, "hash": chain_hash, "at_ms": at_ms}
        signature = self._key.sign(canonical(body), ec.ECDSA(hashes.SHA256()))
        return {
            "checkpoint": body,
            "signer": self.principal.common_name,
            "x5c": self._x5c,
            "signature": base64.b64encode(signature).decode(),
        }


# --- verifying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """Where the file stops being intact: its line (1-based), the record's entry_id
    (empty for a checkpoint or an unparsable line) and what is wrong."""

    line: int
    entry_id: str
    what: str

    def __str__(self) -> str:
        entry = f" (entry {self.entry_id})" if self.entry_id else ""
        return f"line {self.line}{entry}: {self.what}"


@dataclass
class VerifyReport:
    lines: int = 0
    records: int = 0  # chained records, start markers included, checkpoints not
    unchained: int = 0  # lines before the chain started: written before it existed
    checkpoints: int = 0
    last_checkpoint_line: int | None = None
    unsigned_tail: int = 0  # records after the last checkpoint: chained, not signed
    signers: list[str] = field(default_factory=list)
    signers_verified: bool = False  # against the city's trust; else each only by its x5c
    first_break: Break | None = None
    breaks: int = 0
    # The last line has no newline and does not parse: being written (a live file), or a
    # write cut short. Not a break: dropping the tail is what a chain cannot show anyway.
    incomplete_tail: bool = False

    @property
    def intact(self) -> bool:
        return self.first_break is None

    def as_dict(self) -> dict[str, Any]:
        found = self.first_break
        return {
            "intact": self.intact,
            "lines": self.lines,
            "records": self.records,
            "unchained": self.unchained,
            "checkpoints": self.checkpoints,
            "last_checkpoint_line": self.last_checkpoint_line,
            "unsigned_tail": self.unsigned_tail,
            "signers": self.signers,
            "signers_verified": self.signers_verified,
            "first_break": None
            if found is None
            else {"line": found.line, "entry_id": found.entry_id, "what": found.what},
            "breaks": self.breaks,
            "incomplete_tail": self.incomplete_tail,
        }


class _Refused(Exception):
    """A checkpoint refused; the message says why (becomes the Break's text)."""


@dataclass(frozen=True)
class _Signer:
    principal: Principal
    key: ec.EllipticCurvePublicKey
    not_before: float
    not_after: float


def _city_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(names[0].value) if names else ""
    if not org.startswith("citypost "):
        raise InvalidArgumentError(f"the trust bundle's root is not a citypost CA ({org!r})")
    return org.removeprefix("citypost ")


class _Signers:
    """Checkpoint signers: chain-verified against the trust (at the checkpoint's time,
    once per certificate and validity window), or without trust only read."""

    def __init__(self, trust_pem: bytes | None) -> None:
        self.city: str | None = None
        self._store: Store | None = None
        self._intermediates: list[x509.Certificate] = []
        if trust_pem is not None:
            try:
                certs = x509.load_pem_x509_certificates(trust_pem)
            except ValueError:
                raise InvalidArgumentError("the trust bundle is not PEM certificates") from None
            roots = [c for c in certs if c.subject == c.issuer]
            if not roots:
                raise InvalidArgumentError("the trust bundle holds no root certificate")
            self.city = _city_of(roots[0])
            self._store = Store(roots)
            self._intermediates = [c for c in certs if c.subject != c.issuer]
        self._known: dict[str, _Signer] = {}

    def get(self, x5c: str, at_s: float) -> _Signer:
        known = self._known.get(x5c)
        if known is not None and known.not_before <= at_s <= known.not_after:
            return known
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(x5c, validate=True))
        except (ValueError, binascii.Error):
            raise _Refused(f"{BAD_SIGNATURE}: x5c is not a DER certificate") from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise _Refused(f"{BAD_SIGNATURE}: the signer's key is not EC P-256")
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
        if self._store is not None:
            at = datetime.fromtimestamp(at_s, UTC)
            verifier = PolicyBuilder().store(self._store).time(at).build_client_verifier()
            try:
                chain = verifier.verify(cert, self._intermediates).chain
            except VerificationError as error:
                raise _Refused(
                    f"{NOT_A_POST} (its certificate does not chain to the city's trust at "
                    f"{at.isoformat(timespec='seconds')}: {error})"
                ) from None
            not_before = max(c.not_valid_before_utc.timestamp() for c in chain)
            not_after = min(c.not_valid_after_utc.timestamp() for c in chain)
        try:
            principal = principal_of(cert)
        except InvalidArgumentError as error:
            raise _Refused(f"{NOT_A_POST} ({error.message})") from None
        if principal.kind is not Kind.POST:
            raise _Refused(
                f"{NOT_A_POST} ({principal.common_name} is a {principal.kind.value} certificate)"
            )
        if self.city is not None and principal.city != self.city:
            raise _Refused(f"{NOT_A_POST} ({principal.common_name} of {principal.city!r})")
        signer = _Signer(principal, key, not_before, not_after)
        self._known[x5c] = signer
        return signer


def _check_checkpoint(
    record: Mapping[str, Any], chain_hash: str, count: int, signers: _Signers
) -> str:
    """The signer's CN if the checkpoint holds; _Refused naming what does not."""
    body = record.get("checkpoint")
    extra = set(record) - _CHECKPOINT_FIELDS
    if (
        extra
        or not isinstance(body, dict)
        or set(body) != {"count", "hash", "at_ms"}
        or not all(
            isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("count", "at_ms")
        )
        or not all(isinstance(record.get(k), str) for k in ("signer", "x5c", "signature"))
    ):
        raise _Refused("checkpoint malformed (fields missing, extra or of the wrong type)")
    if body["hash"] != chain_hash:
        raise _Refused(CHECKPOINT_OFF_CHAIN)
    if body["count"] != count:
        raise _Refused(f"{CHECKPOINT_MISCOUNTED} (it says {body['count']}, {count} counted)")
    signer = signers.get(record["x5c"], body["at_ms"] / 1000)
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        signer.key.verify(signature, canonical(body), ec.ECDSA(hashes.SHA256()))
    except (ValueError, binascii.Error, InvalidSignature):
        raise _Refused(BAD_SIGNATURE) from None
    if record["signer"] != signer.principal.common_name:
        raise _Refused(
            f"checkpoint signer field names {record['signer']!r}, its certificate "
            f"{signer.principal.common_name}"
        )
    return signer.principal.common_name


def verify(lines: Iterable[str], trust_pem: bytes | None) -> VerifyReport:
    """Walk an audit file's lines: is the chain intact, do its checkpoints hold?

    Reports the first break (line, entry id, what) and counts the breaks. After a break
    the walk goes on from the broken line's own hash (after an unparsable line: from the
    next line's `prev`), so one altered or removed record is not a break on every line
    after it. Without `trust_pem` (the city's trust bundle) each checkpoint's signature
    is checked against its own certificate only: `signers_verified` stays False.
    """
    report = VerifyReport(signers_verified=trust_pem is not None)
    signers = _Signers(trust_pem)
    started = False  # a line with a hash was seen: from there on every line must link
    head = GENESIS  # the last chained line's hash
    resync = False

    def broken(number: int, entry_id: str, what: str) -> None:
        report.breaks += 1
        if report.first_break is None:
            report.first_break = Break(number, entry_id, what)

    cut: tuple[int, str] | None = None  # an unparsable line without a newline, so far last

    for number, raw in enumerate(lines, start=1):
        report.lines = number
        if cut is not None:  # it was not the last line after all
            broken(cut[0], "", cut[1])
            cut = None
        text = raw[:-1] if raw.endswith("\n") else raw
        try:
            record = parse_line(text)
            computed = record_hash(record) if "hash" in record else None
        except (ValueError, InvalidArgumentError) as error:
            if not started:
                report.unchained += 1  # before the chain: not verifiable anyway
                continue
            message = error.message if isinstance(error, InvalidArgumentError) else str(error)
            resync = True  # the chain's head is unknown: take it up from the next line
            if raw.endswith("\n"):
                broken(number, "", f"{UNPARSABLE} ({message})")
            else:
                cut = (number, f"{UNPARSABLE} ({message})")
            continue
        entry_id = str(record.get("entry_id", ""))
        if computed is None:
            if not started:
                report.unchained += 1
            else:
                broken(number, entry_id, UNHASHED)
            continue
        stated, prev = record["hash"], record.get("prev")
        fault = ""
        if computed != stated:
            fault = ALTERED
        elif not isinstance(prev, str):
            fault = UNLINKED
        elif not started:
            fault = "" if prev == GENESIS else NOT_FROM_GENESIS
        elif prev != head and not resync:
            fault = UNLINKED
        started, resync = True, False
        head = stated if isinstance(stated, str) else computed
        if not is_checkpoint(record):
            report.records += 1
            report.unsigned_tail += 1
        if fault:
            broken(number, entry_id, fault)
            continue  # one break a line; a broken checkpoint's claims say nothing
        if not is_checkpoint(record):
            continue
        try:
            signer = _check_checkpoint(record, str(prev), report.records, signers)
        except _Refused as refused:
            broken(number, "", str(refused))
            continue
        report.checkpoints += 1
        report.last_checkpoint_line = number
        report.unsigned_tail = 0
        if signer not in report.signers:
            report.signers.append(signer)
    report.incomplete_tail = cut is not None
    return report
