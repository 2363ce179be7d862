"""The actor shell around one policy: one per (asset class, device group).

Plain Python: `actors.ray_api` makes it a Ray actor. The shell decodes
batches, feeds the policy with the time it is given (the post's clock), and
hands the decisions back to the post, which carries them out (the post is
the one writer of the control state). Batches carry a sequence number per
actor: a batch the actor has already applied is acknowledged again without
being applied twice, so the post can retry freely after a timeout.

After a crash Ray restarts the actor empty (a new incarnation) and it refuses
batches until the post has restored it: from the last snapshot, then the
batches sent since, so no telemetry is lost from the policy's state. Clock
ticks travel in the same sequence (an empty batch is a tick), so a replay
reproduces them too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from actors.alarm_rules import AlarmShaper
from actors.decisions import Decision, IssueCommand
from actors.policy import Policy, Snapshot
from bridges.registry import Device
from citypost.config import AlarmsConfig
from protos.citypost.v1 import telemetry_pb2

PolicyMaker = Callable[[str, Sequence[Device]], Policy]


@dataclass(frozen=True)
class IngestResult:
    incarnation: str
    seq: int  # the highest sequence applied so far
    applied: int  # telemetry items applied since the actor's state began
    decisions: list[Decision]
    duplicate: bool = False  # the batch had been applied before: decisions are empty
    needs_restore: bool = False  # a fresh incarnation: restore() first, nothing was applied


@dataclass(frozen=True)
class Health:
    incarnation: str
    pid: int
    seq: int
    applied: int
    restored: bool


def _at(now_ms: int) -> datetime:
    return datetime.fromtimestamp(now_ms / 1000, UTC)


class AssetActor:
    def __init__(
        self,
        group: str,
        devices: Sequence[Device],
        make_policy: PolicyMaker,
        alarms: AlarmsConfig | None = None,
    ) -> None:
        self.group = group
        self._policy = make_policy(group, devices)
        # The policy's alarm conditions become alarms through the rules of their type.
        self._alarms = AlarmShaper.of(alarms or AlarmsConfig())
        self._incarnation = uuid.uuid4().hex
        self._seq = 0
        self._applied = 0
        self._restored = False

    def ingest(self, seq: int, batch: bytes, now_ms: int) -> IngestResult:
        """Apply batch `seq` (an empty batch is a clock tick) once, in order."""
        if not self._restored:
            return IngestResult(self._incarnation, self._seq, self._applied, [], needs_restore=True)
        if seq <= self._seq:
            return IngestResult(self._incarnation, self._seq, self._applied, [], duplicate=True)
        if batch:
            items = telemetry_pb2.TelemetryBatch.FromString(batch).items
            decisions = self._alarms.shape(self._policy.on_telemetry(items, _at(now_ms)), now_ms)
            self._applied += len(items)
        else:
            decisions = self._alarms.shape(self._policy.on_tick(_at(now_ms)), now_ms)
            decisions += self._alarms.tick(now_ms)
        self._seq = seq
        return IngestResult(self._incarnation, self._seq, self._applied, decisions)

    def desired_commands(self, now_ms: int) -> list[IssueCommand]:
        return self._policy.desired_commands(_at(now_ms))

    def health(self) -> Health:
        return Health(self._incarnation, os.getpid(), self._seq, self._applied, self._restored)

    def snapshot(self) -> Snapshot:
        return {
            "seq": self._seq,
            "applied": self._applied,
            "policy": self._policy.snapshot(),
            "alarms": self._alarms.snapshot(),
        }

    def restore(self, snapshot: Snapshot | None) -> Health:
        """Take the state of `snapshot`, or start fresh with None (a new actor)."""
        if snapshot is not None:
            self._policy.restore(snapshot["policy"])
            self._alarms.restore(snapshot.get("alarms", []))  # none in older snapshots
            self._seq = int(snapshot["seq"])
            self._applied = int(snapshot["applied"])
        self._restored = True
        return self.health()
