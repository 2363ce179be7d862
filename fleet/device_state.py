"""At-most-once execution of commands on one device, fenced by the leader's epoch.

Pure. A device executes a command_id at most once, and drops a command whose
epoch is lower than the highest it has seen (a deposed leader's). Memory is
bounded: the last `max_ids` executed command ids are kept (4096 by default,
under 1 MB per device at the bound; a lamp commanded a few times a day needs
years to fill it). A command evicted from that window and re-sent would run
again; leaders re-send only unacknowledged commands, within their TTL, so it
never is in practice.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

from bridges.downlink_frame import DeviceCommand

DEFAULT_MAX_IDS = 4096


class Outcome(StrEnum):
    EXECUTE = "execute"  # run it and acknowledge
    DUPLICATE = "duplicate"  # already run: do not run again, acknowledge again
    STALE_EPOCH = "stale_epoch"  # from an older leader: drop, acknowledged=false

    @property
    def acknowledged(self) -> bool:
        return self is not Outcome.STALE_EPOCH


class CommandGate:
    """One device's fence: the highest epoch seen and the command ids already executed."""

    __slots__ = ("_executed", "highest_epoch", "max_ids")

    def __init__(self, max_ids: int = DEFAULT_MAX_IDS) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.max_ids = max_ids
        self.highest_epoch = 0
        self._executed: OrderedDict[str, None] = OrderedDict()  # insertion order = age

    def admit(self, cmd: DeviceCommand) -> Outcome:
        """Decide, and record the decision: EXECUTE means the caller runs it now."""
        # Stale first: a deposed leader must not see its re-sends acknowledged.
        if cmd.epoch < self.highest_epoch:
            return Outcome.STALE_EPOCH
        self.highest_epoch = cmd.epoch
        if cmd.command_id in self._executed:
            return Outcome.DUPLICATE
        self._executed[cmd.command_id] = None
        if len(self._executed) > self.max_ids:
            self._executed.popitem(last=False)
        return Outcome.EXECUTE

    def executed(self, command_id: str) -> bool:
        return command_id in self._executed

    def __len__(self) -> int:
        return len(self._executed)
