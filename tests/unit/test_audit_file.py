"""A post's audit file: records chained as they are appended, a signed checkpoint every
N and on close, the chain resumed on reopening, an older file continued under a start
marker; and ListAudit's reading of it (filters, pages, newest first)."""

from __future__ import annotations

import errno
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api import admin, pagination
from api.admin import audit_page
from citypost.errors import FailedPreconditionError, InvalidArgumentError
from post import audit_file
from post.audit_file import AuditFile, complete_end, lines_backwards
from protos.citypost.v1 import admin_pb2, control_state_pb2
from security import pki
from security.audit_chain import CHAIN_START, GENESIS, UNPARSABLE, VerifyReport, verify
from security.pki import Kind, Principal
from security.pki_store import IdentityPem

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

NOW_DT = datetime.now(UTC)
NOW_MS = int(NOW_DT.timestamp() * 1000)


@pytest.fixture(scope="module")
def identity() -> IdentityPem:
    root = pki.create_root("dijon", now=NOW_DT)
    issuing = pki.create_issuing(root, "dijon", now=NOW_DT)
    pair = pki.issue(issuing, Principal("dijon", Kind.POST, "primary"), now=NOW_DT)
    return IdentityPem(issuing.cert_pem + root.cert_pem, pair.cert_pem, pair.key_pem)


def _entry(i: int, **fields: Any) -> control_state_pb2.AuditEntry:
    values: dict[str, Any] = {
        "entry_id": f"e{i:04d}",
        "at_ms": NOW_MS + i * 1000,
        "actor": "supervisor",
        "action": "alarm.ack",
        "target": f"alarm/{i}",
        "outcome": control_state_pb2.AUDIT_OK,
        "detail": f"acknowledged {i}",
        "epoch": 7,
    }
    values.update(fields)
    return control_state_pb2.AuditEntry(**values)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verify(path: Path, identity: IdentityPem) -> VerifyReport:
    with path.open() as lines:
        return verify(lines, identity.trust)


def test_appends_are_chained_and_keep_the_entrys_json(tmp_path: Path) -> None:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path)
    for i in range(3):
        audit.append(_entry(i))
    audit.close()
    lines = _lines(path)
    assert [line["entry_id"] for line in lines] == ["e0000", "e0001", "e0002"]
    assert lines[0]["prev"] == GENESIS and lines[1]["prev"] == lines[0]["hash"]
    assert lines[0]["at_ms"] == str(NOW_MS) and lines[0]["outcome"] == "AUDIT_OK"
    assert not any("checkpoint" in line for line in lines)  # no signer, no checkpoint
    report = verify(path.read_text().splitlines(keepends=True), None)
    assert report.intact and report.records == 3 and report.checkpoints == 0
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FailedPreconditionError, match="closed"):
        audit.append(_entry(9))


def test_a_checkpoint_every_n_records_and_on_close(tmp_path: Path, identity: IdentityPem) -> None:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path, identity, checkpoint_every=3)
    for i in range(7):
        audit.append(_entry(i))
    audit.close()
    kinds = ["c" if "checkpoint" in line else "r" for line in _lines(path)]
    assert "".join(kinds) == "rrrcrrrcrc"
    checkpoints = [line for line in _lines(path) if "checkpoint" in line]
    assert [c["checkpoint"]["count"] for c in checkpoints] == [3, 6, 7]
    assert checkpoints[0]["signer"] == "post.primary"
    report = _verify(path, identity)
    assert report.intact and report.signers_verified
    assert (report.records, report.checkpoints, report.unsigned_tail) == (7, 3, 0)


def test_reopening_resumes_the_chain_and_its_count(tmp_path: Path, identity: IdentityPem) -> None:
    path = tmp_path / "audit-primary.jsonl"
    for round_ in range(3):
        audit = AuditFile(path, identity, checkpoint_every=4)
        assert audit.count == round_ * 5
        for i in range(5):
            audit.append(_entry(round_ * 5 + i))
        audit.close()
    unsigned = AuditFile(path)  # a post without TLS: chained, not signed
    unsigned.append(_entry(15))
    unsigned.close()
    again = AuditFile(path, identity, checkpoint_every=4)  # counts back to the last checkpoint
    assert again.count == 16
    again.close()
    report = _verify(path, identity)
    assert report.intact, report.first_break
    assert (report.records, report.unsigned_tail) == (16, 0)
    assert not any(line.get("action") == CHAIN_START for line in _lines(path))


def test_a_file_older_than_the_chain_goes_on_under_a_start_marker(
    tmp_path: Path, identity: IdentityPem
) -> None:
    path = tmp_path / "audit-primary.jsonl"
    old = [json.dumps({"entry_id": f"old{i}", "action": "alarm.ack"}) for i in range(4)]
    path.write_text("\n".join(old) + "\n")
    audit = AuditFile(path, identity, checkpoint_every=2)
    audit.append(_entry(0))
    audit.close()
    lines = _lines(path)
    marker = lines[4]
    assert marker["action"] == CHAIN_START and marker["prev"] == GENESIS
    assert marker["actor"] == "post:primary" and "before the audit was chained" in marker["detail"]
    report = _verify(path, identity)
    assert report.intact
    assert (report.unchained, report.records, report.checkpoints) == (4, 2, 1)


def test_a_line_cut_short_is_reported_and_the_chain_goes_on(
    tmp_path: Path, identity: IdentityPem
) -> None:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path, identity)
    audit.append(_entry(0))
    audit.close()
    with path.open("a") as file:
        file.write('{"action":"alarm.ack","ent')  # a crash in the middle of a write
    audit = AuditFile(path, identity)
    audit.append(_entry(1))
    audit.close()
    lines = path.read_text().splitlines()
    marker = json.loads(lines[3])
    assert marker["action"] == CHAIN_START and "cut short" in marker["detail"]
    report = _verify(path, identity)
    assert report.first_break is not None and report.first_break.line == 3
    assert report.first_break.what.startswith(UNPARSABLE)
    assert report.breaks == 1 and report.records == 3  # the marker links on


