"""The post's view of leadership: may I command now, under which epoch, who leads.

`Leadership` is what the post depends on. `Election` (etcd) provides it for a
post with a standby; `SoleLeadership` for a post that runs alone without etcd
(its control state in memory): it always leads, under epoch 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from citypost.errors import FailedPreconditionError
from failover.election import ElectionStatus, Role, RoleChange
from failover.leadership import Action, LeaderValue

SOLE_EPOCH = 1


class Leadership(Protocol):
    name: str

    def may_command(self) -> bool:
        """Checked at the instant of each command: the self-fence."""
        ...

    def command_epoch(self) -> int:
        """The epoch to stamp and fence with; NotLeaderError when I do not lead."""
        ...

    def write_window_s(self) -> float | None:
        """Seconds until I must fence myself (0: now; None: never)."""
        ...

    def status(self) -> ElectionStatus: ...

    def role_changes(self) -> AsyncIterator[RoleChange]: ...

    async def resign(self, *, hold_off_s: float | None = None) -> None: ...


class SoleLeadership:
    """A post alone: it leads from start to end."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self._value = LeaderValue(name=name, address=address)

    def may_command(self) -> bool:
        return True

    def command_epoch(self) -> int:
        return SOLE_EPOCH

    def write_window_s(self) -> float | None:
        return None

    def status(self) -> ElectionStatus:
        return ElectionStatus(
            name=self.name,
            role=Role.LEADER,
            action=Action.LEAD,
            leader=self._value,
            epoch=SOLE_EPOCH,
            lease_id=None,
            lease_deadline=None,
            lease_remaining_s=None,
        )

    async def role_changes(self) -> AsyncIterator[RoleChange]:
        yield RoleChange(Role.LEADER, Action.LEAD, self._value, SOLE_EPOCH, time.monotonic())
        await asyncio.Event().wait()  # never changes

    async def resign(self, *, hold_off_s: float | None = None) -> None:
        raise FailedPreconditionError(
            f"post {self.name} runs alone (no etcd, no standby): there is nobody to hand over to"
        )
