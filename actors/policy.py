"""The contract between a pure policy and its actor shell.

One policy instance per (asset class, device group). Time only comes in as an
argument (the post's injected clock: simulated time in a demo). A policy keeps
its state in memory and can hand it over as a JSON-able snapshot, from which a
restarted actor restores it.

Manual overrides are handled by the shell, not here: while an operator's
override holds a group, the shell drops the policy's commands for it, and when
the override ends it asks `desired_commands` to put the group back where the
policy wants it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from actors.decisions import Decision, IssueCommand
from bridges.registry import Device
from protos.citypost.v1 import telemetry_pb2

Snapshot = dict[str, Any]  # JSON-able


class Policy(Protocol):
    def on_telemetry(
        self, batch: Sequence[telemetry_pb2.Telemetry], now: datetime
    ) -> list[Decision]: ...

    def on_tick(self, now: datetime) -> list[Decision]:
        """Time-driven decisions (dusk, timeouts); called about once per simulated minute."""
        ...

    def desired_commands(self, now: datetime) -> list[IssueCommand]:
        """The commands that put the whole group in the state the policy wants now."""
        ...

    def snapshot(self) -> Snapshot: ...

    def restore(self, snapshot: Snapshot) -> None: ...


class PolicyFactory(Protocol):
    def __call__(self, group: str, devices: Sequence[Device]) -> Policy: ...
