"""The audit's hash chain and signed checkpoints: an intact file verifies; each way of
tampering is named by its line, its entry and what is wrong."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from citypost.errors import InvalidArgumentError
from security import audit_chain, pki
from security.audit_chain import (
    ALTERED,
    BAD_SIGNATURE,
    CHECKPOINT_MISCOUNTED,
    CHECKPOINT_OFF_CHAIN,
    GENESIS,
    NOT_A_POST,
    NOT_FROM_GENESIS,
    UNHASHED,
    UNLINKED,
    UNPARSABLE,
    CheckpointSigner,
    canonical,
    line_of,
    link,
    record_hash,
    verify,
)
from security.pki import KeyPair, Kind, Principal
from security.pki_store import IdentityPem

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CITY = "dijon"
NOW_DT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW_DT.timestamp() * 1000)


@dataclass(frozen=True)
class City:
    name: str
    root: KeyPair
    issuing: KeyPair

    @property
    def trust(self) -> bytes:
        return self.issuing.cert_pem + self.root.cert_pem

    def identity(self, kind: Kind, name: str, lifetime: timedelta | None = None) -> IdentityPem:
        pair = pki.issue(
            self.issuing, Principal(self.name, kind, name), now=NOW_DT, lifetime=lifetime
        )
        return IdentityPem(self.trust, pair.cert_pem, pair.key_pem)


def _city(name: str) -> City:
    root = pki.create_root(name, now=NOW_DT)
    return City(name, root, pki.create_issuing(root, name, now=NOW_DT))


@pytest.fixture(scope="module")
def city() -> City:
    return _city(CITY)


@pytest.fixture(scope="module")
def post(city: City) -> CheckpointSigner:
    return CheckpointSigner(city.identity(Kind.POST, "primary"))


def _entry(i: int) -> dict[str, Any]:
    return {
        "entry_id": f"e{i:04d}",
        "at_ms": str(NOW_MS + i),
        "actor": "supervisor",
        "action": "alarm.ack",
        "target": f"alarm/{i}",
        "outcome": "AUDIT_OK",
        "detail": f"acknowledged {i}",
    }


def _chain(
    records: list[dict[str, Any]],
    signer: CheckpointSigner | None,
    every: int = 3,
    *,
    head: str = GENESIS,
    count: int = 0,
    at_ms: int = NOW_MS,
) -> list[str]:
    """Lines as an AuditFile writes them: each record linked, a checkpoint every `every`."""
    lines = []
    for record in records:
        linked = link(record, head)
        lines.append(line_of(linked))
        head, count = linked["hash"], count + 1
        if signer is not None and count % every == 0:
            checkpoint = link(signer.checkpoint(count=count, chain_hash=head, at_ms=at_ms), head)
            lines.append(line_of(checkpoint))
            head = checkpoint["hash"]
    return lines


def _relink(lines: list[str], change: Callable[[list[dict[str, Any]]], None]) -> list[str]:
    """What a forger with write access does: change the records, then recompute every
    hash so the chain links again (the checkpoints' bodies and signatures kept)."""
    records = [json.loads(line) for line in lines]
    change(records)
    head, out = GENESIS, []
    for record in records:
        record.pop("hash")
        record["prev"] = head
        record["hash"] = record_hash(record)
        head = record["hash"]
        out.append(line_of(record))
    return out


def _record(lines: list[str], number: int) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(lines[number - 1])
    return found


def _rewrite(lines: list[str], number: int, **fields: Any) -> list[str]:
    record = _record(lines, number)
    record.update(fields)
    return [*lines[: number - 1], line_of(record), *lines[number:]]


# --- canonical bytes and links --------------------------------------------------------------


def test_canonical_is_sorted_compact_utf8_and_refuses_what_jcs_would_write_otherwise() -> None:
    assert canonical({"b": 1, "a": "é\n", "c": {"z": None, "y": True}}) == (
        '{"a":"é\\n","b":1,"c":{"y":true,"z":null}}'.encode()
    )
    for bad in ({"x": 1.5}, {"x": 2**53}, {"x": "\ud800"}, {"x": b"bytes"}):
        with pytest.raises(InvalidArgumentError):
            canonical(bad)


def test_link_hashes_the_record_with_its_prev() -> None:
    linked = link({"action": "a"}, GENESIS)
    expected = hashlib.sha256(canonical({"action": "a", "prev": GENESIS})).hexdigest()
    assert linked == {"action": "a", "prev": GENESIS, "hash": expected}
    assert record_hash(linked) == expected
    with pytest.raises(InvalidArgumentError):
        link(linked, GENESIS)  # already linked
    with pytest.raises(InvalidArgumentError):
        link({"action": "a"}, "not-a-hash")


# --- intact files ---------------------------------------------------------------------------


def test_an_intact_chain_verifies_against_the_citys_trust(
    city: City, post: CheckpointSigner
) -> None:
    lines = _chain([_entry(i) for i in range(8)], post, every=3)
    report = verify(lines, city.trust)
    assert report.intact and report.breaks == 0
    assert (report.records, report.checkpoints, report.lines) == (8, 2, 10)
    assert report.last_checkpoint_line == 8  # after the 6th record and the first checkpoint
    assert report.unsigned_tail == 2
    assert report.signers == ["post.primary"] and report.signers_verified


def test_without_trust_signatures_hold_but_the_signer_is_unverified(
    post: CheckpointSigner,
) -> None:
    report = verify(_chain([_entry(i) for i in range(3)], post), None)
    assert report.intact and report.checkpoints == 1
    assert not report.signers_verified


def test_a_chain_goes_on_from_its_last_hash(city: City, post: CheckpointSigner) -> None:
    """What a reopened file does: the next line links to the last one, counts go on."""
    first = _chain([_entry(i) for i in range(4)], post, every=2)
    last = _record(first, len(first))
    more = _chain([_entry(i) for i in range(4, 9)], post, every=2, head=last["hash"], count=4)
    report = verify(first + more, city.trust)
    assert report.intact, report.first_break
    assert (report.records, report.checkpoints) == (9, 4)


def test_lines_before_the_chain_are_counted_not_verified(city: City) -> None:
    legacy = [json.dumps(_entry(i)) + "\n" for i in range(3)]
    marker = {**_entry(99), "action": audit_chain.CHAIN_START}
    report = verify(legacy + _chain([marker, _entry(4)], None), city.trust)
    assert report.intact
    assert (report.unchained, report.records) == (3, 2)


# --- tampering ------------------------------------------------------------------------------


def test_an_altered_detail_is_named_by_line_and_entry(city: City, post: CheckpointSigner) -> None:
    lines = _chain([_entry(i) for i in range(8)], post)
    tampered = _rewrite(lines, 6, detail="nothing happened")  # line 6: the 5th record
    report = verify(tampered, city.trust)
    assert report.first_break == audit_chain.Break(6, "e0004", ALTERED)
    assert report.breaks == 1  # the next line still links to the hash it stated
    assert str(report.first_break) == "line 6 (entry e0004): hash mismatch (record altered)"


def test_a_removed_record_breaks_the_link_after_it(city: City, post: CheckpointSigner) -> None:
    lines = _chain([_entry(i) for i in range(5)], post)
    report = verify(lines[:1] + lines[2:], city.trust)  # the 2nd record is gone
    assert report.first_break == audit_chain.Break(2, "e0002", UNLINKED)


def test_two_swapped_records_are_named_at_the_first(city: City, post: CheckpointSigner) -> None:
    lines = _chain([_entry(i) for i in range(5)], post, every=10)
    swapped = [lines[0], lines[2], lines[1], *lines[3:]]
    report = verify(swapped, city.trust)
    assert report.first_break == audit_chain.Break(2, "e0002", UNLINKED)


def test_records_removed_from_the_start(city: City) -> None:
    lines = _chain([_entry(i) for i in range(4)], None)
    report = verify(lines[2:], city.trust)
    assert report.first_break == audit_chain.Break(1, "e0002", NOT_FROM_GENESIS)


def test_an_inserted_line_without_a_hash(city: City) -> None:
    lines = _chain([_entry(i) for i in range(3)], None)
    forged = [*lines[:2], json.dumps(_entry(7)) + "\n", *lines[2:]]
    report = verify(forged, city.trust)
    assert report.first_break == audit_chain.Break(3, "e0007", UNHASHED)


def test_an_unparsable_line_and_duplicate_keys(city: City) -> None:
    lines = _chain([_entry(i) for i in range(3)], None)
    report = verify([lines[0], '{"cut short', *lines[1:]], city.trust)
    assert report.first_break is not None and report.first_break.line == 2
    assert report.first_break.what.startswith(UNPARSABLE)
    assert report.breaks == 1  # the walk takes the chain up again at the next line
    doubled = lines[1].replace('{"action"', '{"detail":"x","action"', 1)
    report = verify([lines[0], doubled, lines[2]], city.trust)
    assert report.first_break is not None and "a key appears twice" in report.first_break.what


def test_a_last_line_still_being_written_is_no_break(city: City) -> None:
    lines = _chain([_entry(i) for i in range(3)], None)
    report = verify([*lines, lines[0][:40]], city.trust)
    assert report.intact and report.incomplete_tail and report.records == 3
    report = verify([*lines[:2], lines[2][:40], lines[2]], city.trust)  # not the last: a break
    assert report.first_break is not None and report.first_break.line == 3
    assert not report.incomplete_tail


def test_a_rewritten_chain_does_not_match_its_signed_checkpoint(
    city: City, post: CheckpointSigner
) -> None:
    lines = _chain([_entry(i) for i in range(6)], post)

    def drop_second(records: list[dict[str, Any]]) -> None:
        del records[1]

    report = verify(_relink(lines, drop_second), city.trust)
    # Every line links, but the first checkpoint signed another chain.
    assert report.first_break == audit_chain.Break(3, "", CHECKPOINT_OFF_CHAIN)


def test_a_forged_checkpoint_signature(city: City, post: CheckpointSigner) -> None:
    lines = _chain([_entry(i) for i in range(3)], post)
    checkpoint = _record(lines, 4)
    body = checkpoint["checkpoint"]
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = other_key.sign(canonical(body), ec.ECDSA(hashes.SHA256()))
    checkpoint["signature"] = base64.b64encode(forged).decode()
    del checkpoint["hash"]
    checkpoint["hash"] = record_hash(checkpoint)  # the forger relinks the line
    report = verify([*lines[:3], line_of(checkpoint)], city.trust)
    assert report.first_break == audit_chain.Break(4, "", BAD_SIGNATURE)


def test_a_checkpoint_claiming_more_records_than_the_chain(
    city: City, post: CheckpointSigner
) -> None:
    lines = _chain([_entry(i) for i in range(3)], post)
    head = _record(lines, 3)["hash"]
    lying = link(post.checkpoint(count=30, chain_hash=head, at_ms=NOW_MS), head)
    report = verify([*lines[:3], line_of(lying)], city.trust)
    assert report.first_break is not None
    assert report.first_break.what.startswith(CHECKPOINT_MISCOUNTED)


@pytest.mark.parametrize("signer", ["console", "other-city", "expired"])
def test_a_checkpoint_signed_by_no_post_of_this_city(city: City, signer: str) -> None:
    if signer == "console":  # a certificate of the same CA, but a workstation's
        identity = city.identity(Kind.CONSOLE, "room")
    elif signer == "other-city":  # a post, of another city's CA
        identity = _city("lyon").identity(Kind.POST, "primary")
    else:  # this city's post, but its certificate ended before it signed
        identity = city.identity(Kind.POST, "old", lifetime=timedelta(hours=1))
    at_ms = NOW_MS + (2 * 3600 * 1000 if signer == "expired" else 0)
    lines = _chain([_entry(i) for i in range(3)], CheckpointSigner(identity), at_ms=at_ms)
    report = verify(lines, city.trust)
    assert report.first_break is not None
    assert report.first_break.line == 4
    assert report.first_break.what.startswith(NOT_A_POST)
    assert report.checkpoints == 0


def test_without_trust_another_citys_post_is_not_caught(post: CheckpointSigner) -> None:
    """Why `audit verify` wants --trust: a signature alone proves the file consistent,
    not who signed it (the report says signers_verified False)."""
    stranger = CheckpointSigner(_city("lyon").identity(Kind.POST, "primary"))
    report = verify(_chain([_entry(i) for i in range(3)], stranger), None)
    assert report.intact and not report.signers_verified
    console = CheckpointSigner(_city("lyon").identity(Kind.CONSOLE, "room"))
    report = verify(_chain([_entry(i) for i in range(3)], console), None)
    assert report.first_break is not None and report.first_break.what.startswith(NOT_A_POST)


def test_a_signer_whose_key_does_not_match_its_certificate(city: City) -> None:
    one, two = city.identity(Kind.POST, "a"), city.identity(Kind.POST, "b")
    with pytest.raises(InvalidArgumentError, match="does not match"):
        CheckpointSigner(IdentityPem(one.trust, one.cert, two.key))
