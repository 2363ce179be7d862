"""Finished commands leave the control state after the retention, with their idempotency
records and one audit entry per batch; pending ones stay; a standby forgets them too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failover.control_state import idempotency_index_key, ledger_key, list_all
from post.audit_file import AuditFile
from protos.citypost.v1 import command_pb2, control_state_pb2
from tests.unit.test_dispatcher import SIGNALS, Harness, Standby, _flashing_signal

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

HOUR_MS = 3_600_000


async def _finished(h: Harness, key: str) -> str:
    record = await h.dispatcher.issue_command(
        _flashing_signal(), issued_by="op-claire", idempotency_key=key
    )
    command_id = record.command.command_id
    await h.dispatcher.on_acks([h.ack(command_id, SIGNALS[0].dev_eui)])
    assert (await h.record(command_id)).status == command_pb2.ACKED
    return command_id


async def test_old_finished_commands_expire_with_their_idempotency_records() -> None:
    h = Harness()
    standby = Standby(h, SIGNALS)
    await standby.start()
    try:
        old = [await _finished(h, f"key-{i}") for i in range(3)]
        h.clock.now += HOUR_MS // 2
        young = await _finished(h, "key-young")
        pending = (
            await h.dispatcher.issue_command(_flashing_signal(), issued_by="op-claire")
        ).command.command_id

        h.clock.now += HOUR_MS // 2 + 1  # the first three finished over an hour ago
        assert await h.dispatcher.expire_finished(HOUR_MS) == 3
        for i, command_id in enumerate(old):
            assert (
                await h.state.get(ledger_key(command_id), control_state_pb2.CommandRecord) is None
            )
            index = await h.state.get(
                idempotency_index_key(f"key-{i}"), control_state_pb2.IdempotencyRecord
            )
            assert index is None
        assert (await h.record(young)).status == command_pb2.ACKED
        assert (await h.record(pending)).status == command_pb2.SENT
        audit = [e.value for e in await list_all(h.state, "audit/", control_state_pb2.AuditEntry)]
        expired = [a for a in audit if a.action == "retention.expire"]
        assert len(expired) == 1 and "3 finished command(s)" in expired[0].detail
        assert await h.dispatcher.expire_finished(HOUR_MS) == 0  # nothing twice

        # The standby followed the deletions: promoted, it would not expire them again.
        await standby.caught_up(await h.state.revision())
        standby.epoch = 5
        assert await standby.dispatcher.expire_finished(HOUR_MS) == 0
        h.clock.now += HOUR_MS
        assert await standby.dispatcher.expire_finished(HOUR_MS) == 1  # the young one, now old
    finally:
        await standby.stop()


async def test_old_audit_entries_leave_etcd_and_stay_in_the_audit_file(tmp_path: Path) -> None:
    h = Harness()
    for i in range(3):
        await _finished(h, f"early-{i}")  # each writes audit entries
    early = [e.value for e in await list_all(h.state, "audit/", control_state_pb2.AuditEntry)]
    h.clock.now += HOUR_MS + 1
    await _finished(h, "late")
    assert await h.dispatcher.expire_audit(HOUR_MS) == len(early)
    left = [e.value for e in await list_all(h.state, "audit/", control_state_pb2.AuditEntry)]
    assert left and all(e.at_ms >= h.clock.now - HOUR_MS for e in left)

    # The file a post keeps: every entry it saw, one JSON object a line.
    audit_file = AuditFile(tmp_path / "audit-primary.jsonl")
    for entry in early + left:
        audit_file.append(entry)
    audit_file.close()
    lines = [
        json.loads(line) for line in (tmp_path / "audit-primary.jsonl").read_text().splitlines()
    ]
    assert [line["entry_id"] for line in lines] == [e.entry_id for e in early + left]
    assert lines[0]["action"] == early[0].action