def test_a_write_failing_part_way_leaves_a_reported_line_and_the_chain_goes_on(
    tmp_path: Path, identity: IdentityPem, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path, identity)
    audit.append(_entry(0))
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:20]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    assert audit.failure == ""
    with pytest.raises(OSError):
        audit.append(_entry(1))
    # The post refuses mass commands while this names a failure (api.operator).
    assert audit.failure == "audit-primary.jsonl: No space left on device"
    monkeypatch.setattr(os, "write", real_write)
    audit.append(_entry(2))
    assert audit.failure == ""
    audit.close()
    report = _verify(path, identity)
    assert report.first_break is not None and report.first_break.line == 2
    assert report.first_break.what.startswith(UNPARSABLE)
    assert report.breaks == 1 and report.records == 2 and report.checkpoints == 1


def test_appends_from_many_threads_stay_one_chain(tmp_path: Path, identity: IdentityPem) -> None:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path, identity, checkpoint_every=10)

    def write(base: int) -> None:
        for i in range(200):
            audit.append(_entry(base + i))

    threads = [threading.Thread(target=write, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.close()
    report = _verify(path, identity)
    assert report.intact and report.records == 800 and report.checkpoints == 80


def test_lines_backwards_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_file, "_BLOCK", 7)  # lines longer than a block, and shorter
    path = tmp_path / "lines"
    texts = [b"a", b"", b"a much longer line than the block", b"bc", b"d" * 14]
    path.write_bytes(b"\n".join(texts) + b"\nhalf")
    end = complete_end(path)
    assert end == path.stat().st_size - len(b"half")
    found = list(lines_backwards(path, end))
    assert [line for _, line in found] == texts[::-1]
    data = path.read_bytes()
    assert all(data[start : start + len(line)] == line for start, line in found)
    assert list(lines_backwards(path, found[2][0])) == found[3:]


def test_a_bad_checkpoint_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="checkpoint_every"):
        AuditFile(tmp_path / "a.jsonl", checkpoint_every=0)


# --- ListAudit over the file ----------------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path, identity: IdentityPem) -> Path:
    path = tmp_path / "audit-primary.jsonl"
    audit = AuditFile(path, identity, checkpoint_every=5)
    for i in range(30):
        refused = i % 3 == 0
        audit.append(
            _entry(
                i,
                actor="console.room" if refused else "supervisor",
                action="rpc.refused" if refused else "alarm.ack",
                target="/citypost.v1.OperatorService/ListAlarms" if refused else f"alarm/{i}",
                outcome=control_state_pb2.AUDIT_REFUSED if refused else control_state_pb2.AUDIT_OK,
            )
        )
    audit.close()
    return path


def _all_pages(path: Path, request: admin_pb2.ListAuditRequest) -> list[str]:
    ids: list[str] = []
    while True:
        reply = audit_page(path, "primary", request)
        assert reply.post == "primary"
        ids += [e.entry_id for e in reply.entries]
        if not reply.next_page_token:
            return ids
        request.page_token = reply.next_page_token


def test_list_audit_newest_first_with_filters(filled: Path) -> None:
    everything = _all_pages(filled, admin_pb2.ListAuditRequest(page_size=7))
    assert everything == [f"e{i:04d}" for i in reversed(range(30))]  # checkpoints left out
    refused = _all_pages(
        filled,
        admin_pb2.ListAuditRequest(
            action_prefix="rpc.", outcome=control_state_pb2.AUDIT_REFUSED, page_size=4
        ),
    )
    assert refused == [f"e{i:04d}" for i in reversed(range(0, 30, 3))]
    window = admin_pb2.ListAuditRequest(
        actor="supervisor",
        target_prefix="alarm/",
        since_ms=NOW_MS + 10_000,
        until_ms=NOW_MS + 14_000,
    )
    assert _all_pages(filled, window) == ["e0013", "e0011", "e0010"]


def test_list_audit_reads_a_bounded_part_a_call(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "AUDIT_SCAN_BYTES", 1000)
    request = admin_pb2.ListAuditRequest(actor="nobody")
    reply = audit_page(filled, "primary", request)
    assert not reply.entries and reply.next_page_token  # short, with a token to go on
    assert _all_pages(filled, request) == []


def test_list_audit_refuses_tokens_it_did_not_issue(filled: Path) -> None:
    reply = audit_page(filled, "primary", admin_pb2.ListAuditRequest(page_size=2))
    with pytest.raises(InvalidArgumentError, match="post 'primary' issued it"):
        audit_page(filled, "backup", admin_pb2.ListAuditRequest(page_token=reply.next_page_token))
    with pytest.raises(InvalidArgumentError, match="page_token"):
        audit_page(filled, "primary", admin_pb2.ListAuditRequest(page_token="bm9wZQ=="))
    forged = pagination.encode_token("audit/primary/5")  # inside the first line
    with pytest.raises(InvalidArgumentError, match="not an offset"):
        audit_page(filled, "primary", admin_pb2.ListAuditRequest(page_token=forged))
    with pytest.raises(InvalidArgumentError, match="until_ms"):
        audit_page(filled, "primary", admin_pb2.ListAuditRequest(since_ms=5, until_ms=5))
    empty = audit_page(filled.with_name("none.jsonl"), "primary", admin_pb2.ListAuditRequest())
    assert not empty.entries and not empty.next_page_token
