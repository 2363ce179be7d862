"""The actor shell without Ray: sequencing, snapshots, restore."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from actors.asset_actor import AssetActor
from actors.decisions import Decision, IssueCommand, ReportMetric
from bridges.registry import Device
from protos.citypost.v1 import telemetry_pb2

pytestmark = pytest.mark.unit


class CountingPolicy:
    """Counts readings and reports the count; enough to see what the shell does."""

    def __init__(self, group: str, devices: Sequence[Device]) -> None:
        self.group = group
        self.seen = 0
        self.last_now: datetime | None = None

    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]:
        self.seen += len(batch)
        self.last_now = now
        return [ReportMetric("seen", self.seen)]

    def on_tick(self, now: datetime) -> list[Decision]:
        return []

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.seen = snapshot["seen"]


def _batch(n: int) -> bytes:
    return telemetry_pb2.TelemetryBatch(
        items=[telemetry_pb2.Telemetry(dev_eui=f"{i:016x}") for i in range(n)]
    ).SerializeToString()


def test_batches_apply_once_in_sequence() -> None:
    actor = AssetActor("g", [], CountingPolicy)
    assert actor.ingest(1, _batch(3), 0).needs_restore  # nothing applied before restore
    actor.restore(None)
    first = actor.ingest(1, _batch(3), 1_700_000_000_000)
    assert first.applied == 3 and first.decisions == [ReportMetric("seen", 3)]
    again = actor.ingest(1, _batch(3), 1_700_000_000_000)  # a retry after a timeout
    assert again.duplicate and again.applied == 3 and again.decisions == []
    second = actor.ingest(2, _batch(2), 1_700_000_060_000)
    assert second.seq == 2 and second.applied == 5


def test_restore_then_replay_gives_the_state_before_the_crash() -> None:
    actor = AssetActor("g", [], CountingPolicy)
    actor.restore(None)
    actor.ingest(1, _batch(4), 0)
    snapshot = actor.snapshot()
    actor.ingest(2, _batch(6), 0)
    before_crash = actor.health()

    reborn = AssetActor("g", [], CountingPolicy)  # what Ray's restart gives: empty
    assert reborn.health().incarnation != before_crash.incarnation
    assert not reborn.health().restored
    reborn.restore(snapshot)
    reborn.ingest(2, _batch(6), 0)  # the post replays what came after the snapshot
    assert reborn.health().applied == before_crash.applied == 10
    assert reborn.health().seq == before_crash.seq
    assert reborn.ingest(2, _batch(6), 0).duplicate


def test_an_empty_batch_is_a_sequenced_tick() -> None:
    ticks: list[datetime] = []

    class Ticking(CountingPolicy):
        def on_tick(self, now: datetime) -> list[Decision]:
            ticks.append(now)
            return [ReportMetric("tick", 1)]

    actor = AssetActor("g", [], Ticking)
    actor.restore(None)
    assert actor.ingest(1, b"", 60_000).decisions == [ReportMetric("tick", 1)]
    assert actor.ingest(1, b"", 60_000).duplicate  # replayed ticks apply once too
    assert len(ticks) == 1 and actor.health().applied == 0
